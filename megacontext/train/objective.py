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
from dataclasses import dataclass, field

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
    hidden: torch.Tensor | None = None  # (B,) relative error of the residual stream, if asked
    recon: torch.Tensor | None = None  # (B,) NLL of the span's own tokens after its gist, if asked

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


def substitution(model: BaseModel, batch: Batch, gists: torch.Tensor, with_drop: bool = False,
                 states: bool = False, recon: bool = False) -> Losses:
    """Per-example KL and NLLs over the continuation (with `states` the hidden-state term,
    `Losses.hidden`; with `recon` the reconstruction term, `Losses.recon`); gradients reach
    `gists` when on."""
    return substitutions(model, batch, [gists], with_drop, states, recon)[0]


@dataclass
class Reference:
    """What every candidate gist of a batch is compared with: the prefix's KV cache, the
    teacher's log-probabilities (raw span) and the raw and deleted-span NLLs."""

    cache: object
    prefix_length: int
    teacher: torch.Tensor  # (B, H, V) log-probabilities
    nll_raw: torch.Tensor
    nll_drop: torch.Tensor | None
    states: torch.Tensor | None = None  # (layers, B, H, D) teacher residual stream, if asked


def reference(model: BaseModel, batch: Batch, with_drop: bool = False, states: bool = False
              ) -> Reference:
    """Run the prefix, the raw span (teacher) and optionally the deleted span, no gradients.
    With `states`, keep the teacher's residual stream where it predicts the continuation."""
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
        if states:
            logits, hidden, cache = model.batch_forward_states(embed(ids), cache)
        else:
            logits, cache = model.batch_forward(embed(ids), cache)
        at = torch.tensor(lengths, device=device)[:, None] - 1 + torch.arange(H, device=device)
        teacher_states = None
        if states:  # (layers, B, T, D) -> (layers, B, H, D)
            teacher_states = hidden.gather(2, at[None, ..., None].expand(
                hidden.shape[0], B, H, hidden.shape[-1])).float()
            del hidden
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
    return Reference(cache, P, teacher, _nll(teacher, cont), nll_drop, teacher_states)


def student(model: BaseModel, batch: Batch, ref: Reference, gists: torch.Tensor,
            recon: bool = False) -> Losses:
    """KL and NLLs with `gists` in place of the spans (the hidden-state term when `ref` kept
    the teacher's states, the reconstruction term with `recon`); gradients reach `gists`
    when on."""
    embed = model.causal_lm().get_input_embeddings()
    cont = batch.cont.to(model.device)
    student_in = torch.cat([gists.to(model.dtype)[:, None], embed(cont[:, :-1])], 1)
    hidden = None
    if ref.states is not None:
        logits, states, cache = model.batch_forward_states(student_in, ref.cache)
        hidden = state_error(states.float(), ref.states)
    else:
        logits, cache = model.batch_forward(student_in, ref.cache)
    model.truncate_cache(cache, ref.prefix_length)
    logp = logits.float().log_softmax(-1)
    kl = (ref.teacher.exp() * (ref.teacher - logp)).sum(-1).mean(-1)
    return Losses(kl=kl, nll_gist=_nll(logp, cont), nll_raw=ref.nll_raw, nll_drop=ref.nll_drop,
                  hidden=hidden, recon=reconstruction(model, batch, ref, gists) if recon else None)


def reconstruction(model: BaseModel, batch: Batch, ref: Reference, gists: torch.Tensor
                   ) -> torch.Tensor:
    """(B,) mean NLL of each span's own tokens read after its gist: `[prefix][gist][span]`,
    each span token predicted from the gist and the span tokens before it (teacher forcing).
    What the gist adds here is what the span says beyond what the base model guesses from
    its own start: the span's content, asked for directly (the continuation asks for it only
    through what follows). Gradients reach `gists`."""
    embed = model.causal_lm().get_input_embeddings()
    device = model.device
    lengths = [len(s) for s in batch.spans]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long, device=device)
    for i, s in enumerate(batch.spans):  # padding after the end: a causal model never reads it
        ids[i, : len(s)] = torch.from_numpy(s.astype(np.int64)).to(device)
    real = torch.arange(ids.shape[1], device=device) < torch.tensor(lengths, device=device)[:, None]
    inputs = torch.cat([gists.to(model.dtype)[:, None], embed(ids[:, :-1])], 1)
    logits, cache = model.batch_forward(inputs, ref.cache)
    model.truncate_cache(cache, ref.prefix_length)
    nll = -logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    return (nll * real).sum(1) / real.sum(1)


def state_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(B,) relative squared error ‖s − t‖² / ‖t‖² of (layers, B, H, D) residual streams,
    averaged over layers and positions: each position of each layer counts alike, whatever
    its norm (the stream's norm grows with depth)."""
    err = (student - teacher).pow(2).sum(-1) / teacher.pow(2).sum(-1).clamp_min(1e-6)
    return err.mean((0, 2))


def substitutions(model: BaseModel, batch: Batch, candidates: list[torch.Tensor],
                  with_drop: bool = False, states: bool = False, recon: bool = False
                  ) -> list[Losses]:
    """`substitution` for several candidate gists of the same spans (e.g. GistNet and a
    baseline), sharing the prefix, teacher and deleted-span passes."""
    ref = reference(model, batch, with_drop, states)
    return [student(model, batch, ref, gists, recon) for gists in candidates]


def _nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -logp.gather(-1, targets[..., None]).squeeze(-1).mean(-1)


def loss_of(losses: Losses, hidden_weight: float = 0.0, recon_weight: float = 0.0
            ) -> torch.Tensor:
    """The training loss: KL + NLL_gist (+ `hidden_weight` × the hidden-state term and
    `recon_weight` × the reconstruction term, when the losses carry them), averaged over
    the batch."""
    loss = losses.kl + losses.nll_gist
    if hidden_weight and losses.hidden is not None:
        loss = loss + hidden_weight * losses.hidden
    if recon_weight and losses.recon is not None:
        loss = loss + recon_weight * losses.recon
    return loss.mean()



# Many gists in one context --------------------------------------------------------------
#
# A working context holds hundreds of gists of every level beside raw blocks, and gists
# trained one at a time (above) can each stand in for their span and still, together,
# mislead the base model: in real working contexts the shipped gists did worse than
# deleting them (benchmarks/results/gists_in_context.md). A context example is a window of
# consecutive blocks after a short raw prefix, followed by H continuation tokens. The
# teacher reads the text all raw; the student reads it with a random layout of the window's
# blocks as raw tokens or gists of levels 1–3 (a level-k gist built from level-(k−1) gists
# of its runs of blocks, as in the tree) — such a gist should stand in for its text — and
# with *foreign* gists inserted between them: gists of levels 1–3 of other places in the
# corpus (real blocks, groups and runs of groups), for which the teacher reads nothing — a
# gist of text that does not bear on what follows should do no harm. Every raw token after
# the first gist is a target (the window's raw blocks and the continuation), so one example
# trains every gist in it in the company of the others, and levels ≥ 3 get a signal.

LAYOUT = (0.45, 0.30, 0.15, 0.10)  # chance that a piece is raw, a level-1, -2 or -3 gist
LEVEL2_RUN = (2, 8)  # blocks under a level-2 gist (inclusive range)
LEVEL3_RUN = (2, 4)  # level-2 gists under a level-3 gist, each over 2–4 blocks
FOREIGN_LEVELS = (0.4, 0.4, 0.2)  # chance that a foreign gist is of level 1, 2 or 3
# With a pool over files, levels 3-5 are a file's root or directories of files, as in the
# tree (a working context of 1-4K tokens holds roughly 50/28/18/3 % gists of levels 1/2/3/≥4;
# levels ≥ 4 are drawn more often than that so that they get a signal).
UPPER_FOREIGN_LEVELS = (0.40, 0.28, 0.20, 0.08, 0.04)
FILE_RUN = (2, 8)  # files under a directory node (inclusive range), and most in a pool run
RUN_GROUPS = 32  # most groups in a pool run of files (a longer first file is taken whole)
FANOUT = 32  # most children of a node, as in the tree


@dataclass(frozen=True, eq=False)
class Piece:
    """One stretch of a context example: raw tokens (level 0) or one level-k gist of the
    tokens [lo, hi), built from its level-(k−1) `children` when k ≥ 2. Pieces compare and
    hash by identity: two equal stretches of different examples are different pieces."""

    level: int
    lo: int
    hi: int
    children: tuple[Piece, ...] = ()


@dataclass
class ContextBatch:
    """Per example: its tokens — the text (raw prefix, window, continuation) and after it
    the foreign gists' tokens — the student's pieces left to right (the prefix, the window's
    layout, foreign gists among them), and the continuation's [start, end): the teacher
    reads tokens[:end], the student the pieces and then the continuation."""

    tokens: list[np.ndarray]
    pieces: list[list[Piece]]
    cont: list[tuple[int, int]]
    fixed: dict[Piece, torch.Tensor] = field(default_factory=dict)  # vectors given (no grad)


@dataclass
class ForeignPool:
    """Level-1 gists of runs of consecutive groups, computed once without gradient, that
    foreign gists of levels 2 and 3 are built from. A working context holds a hundred or
    more gists of other text; building each from scratch would cost thousands of level-1
    calls per example. With the pool, a foreign gist's own (top) GistNet call still takes
    the gradient; only its level-1 children are given, as the net made them when the pool
    was filled (rebuild it every few steps).

    A pool over *files* (`foreign_pool(..., files=True)`) takes runs of whole consecutive
    files instead, and also holds their groups' level-2 gists, so that foreign gists can
    be what a working context's upper levels are: a file's root over its groups, and
    directory nodes over files' roots (levels 3–5)."""

    runs: list[list[int]]  # group indices, consecutive within a run
    level1: dict[int, torch.Tensor]  # group index -> (children, D) level-1 gists
    files: list[list[int]] = field(default_factory=list)  # per run, its files (pool over files)
    level2: dict[int, torch.Tensor] = field(default_factory=dict)  # group -> (D,) level-2 gist


def foreign_pool(gist: GistFn, model: BaseModel, corpus: Corpus, rng: np.random.Generator,
                 runs: int, device: torch.device, run_length: int = LEVEL3_RUN[1],
                 batch: int = 256, files: bool = False) -> ForeignPool:
    """`runs` random runs of `run_length` consecutive groups and their level-1 gists; with
    `files` (and a corpus that knows its files), runs of up to FILE_RUN[1] consecutive whole
    files (at most RUN_GROUPS groups, at least one file) and their level-2 gists too."""
    chosen_files: list[list[int]] = []
    if files and corpus.file_groups is not None and corpus.files:
        fg = corpus.file_groups
        for a in rng.choice(corpus.files, size=min(runs, corpus.files), replace=False):
            run, total = [int(a)], int(fg[a + 1] - fg[a])
            while (len(run) < FILE_RUN[1] and run[-1] + 1 < corpus.files
                   and total + fg[run[-1] + 2] - fg[run[-1] + 1] <= RUN_GROUPS):
                total += int(fg[run[-1] + 2] - fg[run[-1] + 1])
                run.append(run[-1] + 1)
            chosen_files.append(run)
        chosen = [list(range(int(fg[r[0]]), int(fg[r[-1] + 1]))) for r in chosen_files]
    else:
        n = len(corpus.groups)
        starts = rng.choice(max(n - run_length + 1, 1),
                            size=min(runs, max(n - run_length + 1, 1)), replace=False)
        chosen = [list(range(int(a), min(int(a) + run_length, n))) for a in starts]
    groups = sorted({g for run in chosen for g in run})
    blocks = [(g, int(a), int(b)) for g in groups for a, b in corpus.children(g)]
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for lo in range(0, len(blocks), batch):
            spans = [model.embeddings[torch.from_numpy(corpus.stream[a:b].astype(np.int64))]
                     .to(device) for _, a, b in blocks[lo : lo + batch]]
            x, mask = _padded(spans, model.dim, device)
            out.append(gist(x, mask, torch.ones(len(spans), dtype=torch.long, device=device))
                       .detach())
    vectors = torch.cat(out) if out else torch.zeros(0, model.dim, device=device)
    level1, at = {}, 0
    for g in groups:
        k = len(corpus.children(g))
        level1[g] = vectors[at : at + k]
        at += k
    level2: dict[int, torch.Tensor] = {}
    if chosen_files:
        with torch.no_grad():
            for lo in range(0, len(groups), batch):
                gs = groups[lo : lo + batch]
                x, mask = _padded([level1[g] for g in gs], model.dim, device)
                made = gist(x, mask, torch.full((len(gs),), 2, dtype=torch.long, device=device))
                level2.update({g: v.detach() for g, v in zip(gs, made, strict=True)})
    return ForeignPool(chosen, level1, chosen_files, level2)


def sample_pieces(rng: np.random.Generator, bounds: np.ndarray,
                  probs: tuple[float, ...] = LAYOUT) -> list[Piece]:
    """A random layout of the blocks [start, end) in `bounds` (consecutive, left to right):
    raw blocks and gists of levels 1–3 over runs of them; at least one gist."""
    def block(j: int, level: int) -> Piece:
        return Piece(level, int(bounds[j, 0]), int(bounds[j, 1]))

    def over(level: int, kids: list[Piece]) -> Piece:
        return Piece(level, kids[0].lo, kids[-1].hi, tuple(kids))

    pieces: list[Piece] = []
    i, n = 0, len(bounds)
    while i < n:
        level = int(rng.choice(len(probs), p=probs))
        if level <= 1:
            pieces.append(block(i, level))
            i += 1
        elif level == 2:
            k = min(int(rng.integers(LEVEL2_RUN[0], LEVEL2_RUN[1] + 1)), n - i)
            pieces.append(over(2, [block(j, 1) for j in range(i, i + k)]))
            i += k
        else:
            subs = []
            for _ in range(int(rng.integers(LEVEL3_RUN[0], LEVEL3_RUN[1] + 1))):
                if i >= n:
                    break
                k = min(int(rng.integers(LEVEL3_RUN[0], LEVEL3_RUN[1] + 1)), n - i)
                subs.append(over(2, [block(j, 1) for j in range(i, i + k)]))
                i += k
            pieces.append(over(3, subs))
    if all(p.level == 0 for p in pieces):
        pieces[0] = Piece(1, pieces[0].lo, pieces[0].hi)
    return pieces


def context_candidates(corpus: Corpus, blocks: int, prefix: int, horizon: int) -> np.ndarray:
    """First-block rows of the windows of `blocks` blocks with a full prefix and
    continuation around them."""
    if len(corpus.blocks) < blocks:
        return np.zeros(0, np.int64)
    starts = corpus.blocks[: len(corpus.blocks) - blocks + 1, 0]
    ends = corpus.blocks[blocks - 1 :, 1]
    return np.flatnonzero((starts >= prefix) & (ends + horizon <= len(corpus.stream)))


def make_context_batch(corpus: Corpus, rows: np.ndarray, blocks: int, prefix: int,
                       horizon: int, rng: np.random.Generator, foreign: int = 0,
                       pool: ForeignPool | None = None) -> ContextBatch:
    """Context examples whose windows start at block `rows`, each with a random layout and
    0 to 2·`foreign` foreign gists inserted at random places after the prefix (those of
    levels 2 and 3 drawn from `pool` when given)."""
    assert prefix >= 1, "a context example starts with raw tokens"
    tokens, pieces, cont = [], [], []
    fixed: dict[Piece, torch.Tensor] = {}
    for r in rows:
        bounds = corpus.blocks[int(r) : int(r) + blocks]
        lo, hi = int(bounds[0, 0]), int(bounds[-1, 1])
        text = corpus.stream[lo - prefix : hi + horizon].astype(np.int64)
        own = [Piece(0, 0, prefix), *sample_pieces(rng, bounds - lo + prefix)]
        extra, at = [], len(text)
        for _ in range(int(rng.integers(0, 2 * foreign + 1)) if foreign else 0):
            piece, toks = _foreign(corpus, rng, at, pool, fixed)
            own.insert(int(rng.integers(1, len(own) + 1)), piece)
            extra.append(toks)
            at += len(toks)
        tokens.append(np.concatenate([text, *extra]))
        pieces.append(own)
        cont.append((len(text) - horizon, len(text)))
    return ContextBatch(tokens, pieces, cont, fixed)


def _foreign(corpus: Corpus, rng: np.random.Generator, at: int,
             pool: ForeignPool | None = None, fixed: dict[Piece, torch.Tensor] | None = None
             ) -> tuple[Piece, np.ndarray]:
    """A gist of levels 1–3 of a random place in the corpus — a block, a group of blocks
    (level 2) or a run of consecutive groups (level 3) — with its tokens, placed at `at`.
    With a pool, groups come from its runs and their level-1 gists go into `fixed`."""
    if pool is not None and pool.files and fixed is not None:
        return _upper_foreign(corpus, rng, at, pool, fixed)
    level = 1 + int(rng.choice(len(FOREIGN_LEVELS), p=FOREIGN_LEVELS))
    if level == 1 or not len(corpus.groups) or (pool is not None and not pool.runs):
        a, b = (int(x) for x in corpus.blocks[rng.integers(len(corpus.blocks))])
        return Piece(1, at, at + b - a), corpus.stream[a:b].astype(np.int64)
    count = 1 if level == 2 else int(rng.integers(LEVEL3_RUN[0], LEVEL3_RUN[1] + 1))
    if pool is None:
        first = int(rng.integers(len(corpus.groups)))
        span = range(first, min(first + count, len(corpus.groups)))
    else:
        run = pool.runs[int(rng.integers(len(pool.runs)))]
        first = int(rng.integers(max(len(run) - count + 1, 1)))
        span = run[first : first + count]
    groups, toks, offset = [], [], at
    for g in span:
        kids = []
        for k, (a, b) in enumerate(corpus.children(g)):
            kids.append(Piece(1, offset, offset + int(b - a)))
            toks.append(corpus.stream[a:b])
            offset += int(b - a)
            if pool is not None and fixed is not None:
                fixed[kids[-1]] = pool.level1[g][k]
        groups.append(Piece(2, kids[0].lo, kids[-1].hi, tuple(kids)))
    piece = groups[0] if level == 2 else Piece(3, at, offset, tuple(groups))
    return piece, np.concatenate(toks).astype(np.int64)


class _Nodes:
    """Builds foreign nodes over a pool's files the way the tree does, laying their tokens
    end to end from `at`; level-1 vectors (and level-2 ones when asked) go into `fixed`."""

    def __init__(self, corpus: Corpus, pool: ForeignPool, fixed: dict[Piece, torch.Tensor],
                 at: int) -> None:
        self.corpus, self.pool, self.fixed, self.at = corpus, pool, fixed, at
        self.tokens: list[np.ndarray] = []

    def group(self, g: int, given: bool) -> Piece:
        kids = []
        for k, (a, b) in enumerate(self.corpus.children(g)):
            kid = Piece(1, self.at, self.at + int(b - a))
            self.tokens.append(self.corpus.stream[a:b])
            self.at = kid.hi
            if not given:
                self.fixed[kid] = self.pool.level1[g][k]
            kids.append(kid)
        node = Piece(2, kids[0].lo, kids[-1].hi, tuple(kids))
        if given:
            self.fixed[node] = self.pool.level2[g]
        return node

    def file(self, f: int, given: bool) -> Piece:
        """File f's root: its one group, or level-3 nodes over ≤ FANOUT groups (and one
        level-4 root over those when there are more)."""
        fg = self.corpus.file_groups
        assert fg is not None
        nodes = [self.group(g, given) for g in range(int(fg[f]), int(fg[f + 1]))]
        while len(nodes) > 1:
            nodes = [self.over(nodes[i : i + FANOUT]) for i in range(0, len(nodes), FANOUT)]
        return nodes[0]

    @staticmethod
    def over(children: list[Piece]) -> Piece:
        """A node over children (a folder of one child is that child, as in the tree)."""
        if len(children) == 1:
            return children[0]
        return Piece(max(c.level for c in children) + 1, children[0].lo, children[-1].hi,
                     tuple(children))

    def text(self) -> np.ndarray:
        return np.concatenate(self.tokens).astype(np.int64)


def _upper_foreign(corpus: Corpus, rng: np.random.Generator, at: int, pool: ForeignPool,
                   fixed: dict[Piece, torch.Tensor]) -> tuple[Piece, np.ndarray]:
    """A foreign gist of a pool over files: a block (level 1), a group (2), a file's root
    over its groups or a folder of one-group files (3), a folder of files (about 4) or a
    folder of folders (about 5). Level-1 vectors are given; so are level-2 ones under the
    folders of levels ≥ 4, whose upper calls take the gradient."""
    level = 1 + int(rng.choice(len(UPPER_FOREIGN_LEVELS), p=UPPER_FOREIGN_LEVELS))
    if level == 1:
        a, b = (int(x) for x in corpus.blocks[rng.integers(len(corpus.blocks))])
        return Piece(1, at, at + b - a), corpus.stream[a:b].astype(np.int64)
    fg = corpus.file_groups
    assert fg is not None
    r = int(rng.integers(len(pool.files)))
    files, nodes = pool.files[r], _Nodes(corpus, pool, fixed, at)

    def size(f: int) -> int:
        return int(fg[f + 1] - fg[f])

    if level == 2:
        piece = nodes.group(int(rng.choice(pool.runs[r])), given=False)
    elif level == 3:
        i = int(rng.integers(len(files)))
        if size(files[i]) > 1:
            piece = nodes.file(files[i], given=False)
        else:  # a folder of small files
            k, j = int(rng.integers(FILE_RUN[0], FILE_RUN[1] + 1)), i + 1
            while j < len(files) and j - i < k and size(files[j]) == 1:
                j += 1
            piece = nodes.over([nodes.file(f, given=False) for f in files[i:j]])
    else:
        k = min(int(rng.integers(FILE_RUN[0], FILE_RUN[1] + 1)), len(files))
        i = int(rng.integers(len(files) - k + 1))
        chosen = files[i : i + k]
        parts = [chosen]
        if level == 5 and len(chosen) >= 4:  # a folder of two or three folders
            cuts = np.sort(rng.choice(np.arange(2, len(chosen) - 1),
                                      size=min(int(rng.integers(1, 3)), len(chosen) - 3),
                                      replace=False))
            parts = np.split(np.asarray(chosen), cuts)
        folders = [nodes.over([nodes.file(int(f), given=True) for f in part]) for part in parts]
        piece = nodes.over(folders)
    return piece, nodes.text()


def gist_pieces(gist: GistFn, model: BaseModel, batch: ContextBatch, device: torch.device
                ) -> dict[Piece, torch.Tensor]:
    """Every gist piece's (D,) vector, computed bottom-up one level at a time (one GistNet
    call per level for the whole batch); the batch's `fixed` pieces are given, not made."""
    by_level: dict[int, list[tuple[int, Piece]]] = {}

    def collect(ex: int, p: Piece) -> None:
        if p in batch.fixed:
            return
        for c in p.children:
            collect(ex, c)
        if p.level:
            by_level.setdefault(p.level, []).append((ex, p))

    for ex, pieces in enumerate(batch.pieces):
        for p in pieces:
            collect(ex, p)
    vectors = {id(p): v.to(device) for p, v in batch.fixed.items()}
    for level in sorted(by_level):
        nodes = by_level[level]
        if level == 1:
            groups = [model.embeddings[torch.from_numpy(batch.tokens[ex][p.lo : p.hi])]
                      .to(device) for ex, p in nodes]
        else:
            groups = [torch.stack([vectors[id(c)] for c in p.children]) for _, p in nodes]
        x, mask = _padded(groups, model.dim, device)
        out = gist(x, mask, torch.full((len(nodes),), level, dtype=torch.long, device=device))
        vectors.update({id(p): out[i] for i, (_, p) in enumerate(nodes)})
    return {p: vectors[id(p)] for nodes in by_level.values() for _, p in nodes}


@dataclass
class _Layout:
    """One example's student sequence: which token each position holds (−1: a gist), and
    the targets — raw tokens after the first gist — as (student position that predicts it,
    teacher position that predicts it, position in the deleted-gists sequence, token)."""

    token_index: np.ndarray  # (S,) index into the example's tokens, −1 for a gist
    targets: np.ndarray  # (n, 4)


def _layout(pieces: list[Piece], tokens: np.ndarray, cont: tuple[int, int]) -> _Layout:
    index = []
    for p in pieces:
        index.extend(range(p.lo, p.hi) if p.level == 0 else [-1])
    index.extend(range(*cont))
    token_index = np.asarray(index, np.int64)
    is_raw = token_index >= 0
    seen_gist = np.cumsum(~is_raw) > 0
    q = np.flatnonzero(is_raw & seen_gist)
    drop_position = np.cumsum(is_raw) - 1  # a raw position's place with the gists deleted
    targets = np.stack([q - 1, token_index[q] - 1, drop_position[q] - 1,
                        tokens[token_index[q]]], 1)
    return _Layout(token_index, targets)


def _padded_targets(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (n_i, 4) target rows -> (B, N, 4) zero-padded and the (B, N) mask."""
    N = max(len(r) for r in rows)
    out = np.zeros((len(rows), N, 4), np.int64)
    valid = np.zeros((len(rows), N), bool)
    for i, r in enumerate(rows):
        out[i, : len(r)], valid[i, : len(r)] = r, True
    return torch.from_numpy(out), torch.from_numpy(valid)


def _sequences(rows: list[torch.Tensor], dim: int, device: torch.device) -> torch.Tensor:
    x = torch.zeros(len(rows), max(len(r) for r in rows), dim, device=device,
                    dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    return x


def context_losses(model: BaseModel, batch: ContextBatch, gists: dict[Piece, torch.Tensor],
                   with_drop: bool = False) -> Losses:
    """Per-example mean KL(P_raw ‖ P_gists) and NLLs over the example's targets (every raw
    token after its first gist); `nll_drop`: with the gists deleted. Gradients reach the
    gists when on."""
    device, table = model.device, model.embeddings
    layouts = [_layout(pieces, tokens, cont) for pieces, tokens, cont in
               zip(batch.pieces, batch.tokens, batch.cont, strict=True)]
    targets, valid = _padded_targets([lay.targets for lay in layouts])
    targets, valid = targets.to(device), valid.to(device)
    token = targets[..., 3]
    v = valid.float()

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (x * v).sum(1) / v.sum(1).clamp_min(1)

    def nll(logp: torch.Tensor) -> torch.Tensor:
        return mean(-logp.gather(-1, token[..., None]).squeeze(-1))

    with torch.no_grad():
        raw = _sequences([table[torch.from_numpy(t[: end - 1])] for t, (_, end) in
                          zip(batch.tokens, batch.cont, strict=True)], model.dim, device)
        teacher = model.logits_at(raw, targets[..., 1]).float().log_softmax(-1)
        del raw
        nll_drop = None
        if with_drop:
            kept = [table[torch.from_numpy(t[lay.token_index[lay.token_index >= 0]][:-1])]
                    for t, lay in zip(batch.tokens, layouts, strict=True)]
            drop = model.logits_at(_sequences(kept, model.dim, device),
                                   targets[..., 2]).float().log_softmax(-1)
            nll_drop = nll(drop)
            del drop
    rows = []
    for pieces, tokens, (start, end) in zip(batch.pieces, batch.tokens, batch.cont,
                                            strict=True):
        parts = [table[torch.from_numpy(tokens[p.lo : p.hi])] if p.level == 0
                 else gists[p][None] for p in pieces]
        parts.append(table[torch.from_numpy(tokens[start : end - 1])])
        parts = [x.to(device, model.dtype) for x in parts]
        rows.append(torch.cat(parts))
    logp = model.logits_at(_sequences(rows, model.dim, device), targets[..., 0]).float()
    logp = logp.log_softmax(-1)
    kl = mean((teacher.exp() * (teacher - logp)).sum(-1))
    return Losses(kl=kl, nll_gist=nll(logp), nll_raw=nll(teacher), nll_drop=nll_drop)
