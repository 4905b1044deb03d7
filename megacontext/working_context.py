"""The Working Context (DESIGN.md §5): what the frozen base model actually sees.

An ordered list of entries, each a raw block (its tokens through the embedding table, cost =
token count) or a node's gist (one stored vector, cost 1), spliced into the model's chat
template: the repository context sits inside the user turn, followed by the question. The
template's own tokens and the entry embeddings become one `inputs_embeds` tensor with compact
positions 0..W−1 (a frozen base knows no positions past its training window).

KV-cache reuse: the cache of the last prefill is kept; after an edit, only the positions from
the first changed entry onward are recomputed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import torch

from megacontext.adapter import BaseModel


@dataclass(frozen=True)
class Piece:
    """One entry's embeddings and an identity to tell whether it changed."""

    key: Hashable  # e.g. ("raw", node) or ("gist", node, gist_key)
    vectors: torch.Tensor  # (n, D): n tokens, or 1 for a gist

    @property
    def cost(self) -> int:
        return int(self.vectors.shape[0])


class WorkingContext:
    """Chat template + entries + question as `inputs_embeds`, with prefix KV-cache reuse."""

    def __init__(self, model: BaseModel, before: list[int], after: list[int]) -> None:
        self.model = model
        self.pieces: list[Piece] = []
        self._before = self._template_piece("before", before)
        self._after = self._template_piece("after", after)
        self._cache: object | None = None
        self._cached: list[Hashable] = []  # keys of the pieces the cache was computed for
        self._cached_lengths: list[int] = []
        self.reused = 0  # positions the last prefill took from the cache

    def _template_piece(self, name: str, ids: list[int]) -> Piece:
        tensor = torch.tensor(ids, dtype=torch.long)
        return Piece(("template", name, tuple(ids)), self.model.embed(tensor))

    def set_question(self, after: list[int]) -> None:
        """Replace the text after the entries (the question and the assistant prompt)."""
        self._after = self._template_piece("after", after)

    @property
    def all_pieces(self) -> list[Piece]:
        return [self._before, *self.pieces, self._after]

    @property
    def length(self) -> int:
        """W: positions the model sees."""
        return sum(p.cost for p in self.all_pieces)

    def embeddings(self) -> torch.Tensor:
        """(1, W, D) inputs_embeds."""
        parts = [p.vectors.to(self.model.device, self.model.dtype) for p in self.all_pieces]
        return torch.cat(parts)[None]

    def prefill(self) -> torch.Tensor:
        """(1, W − reused, V) logits of the positions recomputed; reuses the cached prefix."""
        pieces = self.all_pieces
        keys = [p.key for p in pieces]
        lengths = [p.cost for p in pieces]
        same = 0
        while (same < len(keys) and same < len(self._cached) and keys[same] == self._cached[same]
               and lengths[same] == self._cached_lengths[same]):
            same += 1
        if same == len(keys):
            same -= 1  # nothing changed: recompute the last piece to get fresh logits
        start = sum(lengths[:same])
        if self._cache is None or start == 0:
            self._cache, start, same = None, 0, 0
        else:
            self.model.truncate_cache(self._cache, start)
        embeds = self.embeddings()[:, start:]
        logits, self._cache = self.model.forward(embeds, start, self._cache)
        self._cached, self._cached_lengths = keys, lengths
        self.reused = start
        return logits

    def generate(self, max_new_tokens: int) -> Iterator[int]:
        """Stream the answer's tokens (greedy) after the current context."""
        logits = self.prefill()
        yield from self.decode(logits, max_new_tokens)

    def decode(self, logits: torch.Tensor, max_new_tokens: int) -> Iterator[int]:
        """Stream greedy tokens after `prefill`'s logits; the context is left as it was."""
        try:
            yield from self.model.decode(logits, self._cache, self.length, max_new_tokens)
        finally:
            self.model.truncate_cache(self._cache, self.length)  # answers are not context
