"""Focus scorers: what decides which parts of the repository are held at full resolution.

`--focus` picks one:

- `lensnet` (the default once its weights ship): the learned scorer, `megacontext.lensnet`;
  it rates the working context's own entries and refocuses in rounds (`allocate`).
- `bm25`: lexical match of the question against every block (`megacontext.bm25`).
- `dense`: cosine similarity of all-MiniLM-L6-v2 sentence embeddings of the question and
  of every block (the retrieval baseline; block vectors are cached beside the index by
  content address, so a session embeds only the blocks that changed).
- `repomap`: the approach Aider uses. Definitions (the symbols the chunker cuts) are ranked
  by PageRank over the graph of which definition refers to which name, personalised
  towards the definitions whose names the question mentions.

The three retrieval scorers rate every block. A function is read whole, so a block is worth
the best score of its definition (the run of blocks the chunker cut for one symbol), a node
is worth its best block, and the allocator descends best-first (`descend`) while a better
than median node fits the budget. One conversion turns their scores into signed utilities,
so they differ only in what they see: utility = (s − median) / (best − median) − floor,
with the median and best over blocks.

LensNet reads some of these as features (`UnitWords`, BM25 over each definition's stemmed
words, is one of them only).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from megacontext.allocator import AllocatorConfig, Entry, cold_start, descend
from megacontext.bm25 import _levels
from megacontext.errors import MegaContextError
from megacontext.repo_tree import RepoTree

SCORERS = ("lensnet", "bm25", "dense", "repomap")
FLOOR = 0.0  # blocks below this share of the best score (above the median) stay compressed
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Focus(Protocol):
    """Chooses the entries of a working context for a text (question and recent turns)."""

    name: str
    identity: str  # the scorer's version (a learned scorer's weights)

    def focus(self, text: str, budget: int, timings: dict[str, float]) -> list[Entry]: ...


class BlockScorer(Protocol):
    def block_scores(self, text: str) -> np.ndarray: ...


class BlockFocus:
    """A retrieval scorer rating every block, turned into node utilities and a best-first
    descent from the root."""

    def __init__(self, name: str, repo: RepoTree, scorer: BlockScorer,
                 allocator: AllocatorConfig) -> None:
        self.name, self.repo, self.scorer, self.allocator = name, repo, scorer, allocator
        self.identity = name
        self._levels = _levels(repo)
        self._blocks = repo.blocks()
        self.units = Units(repo)

    def utilities(self, text: str) -> np.ndarray:
        """(N,) signed utility of every node for the text."""
        return block_utilities(self.repo, self._blocks, self._levels,
                               self.units.pool(self.scorer.block_scores(text)))

    def focus(self, text: str, budget: int, timings: dict[str, float]) -> list[Entry]:
        t = time.perf_counter()
        utilities = self.utilities(text)
        timings["score"] = time.perf_counter() - t
        t = time.perf_counter()
        tree = self.repo.tree
        config = AllocatorConfig(**{**self.allocator.__dict__, "max_edits": budget})
        entries = descend(tree, cold_start(tree), utilities, budget, config).entries
        timings["allocate"] = time.perf_counter() - t
        return entries


class Units:
    """Definitions as runs of blocks: consecutive blocks of one file with one symbol."""

    def __init__(self, repo: RepoTree) -> None:
        blocks = repo.blocks()
        symbol = np.array([repo.symbol[n] for n in blocks.tolist()], dtype=object)
        fid = repo.file_id[blocks]
        new = np.ones(len(blocks), bool)
        new[1:] = (fid[1:] != fid[:-1]) | (symbol[1:] != symbol[:-1])
        self.starts = np.flatnonzero(new)
        self.of_block = np.cumsum(new) - 1  # unit of each block (repo.blocks() order)
        self.of_node = np.full(repo.size, -1, np.int64)
        self.of_node[blocks] = self.of_block
        # Each unit's name words (of its symbol's last part), as CSR over a vocabulary.
        self.vocabulary: dict[str, int] = {}
        ids, counts = [], []
        for name in symbol[self.starts].tolist():
            w = {self.vocabulary.setdefault(x, len(self.vocabulary))
                 for x in words(name.rsplit(".", 1)[-1])}
            ids.extend(sorted(w))
            counts.append(len(w))
        self.word_ids = np.array(ids, np.int64)
        self.word_counts = np.array(counts, np.int64)
        df = np.bincount(self.word_ids, minlength=len(self.vocabulary))
        self.idf = np.log(1 + len(self.starts) / np.maximum(df, 1))

    def name_match(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Per block, how its definition's name matches the text: the share of the name's
        words the text says, and the rarity (idf) of the words it says, relative to the
        best definition (a rare word shared says more than `get`)."""
        said = [self.vocabulary[w] for w in set(words(text)) if w in self.vocabulary]
        hit = np.isin(self.word_ids, said).astype(np.float64)
        share = self._per_unit(hit) / np.maximum(self.word_counts, 1)
        rare = self._per_unit(hit * self.idf[self.word_ids])
        best = rare.max() if len(rare) else 0.0
        rare = rare / best if best > 0 else rare
        return share[self.of_block], rare[self.of_block]

    def _per_unit(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-word values over each unit's words."""
        if not len(values):
            return np.zeros(len(self.starts))
        ptr = np.concatenate(([0], np.cumsum(self.word_counts)))[:-1]
        total = np.add.reduceat(values, np.minimum(ptr, len(values) - 1))
        return np.where(self.word_counts > 0, total, 0.0)  # reduceat of an empty run

    def pool(self, block_scores: np.ndarray) -> np.ndarray:
        """Every block gets its unit's best score."""
        if not len(block_scores):
            return block_scores
        return np.maximum.reduceat(block_scores, self.starts)[self.of_block]

    def pool_entries(self, nodes: np.ndarray, utilities: np.ndarray) -> np.ndarray:
        """Entries that are blocks (raw or gist) of one definition get their best utility."""
        unit = self.of_node[nodes]
        is_block = unit >= 0
        if not is_block.any():
            return utilities
        best = np.full(len(self.starts), -np.inf)
        np.maximum.at(best, unit[is_block], utilities[is_block])
        out = utilities.copy()
        out[is_block] = best[unit[is_block]]
        return out


def node_scores(repo: RepoTree, blocks: np.ndarray, levels: list, block_scores: np.ndarray
                ) -> np.ndarray:
    """(N,) the best block score under each node."""
    scores = np.full(repo.size, float(block_scores.min()) if len(block_scores) else 0.0)
    scores[blocks] = block_scores
    for parents, kids, offsets in levels:  # bottom-up: children before parents
        scores[parents] = np.maximum.reduceat(scores[kids], offsets)
    return scores


def block_utilities(repo: RepoTree, blocks: np.ndarray, levels: list,
                    block_scores: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """Node utilities from block scores: (s − median) / (best − median) − floor."""
    scores = node_scores(repo, blocks, levels, block_scores)
    if not len(block_scores):
        return scores
    median, best = float(np.median(block_scores)), float(block_scores.max())
    return (scores - median) / (best - median if best > median else 1.0) - floor


# ---------------------------------------------------------------- dense


DENSE_CACHE = "dense-vectors.npz"  # beside the index: block vectors by content address


class DenseScorer:
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2): every block's text is
    embedded once, when the scorer is made, and kept in `cache` (when given) by the block's
    content address, so the next session embeds only the blocks that changed."""

    def __init__(self, repo: RepoTree, texts: list[str],
                 encode: Callable[[list[str]], np.ndarray], cache: Path | None = None) -> None:
        self.encode = encode
        if cache is None:
            self.vectors = encode(texts) if texts else np.zeros((0, 1), np.float32)
        else:
            keys = [repo.gist_key[n] for n in repo.blocks().tolist()]
            self.vectors = cached_vectors(cache, keys, texts, encode)

    def block_scores(self, text: str) -> np.ndarray:
        q = self.encode([text])[0]
        return self.vectors @ q


def cached_vectors(cache: Path, keys: list[bytes], texts: list[str],
                   encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """(n, d) vectors of `texts`, those of known keys read from `cache`, the others encoded;
    the cache is rewritten (atomically) with exactly these keys when any was missing. A
    cache that cannot be read is recomputed."""
    known: dict[bytes, np.ndarray] = {}
    try:
        with np.load(cache) as data:
            known = dict(zip(map(bytes, data["keys"]), data["vectors"], strict=True))
    except (OSError, ValueError, KeyError):
        pass
    missing = [i for i, k in enumerate(keys) if k not in known]
    if not missing and keys:
        return np.stack([known[k] for k in keys]).astype(np.float32)
    new = encode([texts[i] for i in missing]) if missing else np.zeros((0, 1), np.float32)
    new = new.astype(np.float16)  # as the cache keeps them: the next session agrees
    known.update(zip((keys[i] for i in missing), new, strict=True))
    if not keys:
        return np.zeros((0, new.shape[1]), np.float32)
    vectors = np.stack([known[k] for k in keys]).astype(np.float32)
    try:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.savez(f, keys=np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), -1),
                     vectors=vectors.astype(np.float16))
        os.replace(tmp, cache)
    except (OSError, ValueError):  # read-only, or keys of unequal lengths
        pass  # the vectors are still right, only not kept
    return vectors


# ---------------------------------------------------------------- repomap


class RepoMapScorer:
    """PageRank over definitions, as Aider ranks its repository map.

    A definition is a symbol the chunker cut (module.Class.method); an edge runs from a
    definition to each definition whose name it mentions (weight √count; names defined more
    than five times are too generic to count, as `self` or `get` would be). The
    personalisation favours definitions whose name's words appear in the question (a
    name's words: its snake_case and CamelCase parts). A block scores its definition's rank.
    """

    def __init__(self, repo: RepoTree, texts: list[str], damping: float = 0.85,
                 iterations: int = 40) -> None:
        blocks = repo.blocks()
        self.damping, self.iterations = damping, iterations
        symbols = [repo.symbol[n] for n in blocks.tolist()]
        names = sorted(set(symbols))
        index = {s: i for i, s in enumerate(names)}
        self.block_def = np.array([index[s] for s in symbols], np.int64)
        last = [s.rsplit(".", 1)[-1] for s in names]
        self.words = [set(words(n)) for n in last]
        by_name: dict[str, list[int]] = {}
        for i, n in enumerate(last):
            by_name.setdefault(n, []).append(i)
        src, dst, weight = [], [], []
        counts: dict[tuple[int, int], int] = {}
        for b, text in enumerate(texts):
            d = int(self.block_def[b])
            for name in IDENTIFIER.findall(text):
                targets = by_name.get(name)
                if targets and len(targets) <= 5:
                    for t in targets:
                        if t != d:
                            counts[d, t] = counts.get((d, t), 0) + 1
        for (a, b), c in counts.items():
            src.append(a)
            dst.append(b)
            weight.append(np.sqrt(c))
        self.n = len(names)
        self.src, self.dst = np.array(src, np.int64), np.array(dst, np.int64)
        w = np.array(weight, np.float64)
        out = np.bincount(self.src, weights=w, minlength=self.n) if len(w) else np.zeros(self.n)
        self.w = w / np.where(out[self.src] > 0, out[self.src], 1) if len(w) else w
        self.dangling = out == 0

    def block_scores(self, text: str) -> np.ndarray:
        said = set(words(text))
        p = np.array([1.0 + 10.0 * len(w & said) / len(w) if w else 1.0 for w in self.words])
        p /= p.sum()
        rank = p.copy()
        for _ in range(self.iterations):
            spread = np.bincount(self.dst, weights=rank[self.src] * self.w, minlength=self.n)
            rank = self.damping * (spread + rank[self.dangling].sum() * p) + (1 - self.damping) * p
        return rank[self.block_def]


# ---------------------------------------------------------------- definitions by their words


STOP_WORDS = frozenset({"the", "of", "an", "to", "and", "or", "in", "is", "for", "if", "be", "by",
                        "this", "that", "it", "with", "as", "on", "are", "from", "return",
                        "returns"})


def stem(word: str) -> str:
    """A light suffix strip, so `parses`, `parsed` and `parsing` meet at `pars`."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


class UnitWords:
    """Okapi BM25 over definitions (`Units`), their terms the stemmed words of identifiers
    and prose (`words`): `parse_header` matches "parses a header" — which the block-level
    BM25 over the base model's sub-word tokens misses, and a definition is matched whole."""

    def __init__(self, units: Units, texts: list[str], k1: float = 1.2, b: float = 0.75
                 ) -> None:
        self.units, self.k1 = units, k1
        n_units = len(units.starts)
        # Identifiers repeat (`self`, `name`): split and stem each distinct one once.
        found = [IDENTIFIER.findall(t) for t in texts]
        codes: dict[str, int] = {}
        occurrences = np.fromiter((codes.setdefault(x, len(codes)) for f in found for x in f),
                                  np.int64)
        unit_of = np.repeat(units.of_block[: len(texts)], [len(f) for f in found])
        vocabulary: dict[str, int] = {}
        split = [[vocabulary.setdefault(stem(w), len(vocabulary)) for w in words(x)]
                 for x in codes]
        n_words = np.array([len(w) for w in split], np.int64)
        first = np.concatenate(([0], np.cumsum(n_words)))[:-1]
        flat = np.fromiter((w for ws in split for w in ws), np.int64, int(n_words.sum()))
        per = n_words[occurrences]  # words of each occurrence
        at = np.repeat(first[occurrences] - np.cumsum(per) + per, per) + np.arange(per.sum())
        pairs = np.repeat(unit_of, per) * max(len(vocabulary), 1) + flat[at]
        keys, counts = np.unique(pairs, return_counts=True)
        rows, cols = np.divmod(keys, max(len(vocabulary), 1))
        lengths = np.bincount(rows, weights=counts, minlength=n_units)
        self.vocabulary = vocabulary
        # Postings grouped by term: the units and term frequencies of every term.
        cols_a = np.array(cols, np.int64)
        order = np.argsort(cols_a, kind="stable")
        self.unit_of = np.array(rows, np.int64)[order]
        self.tf = np.array(counts, np.float64)[order]
        self.term_start = np.concatenate(([0], np.cumsum(np.bincount(
            cols_a, minlength=len(vocabulary)))))
        df = np.diff(self.term_start)
        n = max(n_units, 1)
        self.idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        mean = lengths.mean() if len(lengths) and lengths.mean() > 0 else 1.0
        self.norm = k1 * (1 - b + b * lengths / mean)

    def block_scores(self, text: str) -> np.ndarray:
        """(n_blocks,) every block's definition's score for the text."""
        scores = np.zeros(len(self.units.starts))
        said = {stem(w) for w in words(text)} - STOP_WORDS
        for t in (self.vocabulary[w] for w in said if w in self.vocabulary):
            lo, hi = self.term_start[t], self.term_start[t + 1]
            units, tf = self.unit_of[lo:hi], self.tf[lo:hi]
            scores[units] += self.idf[t] * tf * (self.k1 + 1) / (tf + self.norm[units])
        return scores[self.units.of_block]


def words(text: str) -> list[str]:
    """Lower-case words of identifiers and prose: snake_case and CamelCase split."""
    out = []
    for ident in IDENTIFIER.findall(text):
        for part in ident.split("_"):
            out.extend(w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", part))
    return [w for w in out if len(w) > 1]


def block_texts(repo: RepoTree, file_tokens: dict[int, np.ndarray],
                decode: Callable[[list[int]], str]) -> list[str]:
    """The text of every block, in `repo.blocks()` order."""
    blocks = repo.blocks()
    return [decode(file_tokens[f][s:e].tolist()) for f, s, e in zip(
        repo.file_id[blocks].tolist(), repo.tok_start[blocks].tolist(),
        repo.tok_end[blocks].tolist(), strict=True)]


def check_scorer(name: str) -> str:
    if name not in SCORERS:
        raise MegaContextError(f"unknown focus scorer {name!r}; choose one of "
                               f"{', '.join(SCORERS)}")
    return name
