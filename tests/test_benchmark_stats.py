"""The statistics and helpers the benchmarks report their results with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import focus_pairs, gist_pairs
from benchmarks.gist_quality import (
    BENEFIT_BINS,
    context_section,
    in_benefit,
    in_context,
    is_literal_data,
    median_interval,
    per_example,
    recovery,
    verdict,
    where,
)
from benchmarks.plotting import pyplot


def test_per_example_recovery_keeps_only_spans_that_help() -> None:
    r = {"raw": [1.0, 1.0, 2.0], "drop": [2.0, 1.01, 3.0], "gist": [1.5, 1.0, 2.25]}
    assert np.allclose(per_example(r, "gist"), [0.5, 0.75])  # the middle span does not help
    median, of_means, helped = recovery(r, "gist")
    assert helped == 2 and np.isclose(median, 0.625)
    assert np.isclose(of_means, (np.mean(r["drop"]) - np.mean(r["gist"]))
                      / (np.mean(r["drop"]) - np.mean(r["raw"])))


def test_literal_data_is_told_from_code() -> None:
    table = [' "flag_for_bahrain": "\U0001f1e7\U0001f1ed",\n   ', " (175, 175, 135),\n    (42128,",
             " 0x1F, 1e-5, 3j, b'\\x00', \"a\\\"b\",\n"]
    code = [" from .exceptions import Abort as Abort\n", " self.fd = -1\n", " None, 1,",
            " # 1, 2\n", ' "a string cut by the span', "   \n  "]
    assert all(is_literal_data(t) for t in table)
    assert not any(is_literal_data(t) for t in code)
    r = {"raw": [1.0, 2.0, 3.0], "drop": [2.0, 3.0, 4.0], "literal": [True, False, True],
         "cosine": [0.5]}
    assert where(r, np.asarray(r["literal"])) == {"raw": [1.0, 3.0], "drop": [2.0, 4.0],
                                                  "literal": [True, True]}


def test_median_interval_holds_the_median_and_narrows_with_more_examples() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.4, 0.3, 40), rng.normal(0.4, 0.3, 640)
    lo_few, hi_few = median_interval(few)
    lo_many, hi_many = median_interval(many)
    assert lo_few <= np.median(few) <= hi_few
    assert lo_many <= np.median(many) <= hi_many
    assert hi_many - lo_many < (hi_few - lo_few) / 2  # ~1/√16 of the width
    assert lo_many < 0.4 < hi_many
    assert median_interval(few) == median_interval(few)  # seeded
    assert all(np.isnan(median_interval(np.array([]))))


def test_verdict_says_when_the_sample_cannot_tell() -> None:
    assert verdict(0.62, (0.58, 0.66), 0.6).startswith("met (")
    assert verdict(0.62, (0.61, 0.66), 0.6) == "met"
    assert verdict(0.34, (0.28, 0.40), 0.35).startswith("**not met** (")
    assert verdict(0.47, (0.42, 0.52), 0.6) == "**not met**"


def test_in_benefit_splits_examples_by_what_their_span_is_worth() -> None:
    r = {"raw": [1.0, 1.0, 1.0], "drop": [1.05, 1.2, 2.0], "gist": [1.0, 1.1, 1.5],
         "cosine": [0.9]}  # a per-run value, not per example: left out
    small, middle, large = (in_benefit(r, lo, hi) for lo, hi in BENEFIT_BINS)
    assert small == {"raw": [1.0], "drop": [1.05], "gist": [1.0]}
    assert middle["drop"] == [1.2] and large["drop"] == [2.0]
    assert np.allclose(per_example(large, "gist"), [0.5])


def test_benchmarks_without_matplotlib_stop_with_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(SystemExit) as stop:
        pyplot()
    assert "pip install -e '.[bench]'" in str(stop.value) and "\n" not in str(stop.value)


def test_focus_runs_pair_task_for_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    def rows(nlls: list[float | None], **more: bool) -> list[dict]:  # "f" twice: in order
        return [{"scorer": "dense", "package": "p", "task": t, "budget": 1024,
                 "recall": i % 2 == 0, "nll": n, **more}
                for i, (t, n) in enumerate(zip(["f", "g", "f"], nlls, strict=True))]

    (tmp_path / "ref.json").write_text(json.dumps(rows([1.0, 2.0, 3.0])))  # an older run
    (tmp_path / "new.json").write_text(json.dumps(rows([1.5, 1.5, 4.0], opening=True)))
    (tmp_path / "new.md").write_text("# x\nGists: GistNet abc (9 steps).\n")
    monkeypatch.setattr(focus_pairs, "RESULTS", tmp_path)
    text = "\n".join(focus_pairs.compare(["ref", "new"]))
    assert "| `new` | GistNet abc (9 steps); after the opening |" in text
    assert "| `ref` | ref; no opening |" in text
    # differences +0.5, -0.5, +1.0: mean +0.333, median +0.5, worse on 2 of 3
    assert "| `new` | 66.7% | 2.333 | +0.333 [" in text and "| +0.500 | 2/3 |" in text


def test_gist_pairs_pair_only_the_same_examples(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def run(name: str, gist: list[float], drop: list[float], own: list[float] | None) -> None:
        row = {"data": "d", "level": 1, "raw": [1.0, 1.0, 1.0], "drop": drop, "gistnet": gist}
        ctx = {"data": "d", "level": "context", "raw": [1.0, 1.0], "drop": drop[1:],
               "gistnet": gist[:2]}
        if own is not None:
            ctx |= {"own_raw": [1.0, 1.0], "own_drop": [3.0, 3.0], "own_gistnet": own}
        (tmp_path / f"{name}.json").write_text(json.dumps([row, ctx]))
        (tmp_path / f"{name}.md").write_text(f"GistNet: `{name}.safetensors` — 9 steps; more\n")

    run("ref", [1.5, 1.5, 1.5], [2.0, 2.0, 2.0], [2.0, 2.0])
    run("new", [1.0, 1.75, 1.25], [2.0, 2.0, 2.0], [1.5, 2.5])
    run("other", [1.0, 1.0, 1.0], [2.0, 2.5, 2.0], None)  # other spans: never paired
    monkeypatch.setattr(gist_pairs, "RESULTS", tmp_path)
    text = "\n".join(gist_pairs.compare(["ref", "new", "other"]))
    assert "| `new` | `new.safetensors` — 9 steps |" in text
    # level 1: differences -0.5, +0.25, -0.25 (mean -0.167), better on 2 of 3
    level1 = text.split("## d, level 1")[1].split("##")[0]
    assert "| `new` | 0.75 [" in level1 and "| -0.167 [" in level1 and "| 2 of 3 |" in level1
    assert "`other`" not in level1
    own = text.split("## d, context, own gists only")[1]
    assert "| `new` | 0.50 [" in own and "| +0.000 [" in own and "| 1 of 2 |" in own
    assert "No examples in common with the reference (another seed or count): `other`." in text


def test_split_gist_model_takes_levels_from_3_up_from_the_upper_one() -> None:
    import torch

    from benchmarks.focus_quality import SplitByLevel

    class Const:
        def __init__(self, value: float, name: str) -> None:
            self.value, self.id, self.description = value, name, name

        def __call__(self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
                     ) -> torch.Tensor:
            return torch.full((len(children), children.shape[-1]), self.value)

    split = SplitByLevel(Const(1.0, "a"), Const(2.0, "b"))
    out = split(torch.zeros(4, 3, 5), torch.ones(4, 3, dtype=torch.bool),
                torch.tensor([1, 3, 2, 4]))
    assert out[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0] and split.id == "split-a-b"


def test_dropping_gists_keeps_raw_blocks_and_the_gists_below_the_level() -> None:
    from types import SimpleNamespace

    from benchmarks.focus_quality import kept
    from megacontext.allocator import Entry

    session = SimpleNamespace(repo=SimpleNamespace(level=np.array([1, 1, 2, 3, 4])))
    entries = [Entry(0, raw=True), Entry(1), Entry(2), Entry(3), Entry(4)]
    assert kept(session, entries, None) == entries
    assert kept(session, entries, 1) == [Entry(0, raw=True)]
    assert kept(session, entries, 3) == entries[:3]


def test_in_context_scores_both_gist_kinds_on_the_same_layouts(tmp_path: Path) -> None:
    from megacontext.gist import MeanPoolGist
    from megacontext.train.data import build_corpus
    from tests.megacontext.test_gistnet import MODEL, _repo, net

    corpus = build_corpus(_repo(tmp_path), sorted(p.name for p in tmp_path.glob("*.py")), MODEL)
    g = net()
    same = in_context(g, g, MODEL, corpus, 3, np.random.default_rng(0))
    assert len(same["raw"]) == len(same["drop"]) == 3
    assert same["meanpool"] == same["gistnet"]  # one layout and foreign places for both
    other = in_context(g, MeanPoolGist(MODEL.token_norm), MODEL, corpus, 3,
                       np.random.default_rng(0))
    assert other["gistnet"] == same["gistnet"] and other["meanpool"] != same["gistnet"]
    # own gists only: the same windows without the foreign gists score otherwise
    assert len(same["own_gistnet"]) == len(same["own_drop"]) == 3
    assert same["own_gistnet"] != same["gistnet"] and same["own_gistnet"] != same["own_raw"]


def test_the_context_table_counts_windows_worse_than_no_gists() -> None:
    r = {"raw": [1.0, 1.0, 1.0, 1.0], "drop": [2.0, 2.0, 2.0, 1.005],
         "gistnet": [1.5, 2.5, 1.0, 1.2], "meanpool": [2.0, 2.0, 2.0, 2.0]}
    row = next(line for line in context_section({"code": r}) if line.startswith("| code"))
    assert "| 4 (3) |" in row  # the last window's gists cannot help (0.005 nats)
    assert "**0.50**" in row and "| 2 of 4 |" in row  # recoveries 0.5, -0.5, 1.0
    assert not any("own gists" in line for line in context_section({"code": r}))
    r |= {"own_raw": [1.0, 1.0], "own_drop": [3.0, 2.0], "own_gistnet": [1.5, 2.5]}
    lines = context_section({"code": r})
    own = [line for line in lines if line.startswith("| code")][1]
    assert "| 2 (2) |" in own and "**0.12**" in own and "| 1 of 2 |" in own  # 0.75, -0.5


def test_gist_harm_arms_change_only_the_gists() -> None:
    import torch

    from benchmarks.gist_harm import ARMS, Context, Setup, arm_vectors, count, quarter

    level = np.array([0, 1, 0, 2, 3, 1, 0, 2, 1, 0])
    c = Context(torch.randn(10, 4), level)
    setup = Setup(dots=torch.full((4,), 7.0), opening=torch.zeros(3, 4))
    raw, gist = level == 0, level > 0
    out = {a: arm_vectors(a, c, setup, np.random.default_rng(0)) for a in ARMS}
    for a in ARMS:  # the opening first, but in the bare arms
        assert torch.equal(out[a][:3], setup.opening) != a.startswith("bare-"), a
    out = {a: v if a.startswith("bare-") else v[3:] for a, v in out.items()}
    assert torch.equal(out["gists"], c.vectors) and torch.equal(out["bare-gists"], c.vectors)
    assert torch.equal(out["none"], c.vectors[torch.from_numpy(raw)])
    assert torch.equal(out["bare-none"], out["none"])
    for a in ("mean", "shuffle", "dots", "scale-0.5", "scale-0.25"):
        assert torch.equal(out[a][raw], c.vectors[raw]), f"{a} leaves raw tokens as they are"
    ones = np.flatnonzero(level == 1)
    assert torch.allclose(out["mean"][ones], c.vectors[ones].mean(0).expand(3, 4))
    for lv in (1, 2, 3):  # a permutation within each level
        at = np.flatnonzero(level == lv)
        assert sorted(out["shuffle"][at].sum(1).tolist()) == \
            sorted(c.vectors[at].sum(1).tolist())
    assert bool((out["dots"][gist] == 7.0).all())
    assert torch.allclose(out["scale-0.5"][gist], 0.5 * c.vectors[gist])
    assert torch.allclose(out["scale-0.25"][gist], 0.25 * c.vectors[gist])
    assert len(out["drop-L1"]) == 7 and len(out["drop-L2"]) == 8 and len(out["drop-L3+"]) == 9
    quarters = [quarter(level, q) for q in range(4)]
    assert (sum(q.astype(int) for q in quarters) == gist).all(), "quarters tile the gists"
    assert np.flatnonzero(quarters[0]).max() < np.flatnonzero(quarters[3]).min()
    row = {"context": {"gists": {"1": 3, "2": 2, "3": 1}}}
    assert [count(row, a) for a in ("gists", "bare-gists", "none", "bare-none", "drop-L2",
                                    "drop-L3+", "drop-q1")] == [0, 0, 6, 6, 2, 1, 2]


def test_attention_profile_rows_are_the_queries_attention() -> None:
    import torch

    from tests.megacontext.test_gistnet import MODEL

    lm = MODEL.causal_lm()
    before = lm.config._attn_implementation
    x = torch.randn(1, 12, MODEL.dim)
    received, norms = MODEL.attention_profile(x, torch.tensor([5, 11]))
    layers = lm.config.num_hidden_layers
    assert received.shape == (layers, 12) and norms.shape == (layers + 1, 12)
    assert torch.allclose(received.sum(1), torch.ones(layers), atol=1e-5), "softmax rows"
    assert bool((received[:, 6:11] > 0).all()), "query 11 sees positions 6-10"
    first, _ = MODEL.attention_profile(x, torch.tensor([5]))
    assert bool((first[:, 6:] == 0).all()), "causal: query 5 sees nothing after it"
    assert torch.allclose(norms[0], x[0].norm(dim=-1)), "the input's norms come first"
    assert lm.config._attn_implementation == before, "the fast kernels are back"


def test_gist_fit_tables_report_each_split_and_the_memorisation_curve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from benchmarks import gist_fit

    monkeypatch.setattr(gist_fit, "RESULTS", tmp_path)
    # recoveries 0.5, 1.0, 0.0 where the span helps; the last span does not help
    spans = {"raw": [1.0, 1.0, 1.0, 1.0], "drop": [2.0, 2.0, 2.0, 1.0],
             "gistnet": [1.5, 1.0, 2.0, 1.0]}
    result = {"fit": {"training split|1": spans, "held-out stdlib|1": spans},
              "memorize": [{"epoch": 0, "memorised": 0.5, "memorised_of_means": 0.4,
                            "held_out": 0.45, "held_out_of_means": 0.41},
                           {"epoch": 5, "memorised": 0.9, "memorised_of_means": 0.8}],
              "seconds": 60.0}
    args = argparse.Namespace(weights=None, n1=4, n2=0, memorize=2, epochs=5, eval_every=5,
                              lr=1e-3, seed=0, name="fit")
    gist_fit.write(result, args, Path("w.safetensors"), {"steps": 7}, "a machine")
    text = (tmp_path / "fit.md").read_text()
    assert "| training split | 1 | 4 (3) | 1.000 | 1.750 | 1.375 | **0.50** [" in text
    assert "| held-out stdlib | 1 | 4 (3) |" in text
    assert "| 0 | 0.50 / 0.40 | 0.45 / 0.41 |" in text and "| 5 | 0.90 / 0.80 | – |" in text
    assert "--n1 4 --n2 0 --memorize 2" in text and "w.safetensors` — 7 steps" in text


@pytest.mark.parametrize("scorers", [["lensnet"], ["lensnet", "dense"]])
def test_focus_quality_writes_a_run_of_any_scorers(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   scorers: list[str]) -> None:
    import argparse

    from benchmarks import focus_quality

    monkeypatch.setattr(focus_quality, "RESULTS", tmp_path)
    rows = [{"scorer": s, "package": "p", "task": t, "budget": b,
             "recall": float(s == "lensnet" or t == 0), "partial": 1.0, "nll": None,
             "seconds": 0.01, "load": 1.0}
            for s in scorers for b in focus_quality.BUDGETS for t in range(2)]
    args = argparse.Namespace(packages=["p"], needles=2, nll_tasks=0, scorers=scorers,
                              gistnet=None, gistnet_upper=None, drop_gists_from=None,
                              no_opening=False, name="run")
    focus_quality.write(rows, {"p": (1, 10)}, args, "a machine", "GistNet x")
    assert len(json.loads((tmp_path / "run.json").read_text())) == len(rows)
    text = (tmp_path / "run.md").read_text()
    assert "| lensnet | 2048 | 100.0% |" in text
    compared = "lensnet 100.0% against the best baseline (dense) 50.0%: +50.0 points"
    assert (compared in text) == ("dense" in scorers)
