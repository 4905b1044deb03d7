"""BM25 focus scores on the real tokenizer: the right block wins, scores carry up the tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megacontext.adapter import BaseModel
from megacontext.bm25 import BM25Scorer, _levels
from megacontext.focus import FLOOR, block_utilities
from megacontext.gistnet import default_gist_model
from megacontext.indexer import index_repository
from megacontext.repo_tree import load_repo_tree
from megacontext.store import Store, db_path

pytestmark = pytest.mark.model


def test_best_block_and_propagation(code_repo: Path, real_model: BaseModel) -> None:
    index_repository(code_repo, real_model, default_gist_model(real_model))
    with Store.open(db_path(code_repo), read_only=True) as store:
        repo = load_repo_tree(store)
        scorer = BM25Scorer(repo, store.all_tokens(), real_model.tokenizer)
    scores = scorer.node_scores("greeting hello")
    blocks = repo.blocks()
    best = blocks[np.argmax(scores[blocks])]
    assert repo.paths[int(repo.file_id[best])] == "pkg/sample.py"
    assert repo.symbol[best].startswith("pkg.sample.Greeter"), repo.symbol[best]
    assert scores[repo.tree.root] == scores.max(), "the root holds the best score below it"
    parent = repo.tree.parent
    has = parent >= 0
    assert (scores[parent[has]] >= scores[has]).all(), "a node scores at least its children"
    utilities = block_utilities(repo, blocks, _levels(repo), scorer.block_scores("greeting"))
    assert utilities.max() == pytest.approx(1 - FLOOR), "the best block: 1 − floor"
    assert (utilities[scorer.node_scores("greeting") == 0] <= 0).all(), "no match: no expand"
    assert (scorer.node_scores("zzzqqq") == 0).all(), "no match, no score"
    internal = np.flatnonzero(np.diff(repo.tree.child_ptr) > 0)
    for p in internal:
        assert scores[p] == scores[repo.tree.kids(p)].max(), "a node holds its best child's score"


def test_block_scores_match_the_textbook_formula(code_repo: Path, real_model: BaseModel) -> None:
    index_repository(code_repo, real_model, default_gist_model(real_model))
    with Store.open(db_path(code_repo), read_only=True) as store:
        repo = load_repo_tree(store)
        tokens = store.all_tokens()
    scorer = BM25Scorer(repo, tokens, real_model.tokenizer)
    question = "def greet(self, name): return hello"
    blocks = repo.blocks()
    docs = [scorer.norm[tokens[int(repo.file_id[b])][repo.tok_start[b] : repo.tok_end[b]]]
            for b in blocks]
    lengths = np.array([len(d) for d in docs])
    query = set(scorer.norm[real_model.tokenizer.encode(question, add_special_tokens=False).ids])
    k1, b = scorer.config.k1, scorer.config.b
    expected = np.zeros(len(blocks))
    for term in query:
        tf = np.array([np.count_nonzero(d == term) for d in docs], float)
        df = np.count_nonzero(tf)
        if df == 0:
            continue
        idf = np.log(1 + (len(blocks) - df + 0.5) / (df + 0.5))
        expected += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths / lengths.mean()))
    np.testing.assert_allclose(scorer.block_scores(question), expected, rtol=1e-9)
