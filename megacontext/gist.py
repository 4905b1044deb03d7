"""Gist models: ≤32 child vectors + key-padding mask + level → one vector in embedding space.

`GistModel` is the interface every compressor implements: the trained GistNet
(`megacontext.gistnet`, the default where weights ship for the base model) and
`MeanPoolGist`, the **mean-pool baseline**: the mean of the children's vectors rescaled to the
typical norm of a real token embedding. It is not learned and is labelled as a baseline
wherever its identity is shown; it is what a base model without trained GistNet weights
gets.
"""

from __future__ import annotations

from typing import Protocol

import torch

MAX_CHILDREN = 32


class GistModel(Protocol):
    """Compresses groups of child vectors into one vector each."""

    id: str  # identity stored with every gist; a new id invalidates cached gists
    description: str  # what `status` shows

    def __call__(
        self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
    ) -> torch.Tensor:
        """(B, K, D) children, (B, K) bool mask (True = real), (B,) levels -> (B, D)."""
        ...


class MeanPoolGist:
    """Baseline gist: masked mean of the children, rescaled to `token_norm`. Not learned."""

    id = "meanpool-baseline-v1"
    description = "mean-pool baseline (untrained)"

    def __init__(self, token_norm: float) -> None:
        self.token_norm = token_norm

    def __call__(
        self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
    ) -> torch.Tensor:
        B, K, _ = children.shape
        assert mask.shape == (B, K), f"mask {tuple(mask.shape)} != {(B, K)}"
        assert K <= MAX_CHILDREN, f"{K} children > {MAX_CHILDREN}"
        assert bool(mask.any(dim=1).all()), "every group needs at least one real child"
        weights = mask.to(children.dtype).unsqueeze(-1)
        mean = (children * weights).sum(dim=1) / weights.sum(dim=1)
        norm = mean.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return mean * (self.token_norm / norm)

