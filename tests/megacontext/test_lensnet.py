"""LensNet: shapes, masks and permutations on tiny random weights; focusing with it keeps the
allocator's invariants; scorer selection; counterfactual labels on a constructed case."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from megacontext.adapter import BaseModel
from megacontext.allocator import cost
from megacontext.ask import AskConfig, AskSession
from megacontext.errors import MegaContextError
from megacontext.gistnet import default_gist_model
from megacontext.indexer import IndexConfig, index_repository
from megacontext.lensnet import N_FEATURES, LensNet, LensNetConfig, LensNetFocus
from megacontext.store import Store, db_path
from megacontext.train.lensnet import LensTrainConfig, gold_blocks, label_task, loss_fn
from megacontext.train.tasks import mine_calls, mine_needles


def tiny_net(dim: int = 16, seed: int = 0) -> LensNet:
    torch.manual_seed(seed)
    return LensNet(LensNetConfig(dim=dim, width=32, heads=4, ffn=64, max_tail=16,
                                 features=N_FEATURES), 1.0).eval()


def inputs(B: int, E: int, T: int, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, E, dim, generator=g), torch.rand(B, E, N_FEATURES, generator=g),
            torch.randint(0, 6, (B, E), generator=g), torch.randint(0, 4, (B, E), generator=g),
            torch.ones(B, E, dtype=torch.bool), torch.randn(B, T, dim, generator=g),
            torch.ones(B, T, dtype=torch.bool)]


def test_shapes_and_padding_never_changes_the_utilities() -> None:
    net = tiny_net()
    x = inputs(2, 7, 5)
    with torch.no_grad():
        u = net(*x)
        assert u.shape == (2, 7)
        padded = [t.clone() for t in x]
        padded[0] = torch.cat([x[0], torch.randn(2, 3, 16)], 1)
        padded[1] = torch.cat([x[1], torch.rand(2, 3, N_FEATURES)], 1)
        padded[2] = torch.cat([x[2], torch.zeros(2, 3, dtype=torch.long)], 1)
        padded[3] = torch.cat([x[3], torch.zeros(2, 3, dtype=torch.long)], 1)
        padded[4] = torch.cat([x[4], torch.zeros(2, 3, dtype=torch.bool)], 1)
        padded[5] = torch.cat([x[5], torch.randn(2, 4, 16)], 1)
        padded[6] = torch.cat([x[6], torch.zeros(2, 4, dtype=torch.bool)], 1)
        v = net(*padded)
    torch.testing.assert_close(v[:, :7], u, atol=1e-5, rtol=1e-5)
    assert (v[:, 7:] == 0).all(), "padded entries rate 0"


def test_permuting_entries_permutes_utilities_and_the_tail_matters() -> None:
    net = tiny_net()
    x = inputs(1, 9, 6)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        u = net(*x)
        moved = list(x)
        for i in range(5):
            moved[i] = x[i][:, perm]
        torch.testing.assert_close(net(*moved), u[:, perm], atol=1e-5, rtol=1e-5)
        other = list(x)
        other[5] = torch.randn(1, 6, 16)
        assert not torch.allclose(net(*other), u), "the utilities depend on the tail"


def test_training_loss_falls_on_a_learnable_signal() -> None:
    """Labels that follow the first feature: a few steps of the real loss learn them."""
    net = tiny_net().train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    x = inputs(4, 12, 5, seed=3)
    labels = x[1][..., 0] * 2
    losses = []
    for _ in range(40):
        loss, _ = loss_fn(net(*x), labels, x[4], margin=0.1, rank_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


SOURCE = {
    "geometry.py": textwrap.dedent('''\
        import math


        def hypotenuse_length(a, b):
            """Compute the length of the hypotenuse from the two other sides."""
            squared = a * a + b * b
            root = math.sqrt(squared)
            return root


        def circle_area(r):
            return math.pi * r * r
        '''),
    "shapes.py": textwrap.dedent('''\
        from geometry import hypotenuse_length


        class Triangle:
            def __init__(self, a, b):
                self.a = a
                self.b = b

            def side(self):
                first = self.a
                second = self.b
                return hypotenuse_length(first, second)
        '''),
    "colors.py": textwrap.dedent('''\
        PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


        def lighten(color, amount):
            return tuple(min(255, c + amount) for c in color)
        '''),
}


def test_mined_needles_and_calls_point_at_their_function() -> None:
    tasks, edited = mine_needles(SOURCE, 5, seed=0)
    assert [t.name for t in tasks] == ["hypotenuse_length"]
    t = tasks[0]
    assert "hypotenuse" in t.question and '"""' not in edited["geometry.py"]
    lines = edited["geometry.py"].splitlines()
    assert lines[t.lines[0] - 1].startswith("def hypotenuse_length")
    assert lines[t.lines[1] - 1].strip() == "return root"
    assert t.target.startswith("def hypotenuse_length(a, b):\n    squared")
    calls = mine_calls(SOURCE, 5, seed=0)
    assert [(c.name, c.path, c.site) for c in calls] == [
        ("hypotenuse_length", "geometry.py", "shapes.py:12")]
    assert calls[0].target.strip() == "return hypotenuse_length(first, second)"


@pytest.fixture
def session(tmp_path: Path, real_model: BaseModel) -> AskSession:
    repo = tmp_path / "geo"
    repo.mkdir()
    tasks, edited = mine_needles(SOURCE, 5, seed=0)
    for name, text in {**SOURCE, **edited}.items():
        (repo / name).write_text(text)
    index_repository(repo, real_model, default_gist_model(real_model), IndexConfig())
    with Store.open(db_path(repo), read_only=True) as store:
        s = AskSession(store, real_model, "geo", AskConfig(focus="bm25"))
    s.tasks = tasks
    return s


@pytest.mark.model
def test_expanding_the_span_with_the_answer_lowers_the_targets_nll(session: AskSession
                                                                     ) -> None:
    task = session.tasks[0]
    config = LensTrainConfig(lib=Path("."), out=Path("."), random_blocks=20)
    labels = label_task(session, task, config, np.random.default_rng(0))
    gold = set(session.repo.node_id[gold_blocks(session, task)].tolist())
    delta = {n: g - r for n, g, r in zip(labels["nodes"], labels["gist"], labels["raw"],
                                         strict=True)}
    assert gold and gold <= delta.keys() and len(delta) > len(gold)
    best_gold = max(delta[n] for n in gold)
    assert best_gold > 0.3, "the function's own signature, held raw, predicts the target"
    assert best_gold > max(d for n, d in delta.items() if n not in gold) + 0.3


def _bag_of_letters(texts: list[str]) -> np.ndarray:
    """A stand-in sentence encoder: unit vectors of letter counts."""
    v = np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts],
                 np.float32) + 1e-3
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.model
@pytest.mark.parametrize("budget", [1, 12, 40, 100, 400])
def test_lensnet_focus_keeps_the_allocator_invariants(session: AskSession, budget: int
                                                        ) -> None:
    torch.manual_seed(budget)
    net = LensNet(LensNetConfig(dim=session.model.dim, width=32, heads=4, ffn=64,
                                features=N_FEATURES), 1.0).eval()
    focus = LensNetFocus(session, net, encoder=_bag_of_letters)
    tree = session.repo.tree
    entries = focus.focus("Compute the length of the hypotenuse", budget, {})
    assert cost(entries, tree) <= budget
    assert entries == focus.focus("Compute the length of the hypotenuse", budget, {})

    def blocks_under(n: int) -> list[int]:
        kids = tree.kids(n).tolist()
        return [n] if not kids else [b for k in kids for b in blocks_under(k)]

    covered = [b for e in entries for b in blocks_under(e.node)]
    assert covered == blocks_under(tree.root), "the entries tile the repository in order"
    assert all(tree.is_block(e.node) for e in entries if e.raw)
    if budget >= 12:
        assert len(entries) > 1, "the budget is used"
    nodes = np.array([e.node for e in entries])
    pooled = focus.utilities(entries, focus.lexical("hypotenuse"), focus.tail("hypotenuse")[None])
    unit = focus.units.of_node[nodes]
    for u in set(unit[unit >= 0].tolist()):
        assert len(set(pooled[unit == u].tolist())) == 1, "a definition's blocks share a utility"


@pytest.mark.model
def test_scorer_selection(session: AskSession, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("bm25", "repomap", "dense"):
        focuser = session._focuser(name)
        assert focuser.name == name
        entries = focuser.focus("hypotenuse length of a triangle", 200, timings := {})
        assert cost(entries, session.repo.tree) <= 200 and timings["score"] >= 0
    with pytest.raises(MegaContextError, match="unknown focus scorer 'tfidf'"):
        session._focuser("tfidf")
    monkeypatch.setattr("megacontext.ask.shipped_lensnet", lambda base: None)
    monkeypatch.setattr("megacontext.lensnet.shipped_lensnet", lambda base: None)
    assert session._focuser("default").name == "bm25", "no LensNet weights: BM25"
    with pytest.raises(MegaContextError, match="no LensNet weights"):
        session._focuser("lensnet")


@pytest.mark.model
def test_definitions_pool_their_blocks_and_match_names(session: AskSession) -> None:
    from megacontext.focus import Units

    repo = session.repo
    units = Units(repo)
    blocks = repo.blocks()
    scores = np.arange(len(blocks), dtype=float)
    pooled = units.pool(scores)
    for u in range(len(units.starts)):
        members = units.of_block == u
        assert (pooled[members] == scores[members].max()).all(), "a unit shares its best"
        symbols = {repo.symbol[b] for b in blocks[members].tolist()}
        assert len(symbols) == 1, "a unit is one definition"
    share, rare = units.name_match("the length of a hypotenuse")
    hyp = [i for i, b in enumerate(blocks.tolist())
           if repo.symbol[b].endswith("hypotenuse_length")]
    assert hyp and (share[hyp] == 1.0).all() and (rare[hyp] == rare.max()).all()
    assert share.max() == 1.0 and (share[[i for i in range(len(blocks)) if i not in hyp]]
                                   < 1.0).all()


@pytest.mark.model
def test_definition_words_match_stemmed_forms_of_the_whole_definition(session: AskSession
                                                                       ) -> None:
    from megacontext.focus import Units, UnitWords, block_texts

    repo = session.repo
    units = Units(repo)
    texts = block_texts(repo, session.file_tokens, session.model.tokenizer.decode)
    scores = UnitWords(units, texts).block_scores("lightens the colours by amounts")
    symbol = [repo.symbol[b] for b in repo.blocks().tolist()]
    best = {symbol[i] for i in np.flatnonzero(scores == scores.max())}
    assert best == {"colors.lighten"}, "`lighten(color, amount)`: lightens, amounts"
    assert (scores[[s.endswith("hypotenuse_length") for s in symbol]] == 0).all()
    assert (UnitWords(units, texts).block_scores("the of and") == 0).all(), "stop words"


def test_dense_vectors_are_cached_by_content_address(tmp_path: Path) -> None:
    from megacontext.focus import cached_vectors

    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return _bag_of_letters(texts)

    cache = tmp_path / "dense.npz"
    keys = [bytes([i]) * 15 + b"\0" for i in range(3)]  # a key may end in a zero byte
    first = cached_vectors(cache, keys, ["abc", "xyz", "hello"], encode)
    again = cached_vectors(cache, keys[::-1], ["hello", "xyz", "abc"], encode)
    assert calls == [["abc", "xyz", "hello"]], "the second session encodes nothing"
    np.testing.assert_array_equal(again, first[::-1])
    new_key = b"\1" * 16
    cached_vectors(cache, [keys[0], new_key], ["abc", "changed"], encode)
    assert calls[-1] == ["changed"], "only the new block is encoded"
    cache.write_bytes(b"not a cache")
    np.testing.assert_array_equal(cached_vectors(cache, keys, ["abc", "xyz", "hello"], encode),
                                  first)


@pytest.mark.model
def test_lexical_features_and_the_definition_flag(session: AskSession,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from megacontext.lensnet import DEFINITION_FEATURES

    def net(features: int) -> LensNet:
        return LensNet(LensNetConfig(dim=session.model.dim, width=32, heads=4, ffn=64,
                                     features=features), 1.0).eval()

    full = LensNetFocus(session, net(N_FEATURES), encoder=_bag_of_letters)
    lexical = full.lexical("lighten a colour")
    root = session.repo.tree.root
    assert lexical[root, 5] == 1.0 and lexical[root, 3] == 1.0, "the root holds the best"
    entries = full.focus("lighten a colour", 40, {})
    _, features, _, _ = full.features.arrays(entries, lexical)
    assert features.shape == (len(entries), N_FEATURES)
    assert (features[:, DEFINITION_FEATURES.stop - 1] == 1.0).all()
    monkeypatch.setattr("megacontext.lensnet.DEFINITION_BLOCKS", 1)  # too large a repository
    large = LensNetFocus(session, net(N_FEATURES), encoder=_bag_of_letters)
    assert (large.lexical("lighten a colour")[:, 3:] == 0).all(), "left out, flag 0"
    assert (large.lexical("lighten a colour")[:, :3] == lexical[:, :3]).all()
    old = LensNetFocus(session, net(7))  # weights trained on the first 7 features
    assert old.dense is None and old.words is None
    assert (old.lexical("lighten a colour")[:, 3:] == 0).all()
    assert cost(old.focus("lighten a colour", 40, {}), session.repo.tree) <= 40
