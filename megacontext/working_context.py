"""The Working Context (DESIGN.md §5): what the frozen base model actually sees.

An ordered list of entries, each a raw block (its tokens through the embedding table, cost =
token count) or a node's gist (one stored vector, cost 1), spliced into the model's chat
template: the repository context sits inside the user turn, followed by the question. The
template's own tokens and the entry embeddings become one `inputs_embeds` tensor with compact
positions 0..W−1 (a frozen base knows no positions past its training window).

Entries are held as arrays (identities, lengths, one tensor of all their vectors), so a
context of thousands of entries is assembled and compared with a handful of array
operations.

KV-cache reuse: the cache of the last prefill is kept; after an edit, only the positions from
the first changed entry onward are recomputed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from megacontext.adapter import BaseModel, JsonConstraint


@dataclass(frozen=True)
class Entries:
    """Entries in timeline order, described position by position and turned into vectors
    only when prefill needs them (and only from the first position it recomputes).

    Entry i spans `lengths[i]` positions and holds what `keys[i]` names (two entries with
    the same key hold the same vectors). Position p is token `token_ids[p]` (through the
    embedding table) or, where that is −1, row `gist_rows[p]` of `gists`.
    """

    keys: np.ndarray  # (n,) int64, e.g. 2·node + raw
    lengths: np.ndarray  # (n,) int64: tokens, or 1 for a gist
    token_ids: np.ndarray  # (L,) int64, −1 at gist positions
    gist_rows: np.ndarray  # (L,) int64, −1 at token positions
    gists: torch.Tensor  # (M, D): the table gist rows refer to

    def __post_init__(self) -> None:
        assert len(self.keys) == len(self.lengths), "one length per key"
        assert int(self.lengths.sum()) == len(self.token_ids) == len(self.gist_rows), \
            "lengths add up to the positions"

    @classmethod
    def of(cls, pieces: list[tuple[int, torch.Tensor]], dim: int) -> Entries:
        """From (key, (n, D) vectors) pairs: for tests and small contexts."""
        keys = np.array([k for k, _ in pieces], np.int64)
        lengths = np.array([v.shape[0] for _, v in pieces], np.int64)
        gists = torch.cat([v for _, v in pieces]) if pieces else torch.zeros(0, dim)
        n = len(gists)
        return cls(keys, lengths, np.full(n, -1, np.int64), np.arange(n, dtype=np.int64), gists)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def vectors(self, model: BaseModel, start: int = 0) -> torch.Tensor:
        """(L − start, D) embeddings of the positions from `start` on."""
        ids, rows = self.token_ids[start:], self.gist_rows[start:]
        out = torch.empty(len(ids), model.dim, dtype=model.dtype, device=model.device)
        token = torch.from_numpy(ids >= 0).to(model.device)
        if bool(token.any()):
            out[token] = model.embed(torch.from_numpy(ids[ids >= 0])).to(out)
        if not bool(token.all()):
            out[~token] = self.gists[torch.from_numpy(rows[ids < 0])].to(out)
        return out


class WorkingContext:
    """Chat template + entries + question as `inputs_embeds`, with prefix KV-cache reuse."""

    def __init__(self, model: BaseModel, before: list[int], after: list[int]) -> None:
        self.model = model
        self.entries = Entries.of([], model.dim)
        self._before = list(before)
        self._after = list(after)
        self._cache: object | None = None
        self._cached: tuple[list[int], np.ndarray, np.ndarray, list[int]] | None = None
        self.reused = 0  # positions the last prefill took from the cache

    def set_question(self, after: list[int]) -> None:
        """Replace the text after the entries (the question and the assistant prompt)."""
        self._after = list(after)

    @property
    def template_length(self) -> int:
        """Positions outside the entries: the chat template and the text after them."""
        return len(self._before) + len(self._after)

    @property
    def length(self) -> int:
        """W: positions the model sees."""
        return len(self._before) + self.entries.length + len(self._after)

    def embeddings(self, start: int = 0) -> torch.Tensor:
        """(1, W − start, D) inputs_embeds of the positions from `start` on."""
        m = self.model
        entries_start = max(0, start - len(self._before))
        after_start = max(0, start - len(self._before) - self.entries.length)
        parts = [m.embed(torch.tensor(self._before[start:], dtype=torch.long)),
                 self.entries.vectors(m, entries_start),
                 m.embed(torch.tensor(self._after[after_start:], dtype=torch.long))]
        return torch.cat([p.to(m.device, m.dtype) for p in parts])[None]

    def _unchanged_prefix(self) -> int:
        """Positions at the start that equal those the cache was computed for."""
        if self._cached is None or self._cache is None:
            return 0
        before, keys, lengths, after = self._cached
        if before != self._before:
            return 0
        e = self.entries
        n = min(len(keys), len(e.keys))
        differ = np.flatnonzero((keys[:n] != e.keys[:n]) | (lengths[:n] != e.lengths[:n]))
        same = int(differ[0]) if len(differ) else n
        start = len(self._before) + int(e.lengths[:same].sum())
        if same == len(keys) == len(e.keys) and after == self._after:
            start = self.length  # nothing changed
        return start

    def prefill(self) -> torch.Tensor:
        """(1, W − reused, V) logits of the positions recomputed; reuses the cached prefix
        (at least the last position is recomputed, for fresh next-token logits)."""
        start = min(self._unchanged_prefix(), self.length - 1)
        if start == 0:
            self._cache = None
        else:
            self.model.truncate_cache(self._cache, start)
        embeds = self.embeddings(start)
        logits, self._cache = self.model.forward(embeds, start, self._cache)
        e = self.entries
        self._cached = (list(self._before), e.keys.copy(), e.lengths.copy(), list(self._after))
        self.reused = start
        return logits

    def generate(self, max_new_tokens: int) -> Iterator[int]:
        """Stream the answer's tokens (greedy) after the current context."""
        logits = self.prefill()
        yield from self.decode(logits, max_new_tokens)

    def decode(self, logits: torch.Tensor, max_new_tokens: int,
               constraint: JsonConstraint | None = None) -> Iterator[int]:
        """Stream greedy tokens after `prefill`'s logits (held to `constraint` if given); the
        context is left as it was."""
        try:
            yield from self.model.decode(logits, self._cache, self.length, max_new_tokens,
                                         constraint)
        finally:
            self.model.truncate_cache(self._cache, self.length)  # answers are not context
