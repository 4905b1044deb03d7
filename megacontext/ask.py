"""Answer a question over the whole repository: score → allocate → assemble → generate.

The working context always covers the whole repository (the allocator's entries tile it),
at the resolution the question's scores ask for, inside a fixed budget of positions.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megacontext.adapter import BaseModel, load_sentence_encoder
from megacontext.allocator import AllocatorConfig, Entry
from megacontext.bm25 import BM25Config, BM25Scorer
from megacontext.errors import MegaContextError
from megacontext.focus import (
    DENSE_CACHE,
    BlockFocus,
    DenseScorer,
    Focus,
    RepoMapScorer,
    block_texts,
    check_scorer,
)
from megacontext.lensnet import LensNetFocus, default_lensnet, shipped_lensnet
from megacontext.repo_tree import RepoTree, load_repo_tree
from megacontext.store import Store
from megacontext.working_context import Entries, WorkingContext

SLOT = "<<<mcagent-repository-context>>>"
SPARE_ROWS = 4096  # gist memory's room to grow before it must copy
USER_TEMPLATE = ("Repository {name} ({files} files; parts out of focus are compressed):\n"
                 "{slot}\n\nQuestion: {question}")


@dataclass(frozen=True)
class AskConfig:
    """How one question is answered."""

    budget: int = 2048  # positions the model sees: template + entries + question
    max_new_tokens: int = 256  # longest answer
    question_share: float = 0.25  # a question may take at most this share of the budget
    gist_memory_mb: int = 2048  # block gists are all read at load when they fit in this
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    focus: str = "default"  # lensnet | bm25 | dense | repomap; default: lensnet if shipped


@dataclass(frozen=True)
class Span:
    """A span held at full resolution: what the answer can cite."""

    path: str
    line_start: int
    line_end: int
    symbol: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_start}-{self.line_end}"


@dataclass
class AskResult:
    answer: str
    focus: list[Span]
    levels_by_file: dict[str, dict[int, int]]  # path -> {0 (raw) or node level: entries}
    tokens: dict[str, int]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)


class AskSession:
    """A loaded index, ready to answer questions (loading is the slow part; asking is not)."""

    def __init__(self, store: Store, model: BaseModel, name: str,
                 config: AskConfig = AskConfig()) -> None:
        started = time.perf_counter()
        self.store, self.model, self.name, self.config = store, model, name, config
        self.repo: RepoTree = load_repo_tree(store)
        self.file_tokens = store.all_tokens()
        self.scorer = BM25Scorer(self.repo, self.file_tokens, model.tokenizer, config.bm25)
        self.gists = GistMemory(store, self.repo, model.dim, config.gist_memory_mb)
        self.focuser = self._focuser(config.focus)
        self.repo.tree.lists()  # the allocator's per-node lists, made once
        model.causal_lm()  # load the network now, so the stage timings below are its own
        # Millions of long-lived objects were just made: collect now, so the collector's
        # next full pass (due once a quarter as many survive again) is not in a focusing step.
        gc.collect()
        self.load_seconds = time.perf_counter() - started

    def ask(self, question: str, system: str, on_text: Callable[[str], None] | None = None
            ) -> AskResult:
        """Focus on the question, assemble the context and stream the answer."""
        timings: dict[str, float] = {"load": self.load_seconds}
        warnings: list[str] = []
        question = self._fit_question(question, warnings)
        before, after = self.model.chat_ids(system, self._user_text(question), SLOT)
        entry_budget = self.config.budget - len(before) - len(after)
        if entry_budget < 1:
            raise MegaContextError(f"--budget {self.config.budget} leaves no room for the "
                                   "repository: raise it")
        entries = self.focus(question, entry_budget, timings)
        t = time.perf_counter()
        wc = WorkingContext(self.model, before, after)
        wc.entries = self.entries(entries)
        timings["assemble"] = time.perf_counter() - t
        answer = self._generate(wc, on_text, timings)
        return AskResult(
            answer=answer, focus=self.spans(entries), levels_by_file=self.levels(entries),
            tokens={"context": wc.length, "template_and_question": len(before) + len(after),
                    "entries": len(entries), "raw_tokens": sum(e.cost(self.repo.tree)
                                                              for e in entries if e.raw),
                    "gists": sum(1 for e in entries if not e.raw), "budget": self.config.budget,
                    "repository_tokens": int(sum(len(v) for v in self.file_tokens.values()))},
            timings=timings, warnings=warnings,
        )

    def focus(self, question: str, budget: int, timings: dict[str, float]) -> list[Entry]:
        """The scorer's entries for the question, within `budget` positions."""
        return self.focuser.focus(question, budget, timings)

    def _focuser(self, name: str) -> Focus:
        if name == "default":
            name = "lensnet" if shipped_lensnet(self.model.id) is not None else "bm25"
        check_scorer(name)
        repo, allocator = self.repo, self.config.allocator
        if name == "bm25":
            return BlockFocus(name, repo, self.scorer, allocator)
        if name == "lensnet":
            return LensNetFocus(self, default_lensnet(self.model))
        texts = block_texts(repo, self.file_tokens, self.model.tokenizer.decode)
        if name == "dense":
            cache = Path(self.store.path).parent / DENSE_CACHE
            dense = DenseScorer(repo, texts, load_sentence_encoder(), cache)
            return BlockFocus(name, repo, dense, allocator)
        return BlockFocus(name, repo, RepoMapScorer(repo, texts), allocator)

    def entries(self, entries: list[Entry]) -> Entries:
        """Where each position's vector comes from: raw blocks' token ids, gists' rows in
        memory (turned into vectors when prefill needs them); keys are 2·node + raw."""
        repo = self.repo
        nodes = np.fromiter((e.node for e in entries), np.int64, len(entries))
        raw = np.fromiter((e.raw for e in entries), bool, len(entries))
        lengths = np.where(raw, repo.tree.tokens[nodes], 1).astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        token_ids = np.full(total, -1, np.int64)
        gist_rows = np.full(total, -1, np.int64)
        gist_rows[starts[~raw]] = self.gists.rows(nodes[~raw])
        raw_nodes = nodes[raw]
        if len(raw_nodes):
            token_ids[_ranges(starts[raw], lengths[raw])] = np.concatenate([
                self.file_tokens[f][a:b] for f, a, b in zip(
                    repo.file_id[raw_nodes].tolist(), repo.tok_start[raw_nodes].tolist(),
                    repo.tok_end[raw_nodes].tolist(), strict=True)])
        return Entries(2 * nodes + raw, lengths, token_ids, gist_rows, self.gists.table())

    def spans(self, entries: list[Entry]) -> list[Span]:
        """Raw entries merged into line spans per file, in timeline order."""
        repo, spans = self.repo, []
        for e in entries:
            if not e.raw:
                continue
            n = e.node
            path = repo.paths.get(int(repo.file_id[n]), "?")
            lo, hi = max(int(repo.line_start[n]), 1), max(int(repo.line_end[n]), 1)
            if spans and spans[-1].path == path and spans[-1].line_end >= lo - 1:
                last = spans[-1]
                symbol = last.symbol if last.symbol == repo.symbol[n] else _common(
                    last.symbol, repo.symbol[n])
                spans[-1] = Span(path, last.line_start, max(hi, last.line_end), symbol)
            else:
                spans.append(Span(path, lo, hi, repo.symbol[n]))
        return spans

    def levels(self, entries: list[Entry]) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for e in entries:
            n = e.node
            fid = int(self.repo.file_id[n])
            where = self.repo.paths.get(fid, "?") if fid else self.repo.symbol[n] + "/"
            level = 0 if e.raw else int(self.repo.level[n])
            out.setdefault(where, {}).setdefault(level, 0)
            out[where][level] += 1
        return out

    def _user_text(self, question: str) -> str:
        return USER_TEMPLATE.format(name=self.name, files=len(self.repo.paths), slot=SLOT,
                                    question=question)

    def _fit_question(self, question: str, warnings: list[str]) -> str:
        """A question longer than its share of the budget is cut, with a warning."""
        ids = self.model.tokenizer.encode(question, add_special_tokens=False).ids
        limit = int(self.config.budget * self.config.question_share)
        if len(ids) <= limit:
            return question
        warnings.append(f"the question has {len(ids)} tokens; kept the first {limit} "
                        f"({self.config.question_share:.0%} of the budget)")
        return self.model.tokenizer.decode(ids[:limit])

    def _generate(self, wc: WorkingContext, on_text: Callable[[str], None] | None,
                  timings: dict[str, float]) -> str:
        t = time.perf_counter()
        logits = wc.prefill()
        timings["prefill"] = time.perf_counter() - t
        t = time.perf_counter()
        ids: list[int] = []
        text = ""
        for token in wc.decode(logits, self.config.max_new_tokens):
            ids.append(token)
            new = self.model.tokenizer.decode(ids)
            if on_text is not None and len(new) > len(text) and not new.endswith("\ufffd"):
                on_text(new[len(text) :])
                text = new
        final = self.model.tokenizer.decode(ids)
        if on_text is not None and len(final) > len(text):
            on_text(final[len(text) :])
        seconds = time.perf_counter() - t
        timings["decode"] = seconds
        timings["decode_tokens_per_s"] = len(ids) / seconds if seconds > 0 else 0.0
        timings["answer_tokens"] = float(len(ids))
        return final


class GistMemory:
    """The gists a working context can hold, in memory: every node gist (few) from the
    start, and every block gist too when they fit in `limit_mb` (a scan reads them all in
    about a second for 500k blocks; fetched one by one they cost ~0.1 ms each). Otherwise
    block gists are read the first time they are needed and kept."""

    def __init__(self, store: Store, repo: RepoTree, dim: int, limit_mb: int) -> None:
        self.store, self.repo, self.dim = store, repo, dim
        self.row = np.full(repo.size, -1, np.int64)  # node -> row of `matrix`
        parts = [store.gists_by_node(dim, blocks=False)]
        blocks = int((repo.level == 1).sum())
        self.preloaded = blocks * dim * 2 <= limit_mb * 2**20
        if self.preloaded:
            parts.append(store.gists_by_node(dim, blocks=True))
        ids = np.concatenate([p[0] for p in parts])
        self.size = len(ids)
        # Room to spare for what comes later (an agent's transcript gists, fetched blocks):
        # growing copies the whole table.
        self.matrix = np.empty((self.size + SPARE_ROWS, dim), np.float16)
        np.concatenate([p[1] for p in parts], out=self.matrix[: self.size])
        self._place(ids, 0)

    def _place(self, node_ids: np.ndarray, first_row: int) -> None:
        at = np.searchsorted(self.repo.node_id, node_ids)
        ok = (at < self.repo.size) & (self.repo.node_id[np.minimum(at, self.repo.size - 1)]
                                      == node_ids)
        self.row[at[ok]] = first_row + np.flatnonzero(ok)

    def rows(self, nodes: np.ndarray) -> np.ndarray:
        """Rows of `table()` holding these nodes' gists (read from the store if need be)."""
        missing = np.unique(nodes[self.row[nodes] < 0])
        if len(missing):
            self._fetch(missing)
        rows = self.row[nodes]
        if (rows < 0).any():
            raise MegaContextError("the index has nodes without gists: run `mcagent index`")
        return rows

    def table(self) -> torch.Tensor:
        """(rows, D) float16 gists, sharing memory with this store: take it after `rows`
        (which may read more gists and grow the table)."""
        return torch.from_numpy(self.matrix[: self.size])

    def _fetch(self, nodes: np.ndarray) -> None:
        keys = [self.repo.gist_key[n] for n in nodes.tolist()]
        found = self.store.gist_vectors(keys, self.dim, blocks=True)
        have = [n for n, k in zip(nodes.tolist(), keys, strict=True) if k in found]
        if not have:
            return
        new = np.stack([found[self.repo.gist_key[n]] for n in have])
        self.row[np.array(have)] = self.add(new)

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append (n, D) gists that no node holds (a transcript's); returns their rows."""
        n = len(vectors)
        if self.size + n > len(self.matrix):  # grow by half, at least
            grown = np.empty((max(len(self.matrix) * 3 // 2, self.size + n + SPARE_ROWS),
                              self.dim), np.float16)
            grown[: self.size] = self.matrix[: self.size]
            self.matrix = grown
        self.matrix[self.size : self.size + n] = vectors
        self.size += n
        return np.arange(self.size - n, self.size, dtype=np.int64)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges start..start+length−1."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(
        int(lengths.sum()))


def _common(a: str, b: str) -> str:
    pa, pb = a.split("."), b.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[n] == pb[n]:
        n += 1
    return ".".join(pa[:n])
