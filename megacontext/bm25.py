"""BM25 focus scorer: the interim scorer until LensNet, and afterwards its baseline
(`--focus bm25`).

Terms are the base model's own tokens, normalised (leading-space marker dropped,
lower-cased), so the index needs no second tokenizer and no second copy of the text: the
store already holds every block's token ids. Scores are computed per block with Okapi BM25
(k1 = 1.2, b = 0.75) and carried up the tree as the best score underneath each node.
(`bm25s` would need its index rebuilt on every change to the repository; this one is
computed from the stored tokens when asked.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from megacontext.repo_tree import RepoTree


@dataclass(frozen=True)
class BM25Config:
    k1: float = 1.2
    b: float = 0.75


class BM25Scorer:
    """Scores every node of a repository tree for a question."""

    def __init__(self, repo: RepoTree, file_tokens: dict[int, np.ndarray], tokenizer: Tokenizer,
                 config: BM25Config = BM25Config()) -> None:
        self.repo, self.config = repo, config
        self.norm = _normalised_vocabulary(tokenizer)
        self.tokenizer = tokenizer
        blocks = repo.blocks()
        self.blocks = blocks
        lengths = (repo.tok_end[blocks] - repo.tok_start[blocks]).astype(np.int64)
        self.length_norm = config.k1 * (1 - config.b + config.b * lengths / lengths.mean())
        pieces = [file_tokens[int(f)][s:e] for f, s, e in
                  zip(repo.file_id[blocks], repo.tok_start[blocks], repo.tok_end[blocks],
                      strict=True)]
        terms = self.norm[np.concatenate(pieces)] if pieces else np.zeros(0, np.int64)
        block_of = np.repeat(np.arange(len(blocks)), lengths)
        # Postings: the blocks of every occurrence, grouped by term (built once per session;
        # a question then touches only its own terms' occurrences).
        small = terms.astype(np.uint16) if len(self.norm) <= 2**16 else terms
        order = np.argsort(small, kind="stable")  # a radix sort for 16-bit terms
        self.postings = block_of[order].astype(np.int32)
        self.term_start = np.concatenate(
            ([0], np.cumsum(np.bincount(terms, minlength=len(self.norm)))))
        self._levels = _levels(repo)

    def block_scores(self, question: str) -> np.ndarray:
        """(n_blocks,) BM25 score of each block for the question."""
        ids = self.tokenizer.encode(question, add_special_tokens=False).ids
        query = np.unique(self.norm[np.asarray(ids, np.int64)]) if ids else np.zeros(0, int)
        n = len(self.blocks)
        scores = np.zeros(n)
        k1 = self.config.k1
        for term in query:
            at = self.postings[self.term_start[term] : self.term_start[term + 1]]
            if len(at) == 0:
                continue
            # A term's postings are sorted by block: term frequencies are run lengths.
            starts = np.flatnonzero(np.concatenate(([True], at[1:] != at[:-1])))
            blocks = at[starts]
            tf = np.diff(np.append(starts, len(at))).astype(np.float64)
            idf = np.log(1 + (n - len(blocks) + 0.5) / (len(blocks) + 0.5))
            scores[blocks] += idf * tf * (k1 + 1) / (tf + self.length_norm[blocks])
        return scores

    def node_scores(self, question: str) -> np.ndarray:
        """(N,) best block score under each node."""
        scores = np.zeros(self.repo.size)
        scores[self.blocks] = self.block_scores(question)
        for parents, kids, offsets in self._levels:  # bottom-up: children before parents
            scores[parents] = np.maximum.reduceat(scores[kids], offsets)
        return scores


def _levels(repo: RepoTree) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per level (lowest first): its nodes with children, their children concatenated, and
    where each node's children start (for a max per node with `np.maximum.reduceat`)."""
    tree = repo.tree
    counts = np.diff(tree.child_ptr)
    out = []
    for level in range(2, int(repo.level.max()) + 1):
        parents = np.flatnonzero((repo.level == level) & (counts > 0))
        if len(parents) == 0:
            continue
        n = counts[parents]
        offsets = np.concatenate(([0], np.cumsum(n)[:-1]))
        at = np.repeat(tree.child_ptr[parents] - offsets, n) + np.arange(int(n.sum()))
        out.append((parents, tree.children[at], offsets))
    return out


def _normalised_vocabulary(tokenizer: Tokenizer) -> np.ndarray:
    """token id -> id of its normalised form (no leading-space marker, lower case)."""
    vocab = tokenizer.get_vocab()
    forms: dict[str, int] = {}
    norm = np.zeros(max(vocab.values()) + 1, np.int64)
    for token, i in vocab.items():
        form = token.lstrip("Ġ▁ ").lower() or token
        norm[i] = forms.setdefault(form, len(forms))
    return norm
