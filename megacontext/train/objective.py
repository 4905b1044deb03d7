"""Substitutability: how well one gist stands in for the span it compresses.

For text `[prefix][span][continuation]` the frozen base model predicts the next H tokens
three ways — with the raw span (the teacher, best), with the span's gist in its place (the
student), and with the span deleted (worst) — all from one KV cache of the prefix, so the
prefix is computed once per batch. Training minimises KL(P_raw ‖ P_gist) + NLL_gist over
the H tokens (the NLL term is ΔNLL up to a constant); evaluation reports
recovery = (NLL_drop − NLL_gist) / (NLL_drop − NLL_raw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from megacontext.adapter import BaseModel
from megacontext.gist import MAX_CHILDREN
from megacontext.train.data import Corpus

GistFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Batch:
    level: int
    prefix: torch.Tensor  # (B, P) token ids
    spans: list[np.ndarray]  # raw span token ids per example
    children: list[list[np.ndarray]]  # level 1: [span]; level 2: the blocks of the span
    cont: torch.Tensor  # (B, H) token ids


@dataclass
class Losses:
    """Per-example mean over the H continuation tokens."""

    kl: torch.Tensor  # (B,) KL(P_raw ‖ P_gist)
    nll_gist: torch.Tensor  # (B,)
    nll_raw: torch.Tensor  # (B,)
    nll_drop: torch.Tensor | None  # (B,), when asked for

    def recovery(self) -> torch.Tensor:
        assert self.nll_drop is not None
        return (self.nll_drop - self.nll_gist) / (self.nll_drop - self.nll_raw)


def candidates(corpus: Corpus, level: int, prefix: int, horizon: int) -> np.ndarray:
    """Rows of `corpus` spans of this level with a full prefix and continuation around."""
    spans = corpus.blocks if level == 1 else corpus.groups
    ok = (spans[:, 0] >= prefix) & (spans[:, 1] + horizon <= len(corpus.stream))
    ok &= spans[:, 1] > spans[:, 0]
    return np.flatnonzero(ok)


def make_batch(corpus: Corpus, rows: np.ndarray, level: int, prefix: int, horizon: int
               ) -> Batch:
    spans = corpus.blocks if level == 1 else corpus.groups
    s = corpus.stream
    pre, raw, kids, cont = [], [], [], []
    for r in rows:
        lo, hi = (int(x) for x in spans[r])
        pre.append(s[lo - prefix : lo])
        raw.append(s[lo:hi])
        cont.append(s[hi : hi + horizon])
        if level == 1:
            kids.append([s[lo:hi]])
        else:
            kids.append([s[a:b] for a, b in corpus.children(int(r))])
    return Batch(level, torch.from_numpy(np.stack(pre).astype(np.int64)), raw, kids,
                 torch.from_numpy(np.stack(cont).astype(np.int64)))


def _padded(groups: list[torch.Tensor], dim: int, device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups of (k_i, D) vectors -> zero-padded (B, K, D) and the (B, K) mask."""
    K = max(len(g) for g in groups)
    assert K <= MAX_CHILDREN, f"a group of {K} children"
    x = torch.zeros(len(groups), K, dim, device=device, dtype=groups[0].dtype)
    mask = torch.zeros(len(groups), K, dtype=torch.bool, device=device)
    for i, g in enumerate(groups):
        x[i, : len(g)] = g
        mask[i, : len(g)] = True
    return x, mask


def gist_batch(gist: GistFn, model: BaseModel, batch: Batch, device: torch.device
               ) -> torch.Tensor:
    """(B, D) gists of the batch's spans: tokens → level 1, level-1 gists → level 2."""
    table = model.embeddings
    blocks = [b for ex in batch.children for b in ex]
    tokens = [table[torch.from_numpy(b.astype(np.int64))].to(device) for b in blocks]
    x, mask = _padded(tokens, model.dim, device)
    level1 = gist(x, mask, torch.ones(len(blocks), dtype=torch.long, device=device))
    if batch.level == 1:
        return level1
    groups, at = [], 0
    for ex in batch.children:
        groups.append(level1[at : at + len(ex)])
        at += len(ex)
    x, mask = _padded(groups, model.dim, device)
    return gist(x, mask, torch.full((len(groups),), 2, dtype=torch.long, device=device))


def substitution(model: BaseModel, batch: Batch, gists: torch.Tensor, with_drop: bool = False
                 ) -> Losses:
    """Per-example KL and NLLs over the continuation; gradients reach `gists` when on."""
    return substitutions(model, batch, [gists], with_drop)[0]


@dataclass
class Reference:
    """What every candidate gist of a batch is compared with: the prefix's KV cache, the
    teacher's log-probabilities (raw span) and the raw and deleted-span NLLs."""

    cache: object
    prefix_length: int
    teacher: torch.Tensor  # (B, H, V) log-probabilities
    nll_raw: torch.Tensor
    nll_drop: torch.Tensor | None


def reference(model: BaseModel, batch: Batch, with_drop: bool = False) -> Reference:
    """Run the prefix, the raw span (teacher) and optionally the deleted span, no gradients."""
    device = model.device
    embed = model.causal_lm().get_input_embeddings()
    B, H = batch.cont.shape
    prefix, cont = batch.prefix.to(device), batch.cont.to(device)
    with torch.no_grad():
        pre_logits, cache = model.batch_forward(embed(prefix))
        P = cache.get_seq_length()
        lengths = [len(s) for s in batch.spans]
        L = max(lengths) + H - 1
        ids = torch.zeros(B, L, dtype=torch.long, device=device)  # padding after the end
        for i, s in enumerate(batch.spans):
            row = torch.cat([torch.from_numpy(s.astype(np.int64)).to(device), cont[i, :-1]])
            ids[i, : len(row)] = row
        logits, cache = model.batch_forward(embed(ids), cache)
        at = torch.tensor(lengths, device=device)[:, None] - 1 + torch.arange(H, device=device)
        teacher = logits.gather(1, at[..., None].expand(B, H, logits.shape[-1])).float()
        teacher = teacher.log_softmax(-1)
        del logits
        model.truncate_cache(cache, P)
        nll_drop = None
        if with_drop:
            logits, cache = model.batch_forward(embed(cont[:, :-1]), cache)
            drop = torch.cat([pre_logits[:, -1:], logits], 1).float().log_softmax(-1)
            nll_drop = _nll(drop, cont)
            model.truncate_cache(cache, P)
    return Reference(cache, P, teacher, _nll(teacher, cont), nll_drop)


def student(model: BaseModel, batch: Batch, ref: Reference, gists: torch.Tensor) -> Losses:
    """KL and NLLs with `gists` in place of the spans; gradients reach `gists` when on."""
    embed = model.causal_lm().get_input_embeddings()
    cont = batch.cont.to(model.device)
    student_in = torch.cat([gists.to(model.dtype)[:, None], embed(cont[:, :-1])], 1)
    logits, cache = model.batch_forward(student_in, ref.cache)
    model.truncate_cache(cache, ref.prefix_length)
    logp = logits.float().log_softmax(-1)
    kl = (ref.teacher.exp() * (ref.teacher - logp)).sum(-1).mean(-1)
    return Losses(kl=kl, nll_gist=_nll(logp, cont), nll_raw=ref.nll_raw, nll_drop=ref.nll_drop)


def substitutions(model: BaseModel, batch: Batch, candidates: list[torch.Tensor],
                  with_drop: bool = False) -> list[Losses]:
    """`substitution` for several candidate gists of the same spans (e.g. GistNet and a
    baseline), sharing the prefix, teacher and deleted-span passes."""
    ref = reference(model, batch, with_drop)
    return [student(model, batch, ref, gists) for gists in candidates]


def _nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -logp.gather(-1, targets[..., None]).squeeze(-1).mean(-1)


def loss_of(losses: Losses) -> torch.Tensor:
    """The training loss: KL + NLL_gist, averaged over the batch."""
    return (losses.kl + losses.nll_gist).mean()

