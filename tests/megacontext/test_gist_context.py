"""The many-gist context objective: layouts tile their windows, targets line up between the
teacher, the student and the deleted-gists reading, one gist in a context is the single-span
objective, and training on context steps lowers the context loss (tiny random base model)."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from megacontext.train.data import build_corpus
from megacontext.train.gistnet import CONTEXT, new_state, train_gistnet, train_step
from megacontext.train.objective import (
    ContextBatch,
    Piece,
    _layout,
    candidates,
    context_candidates,
    context_losses,
    foreign_pool,
    gist_batch,
    gist_pieces,
    make_batch,
    make_context_batch,
    sample_pieces,
    substitution,
)
from megacontext.tree import header_text
from tests.megacontext.test_gistnet import MODEL, SMALL, _config, _repo, net


def _tiles(pieces: list[Piece], lo: int, hi: int) -> bool:
    return pieces[0].lo == lo and pieces[-1].hi == hi and all(
        a.hi == b.lo for a, b in pairwise(pieces))


def test_a_layout_tiles_its_window_with_raw_blocks_and_gists_of_levels_one_to_three() -> None:
    bounds = np.cumsum([0, 5, 7, 3, 9, 4, 6, 8, 2, 5, 7, 3, 6, 4, 5, 6, 7])
    bounds = np.stack([bounds[:-1], bounds[1:]], 1)
    seen = set()
    for seed in range(40):
        pieces = sample_pieces(np.random.default_rng(seed), bounds)
        assert _tiles(pieces, 0, int(bounds[-1, 1]))
        assert any(p.level > 0 for p in pieces)

        def check(p: Piece) -> None:
            seen.add(p.level)
            if p.level <= 1:  # one block
                assert not p.children and [p.lo, p.hi] in bounds.tolist()
            else:
                assert all(c.level == p.level - 1 for c in p.children)
                assert _tiles(list(p.children), p.lo, p.hi)
                for c in p.children:
                    check(c)

        for p in pieces:
            check(p)
    assert seen == {0, 1, 2, 3}
    only_raw = sample_pieces(np.random.default_rng(0), bounds, (1.0, 0.0, 0.0, 0.0))
    assert only_raw[0].level == 1 and all(p.level == 0 for p in only_raw[1:])


def test_targets_name_the_same_token_in_every_reading() -> None:
    tokens = np.arange(100, 130)
    pieces = [Piece(0, 0, 4), Piece(1, 4, 9), Piece(0, 9, 12),
              Piece(2, 12, 20, (Piece(1, 12, 15), Piece(1, 15, 20))), Piece(0, 20, 24)]
    lay = _layout(pieces, tokens, (24, 30))
    student = np.where(lay.token_index >= 0, tokens[lay.token_index], -1)
    drop = tokens[lay.token_index[lay.token_index >= 0]]
    s, t, d, tok = lay.targets.T
    assert (student[s + 1] == tok).all() and (tokens[t + 1] == tok).all()
    assert (drop[d + 1] == tok).all()
    # raw tokens after the first gist: block 9..12, block 20..24 and the continuation 24..30
    assert tok.tolist() == [*range(109, 112), *range(120, 130)]


def test_one_gist_in_a_context_is_the_single_span_objective(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    rows = candidates(corpus, 1, 16, 8)[:3]
    single = make_batch(corpus, rows, 1, 16, 8)
    g = net()
    with torch.no_grad():
        want = substitution(MODEL, single, gist_batch(g, MODEL, single, MODEL.device), True)
        cb = make_context_batch(corpus, rows, 1, 16, 8, np.random.default_rng(0))
        cb = ContextBatch(cb.tokens, [[p[0], Piece(1, p[1].lo, p[1].hi)] for p in cb.pieces],
                          cb.cont)
        got = context_losses(MODEL, cb, gist_pieces(g, MODEL, cb, MODEL.device), True)
    for name in ("kl", "nll_gist", "nll_raw", "nll_drop"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-4,
                                   rtol=1e-4)


def test_foreign_gists_are_real_spans_the_teacher_never_reads(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    rows = context_candidates(corpus, 4, 16, 8)[:6]
    cb = make_context_batch(corpus, rows, 4, 16, 8, np.random.default_rng(3), foreign=3)
    stream = corpus.stream.tolist()
    levels = set()
    for tokens, pieces, (start, end) in zip(cb.tokens, cb.pieces, cb.cont, strict=True):
        assert end - start == 8
        own = [p for p in pieces if p.lo < end]
        assert _tiles(own, 0, start)  # the text's pieces still tile it, in order
        for p in pieces:
            if p.lo >= end:  # foreign: its tokens are a real span of the corpus
                levels.add(p.level)
                text = tokens[p.lo : p.hi].tolist()
                assert any(stream[i : i + len(text)] == text
                           for i in range(len(stream) - len(text) + 1))
                assert p.level == 1 or _tiles(list(p.children), p.lo, p.hi)
    assert levels == {1, 2, 3}
    only = ContextBatch(cb.tokens, [[p if p.lo >= e else Piece(0, p.lo, p.hi) for p in ps]
                                    for ps, (_, e) in zip(cb.pieces, cb.cont, strict=True)],
                        cb.cont)  # the window all raw, foreign gists only
    with torch.no_grad():
        out = context_losses(MODEL, only, gist_pieces(net(), MODEL, only, MODEL.device), True)
    torch.testing.assert_close(out.nll_raw, out.nll_drop)  # the teacher is the drop reading


def test_a_foreign_pool_gives_the_gists_a_full_build_would(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    g = net()
    pool = foreign_pool(g, MODEL, corpus, np.random.default_rng(0), 3, MODEL.device)
    assert pool.runs and all(b == a + 1 for run in pool.runs for a, b in pairwise(run))
    assert set(pool.level1) == {x for run in pool.runs for x in run}
    rows = context_candidates(corpus, 4, 16, 8)[:6]
    cb = make_context_batch(corpus, rows, 4, 16, 8, np.random.default_rng(3), foreign=3,
                            pool=pool)
    assert cb.fixed and all(p.level == 1 and not p.children for p in cb.fixed)
    full = ContextBatch(cb.tokens, cb.pieces, cb.cont)  # the same pieces, every gist built
    made = gist_pieces(g, MODEL, cb, MODEL.device)
    with torch.no_grad():
        want = gist_pieces(g, MODEL, full, MODEL.device)
    assert not set(made) & set(cb.fixed)  # given vectors are not made again

    def pooled(p: Piece) -> bool:
        return p in cb.fixed or any(pooled(c) for c in p.children)

    tops = [p for ps in cb.pieces for p in ps if p.level >= 2 and pooled(p)]
    assert tops, "some foreign gists came from the pool"
    for p, v in made.items():
        torch.testing.assert_close(v, want[p], atol=1e-5, rtol=1e-5)
    assert all(made[p].requires_grad for p in tops)  # their own call still learns
    assert not any(v.requires_grad for v in cb.fixed.values())


def test_upper_gists_are_built_from_the_gists_below_them() -> None:
    tokens = np.arange(200, 240)
    l2a = Piece(2, 4, 12, (Piece(1, 4, 8), Piece(1, 8, 12)))
    l2b = Piece(2, 12, 20, (Piece(1, 12, 20),))
    top = Piece(3, 4, 20, (l2a, l2b))
    cb = ContextBatch([tokens], [[Piece(0, 0, 4), top, Piece(0, 20, 30)]], [(30, 40)])
    g = net()
    with torch.no_grad():
        got = gist_pieces(g, MODEL, cb, MODEL.device)
        assert set(got) == {top, l2a, l2b, *l2a.children, *l2b.children}

        def by_hand(p: Piece) -> torch.Tensor:
            kids = (MODEL.embeddings[torch.from_numpy(tokens[p.lo : p.hi])] if p.level == 1
                    else torch.stack([by_hand(c) for c in p.children]))
            return g(kids[None], torch.ones(1, len(kids), dtype=torch.bool),
                     torch.tensor([p.level]))[0]

        torch.testing.assert_close(got[top], by_hand(top), atol=1e-5, rtol=1e-5)


def test_context_steps_lower_the_context_loss(tmp_path: Path) -> None:
    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    config = _config(tmp_path, context_blocks=6, context_batch=3)
    state = new_state(config, MODEL)
    rows = context_candidates(corpus, 6, config.prefix, config.horizon)[:3]
    assert len(rows) == 3

    def loss() -> float:
        b = make_context_batch(corpus, rows, 6, config.prefix, config.horizon,
                               np.random.default_rng(7))
        with torch.no_grad():
            out = context_losses(MODEL, b, gist_pieces(state.net.eval(), MODEL, b,
                                                       MODEL.device))
        return float(out.kl.mean())  # the part of the loss the gists can change

    before = loss()
    for _ in range(40):
        train_step(state, config, MODEL, corpus, CONTEXT, [rows])
    assert loss() < 0.9 * before, (before, loss())


def test_a_run_mixes_context_steps_and_scores_gists_in_context(tmp_path: Path) -> None:
    (tmp_path / "lib" / "json").mkdir(parents=True)
    lib = _repo(tmp_path / "lib")
    _repo(lib / "json")  # a held-out package: the validation set
    config = _config(tmp_path, lib=lib, steps=4, eval_every=4, eval_examples=4,
                     context_every=2, context_blocks=4, context_batch=2)
    state = train_gistnet(config, MODEL, lambda s, n, m: None)
    assert [h["level"] for h in state.history] == [1, CONTEXT, 1, CONTEXT]
    last = state.evals[-1]
    assert last["ctx_nll_raw"] < last["ctx_nll_drop"]  # the windows' raw blocks matter
    assert np.isfinite(last["ctx_recovery"])
    pooled = train_gistnet(replace(config, out=tmp_path / "pooled", context_pool=2,
                                   context_pool_every=3), MODEL, lambda s, n, m: None)
    assert pooled.pool is not None and pooled.pool[0] == 1  # refilled at step 3
    assert np.isfinite(pooled.evals[-1]["ctx_recovery"])


def _tree_repo(root: Path) -> Path:
    """Files of 1 to 60 functions: some one group, some several (levels 3 and 4 above)."""
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "value", "items", "total", "result"]
    for f, n in enumerate([2, 3, 40, 1, 2, 60, 2, 25, 1, 3]):
        lines = []
        for d in range(n):
            a, b = rng.choice(words, 2, replace=False)
            lines += [f"def {a}_{f}_{d}({b}):", f"    {a} = {b} * {d} + {f}",
                      f"    return {a} - len({b!r})", ""]
        (root / f"m{f:02d}.py").write_text("\n".join(lines))
    return root


def test_a_corpus_knows_which_groups_make_up_each_file(tmp_path: Path) -> None:
    paths = sorted(p.name for p in _tree_repo(tmp_path).glob("*.py"))
    corpus = build_corpus(tmp_path, paths, MODEL)
    fg = corpus.file_groups
    assert fg is not None and len(fg) == corpus.files + 1 == len(paths) + 1
    assert fg[0] == 0 and fg[-1] == len(corpus.groups) and (np.diff(fg) >= 1).all()
    sizes = np.diff(fg)
    assert sizes.max() > 1 and sizes.min() == 1  # files of one group and of several
    for f, path in enumerate(paths):  # a file's first group starts at its header
        header = MODEL.encode([header_text(path)])[0].ids.tolist()
        start = int(corpus.groups[fg[f], 0])
        assert corpus.stream[start : start + len(header)].tolist() == header
        assert corpus.file_of(int(fg[f + 1]) - 1) == f
    corpus.save(tmp_path / "c.npz")
    again = type(corpus).load(tmp_path / "c.npz")
    assert again.file_groups is not None and (again.file_groups == fg).all()


def _check_node(p: Piece) -> None:
    if p.level == 1:
        return
    assert p.children and _tiles(list(p.children), p.lo, p.hi)
    assert len(p.children) <= 32
    if p.level == 2:
        assert all(c.level == 1 for c in p.children)
    else:  # a file's root or a folder: one above its highest child, as in the tree
        assert p.level == max(c.level for c in p.children) + 1 and len(p.children) >= 2
    for c in p.children:
        _check_node(c)


def test_a_pool_over_files_gives_upper_gists_as_the_tree_builds_them(tmp_path: Path) -> None:
    paths = sorted(p.name for p in _tree_repo(tmp_path).glob("*.py"))
    corpus = build_corpus(tmp_path, paths, MODEL)
    fg = corpus.file_groups
    assert fg is not None
    g = net()
    pool = foreign_pool(g, MODEL, corpus, np.random.default_rng(0), 4, MODEL.device,
                        files=True)
    assert len(pool.files) == 4
    for files, run in zip(pool.files, pool.runs, strict=True):
        assert files == list(range(files[0], files[0] + len(files)))  # consecutive files
        assert run == list(range(int(fg[files[0]]), int(fg[files[-1] + 1])))  # whole
    assert set(pool.level2) == set(pool.level1) == {x for run in pool.runs for x in run}
    rows = context_candidates(corpus, 4, 16, 8)[:8]
    cb = make_context_batch(corpus, rows, 4, 16, 8, np.random.default_rng(5), foreign=6,
                            pool=pool)
    window_end = [c[0] for c in cb.cont]
    foreign = [p for ps, e in zip(cb.pieces, window_end, strict=True) for p in ps if p.lo >= e]
    levels = {p.level for p in foreign}
    assert {1, 2, 3, 4} <= levels, levels
    for p in foreign:
        _check_node(p)
    # given level-2 vectors are what the net makes of their blocks; the nodes above them
    # come out as a full build would make them, and learn
    assert any(p.level == 2 for p in cb.fixed)
    full = ContextBatch(cb.tokens, cb.pieces, cb.cont)
    made = gist_pieces(g, MODEL, cb, MODEL.device)
    with torch.no_grad():
        want = gist_pieces(g, MODEL, full, MODEL.device)
    for p, v in made.items():
        torch.testing.assert_close(v, want[p], atol=1e-5, rtol=1e-5)
    for p, v in cb.fixed.items():
        torch.testing.assert_close(v, want[p], atol=1e-5, rtol=1e-5)
    uppers = [p for p in foreign if p.level >= 3]
    assert uppers and all(made[p].requires_grad for p in uppers)
    assert not any(v.requires_grad for v in cb.fixed.values())


def test_a_run_with_upper_gists_gives_the_net_their_level_embeddings(tmp_path: Path) -> None:
    (tmp_path / "lib" / "json").mkdir(parents=True)
    lib = _tree_repo(tmp_path / "lib")
    _tree_repo(lib / "json")
    config = _config(tmp_path, lib=lib, steps=2, eval_every=2, eval_examples=2,
                     context_every=1, context_blocks=4, context_batch=2, context_foreign=4,
                     context_pool=3, context_upper=True, net={**SMALL, "levels": 5})
    state = train_gistnet(config, MODEL, lambda s, n, m: None)
    assert state.pool is not None and state.pool[1].files
    assert state.net.level_embedding.grad is not None
    touched = state.net.level_embedding.grad.abs().sum(1) > 0
    assert touched[2:].any(), "levels 3-5 got a gradient"
    assert np.isfinite(state.evals[-1]["ctx_nll_gist"])  # the held-out check ran with them
