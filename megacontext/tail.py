"""The tail (DESIGN.md §6): the task and the agent's transcript, part of the MegaContext.

The tail is a list of turns (token sequences, in timeline order): the question, then each
step's action and observation, then any follow-up question. It sits after the repository's
entries in the working context. While its turns fit their share of the budget they are held
raw. Past it, the oldest turns are gisted like code: cut into blocks of up to 32 tokens, each
block one level-1 gist by the same gist model; when even those gists outgrow the room left,
runs of 32 of them (oldest first) become level-2 gists. Pinned turns (the current question) and the
newest turn stay raw. Gists are computed once per turn and kept, so a step gists at most the
turns that just crossed the line.

Entry keys are negative (the repository's are 2·node + raw ≥ 0) and stable for as long as a
piece is held the same way, so the working context's KV-cache reuse sees what is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from megacontext.adapter import BaseModel
from megacontext.gist import MAX_CHILDREN, GistModel


class GistTable(Protocol):
    """Where the tail's gists live: the same table as the repository's (`ask.GistMemory`)."""

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """(n, D) float16 vectors -> their rows."""
        ...

    def table(self) -> torch.Tensor:
        """(rows, D) every gist held."""
        ...


@dataclass
class Turn:
    ids: np.ndarray  # (T,) int64 token ids
    pinned: bool = False  # held raw whatever the budget (the question being worked on)


@dataclass
class TailPieces:
    """The tail as the working context's position arrays (see `working_context.Entries`)."""

    keys: np.ndarray
    lengths: np.ndarray
    token_ids: np.ndarray
    gist_rows: np.ndarray
    raw_turns: int  # turns held raw
    gisted_turns: int  # turns held as gists
    gists: dict[int, int] = field(default_factory=dict)  # level -> gists held

    @property
    def cost(self) -> int:
        return int(self.lengths.sum())


class Tail:
    """Turns, and how to hold them inside a number of positions."""

    def __init__(self, model: BaseModel, gist_model: GistModel, memory: GistTable) -> None:
        self.model, self.gist_model, self.memory = model, gist_model, memory
        self.turns: list[Turn] = []
        self._level1: dict[int, np.ndarray] = {}  # turn -> table rows of its block gists
        self._level2: dict[tuple[int, ...], int] = {}  # 32 level-1 rows -> level-2 row
        self._keys: dict[tuple, int] = {}

    def append(self, ids: np.ndarray | list[int], pinned: bool = False) -> None:
        self.turns.append(Turn(np.asarray(ids, np.int64), pinned))

    def unpin(self) -> None:
        for turn in self.turns:
            turn.pinned = False

    def raw_cost(self) -> int:
        return sum(len(t.ids) for t in self.turns)

    def pieces(self, limit: int) -> TailPieces:
        """Hold the turns in at most `limit` positions where possible: raw from the newest
        back, older turns gisted (level 1, then level 2). Pinned and the newest turn are
        always raw, so the cost may exceed a limit too small for them."""
        n = len(self.turns)
        raw = [t.pinned or i == n - 1 for i, t in enumerate(self.turns)]
        used = sum(len(t.ids) for t, r in zip(self.turns, raw, strict=True) if r)
        gisted = [i for i in range(n) if not raw[i]]
        # Newest first: a turn stays raw while it fits beside the gists of everything older.
        older = np.cumsum([0, *(_blocks(len(self.turns[j].ids)) for j in gisted)])
        for k in reversed(range(len(gisted))):
            i = gisted[k]
            if used + len(self.turns[i].ids) + int(older[k]) <= limit:
                raw[i] = True
                used += len(self.turns[i].ids)
            else:
                break
        rows1: list[int] = []  # level-1 rows of the gisted turns, oldest first
        for i in range(n):
            if not raw[i]:
                rows1 += self._turn_gists(i).tolist()
        level2 = []
        while len(rows1) > MAX_CHILDREN and len(rows1) + len(level2) > limit - used:
            group = tuple(rows1[:MAX_CHILDREN])
            level2.append(self._group_gist(group))
            rows1 = rows1[MAX_CHILDREN:]
        keys, lengths, parts_ids, parts_rows = [], [], [], []
        for row in level2:
            keys.append(self._key(("g2", row)))
            lengths.append(1)
            parts_ids.append(np.full(1, -1, np.int64))
            parts_rows.append(np.array([row], np.int64))
        for row in rows1:
            keys.append(self._key(("g1", row)))
            lengths.append(1)
            parts_ids.append(np.full(1, -1, np.int64))
            parts_rows.append(np.array([row], np.int64))
        for i in range(n):
            if raw[i]:
                ids = self.turns[i].ids
                keys.append(self._key(("raw", i)))
                lengths.append(len(ids))
                parts_ids.append(ids)
                parts_rows.append(np.full(len(ids), -1, np.int64))
        cat = (lambda p: np.concatenate(p) if p else np.zeros(0, np.int64))  # noqa: E731
        return TailPieces(np.array(keys, np.int64), np.array(lengths, np.int64), cat(parts_ids),
                          cat(parts_rows), raw_turns=sum(raw), gisted_turns=n - sum(raw),
                          gists={lv: k for lv, k in ((1, len(rows1)), (2, len(level2))) if k})

    def _key(self, what: tuple) -> int:
        if what not in self._keys:
            self._keys[what] = -1 - len(self._keys)
        return self._keys[what]

    def _turn_gists(self, i: int) -> np.ndarray:
        if i not in self._level1:
            ids = torch.from_numpy(self.turns[i].ids)
            blocks = list(torch.split(ids, MAX_CHILDREN))
            children = torch.zeros(len(blocks), MAX_CHILDREN, self.model.dim)
            mask = torch.zeros(len(blocks), MAX_CHILDREN, dtype=torch.bool)
            for b, block in enumerate(blocks):
                children[b, : len(block)] = self.model.embeddings[block]
                mask[b, : len(block)] = True
            self._level1[i] = self._gist(children, mask, 1)
        return self._level1[i]

    def _group_gist(self, rows: tuple[int, ...]) -> int:
        if rows not in self._level2:
            children = self.memory.table()[torch.tensor(rows)].float()[None]
            mask = torch.ones(1, len(rows), dtype=torch.bool)
            self._level2[rows] = int(self._gist(children, mask, 2)[0])
        return self._level2[rows]

    def _gist(self, children: torch.Tensor, mask: torch.Tensor, level: int) -> np.ndarray:
        with torch.no_grad():
            out = self.gist_model(children, mask, torch.full((len(children),), level))
        return self.memory.add(out.float().cpu().numpy().astype(np.float16))


def _blocks(tokens: int) -> int:
    return -(-tokens // MAX_CHILDREN)
