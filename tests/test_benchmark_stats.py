"""The statistics the gist-quality benchmark reports its verdicts with."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks.gist_quality import (
    BENEFIT_BINS,
    in_benefit,
    median_interval,
    per_example,
    recovery,
    verdict,
)
from benchmarks.plotting import pyplot


def test_per_example_recovery_keeps_only_spans_that_help() -> None:
    r = {"raw": [1.0, 1.0, 2.0], "drop": [2.0, 1.01, 3.0], "gist": [1.5, 1.0, 2.25]}
    assert np.allclose(per_example(r, "gist"), [0.5, 0.75])  # the middle span does not help
    median, of_means, helped = recovery(r, "gist")
    assert helped == 2 and np.isclose(median, 0.625)
    assert np.isclose(of_means, (np.mean(r["drop"]) - np.mean(r["gist"]))
                      / (np.mean(r["drop"]) - np.mean(r["raw"])))


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
