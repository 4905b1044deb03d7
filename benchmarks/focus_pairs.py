"""Compare focus_quality runs task for task: which gists (or scorers) make the working
context better for the base model?

    python benchmarks/focus_pairs.py REFERENCE RUN [RUN …] [--name focus_pairs]

Each name is a `benchmarks/focus_quality.py --name NAME` run in `benchmarks/results/`
(NAME.json holds its rows; NAME.md's `Gists:` line labels it). Rows are paired by (scorer,
package, task, budget), a repeated task name by its occurrence. For every budget it reports
each run's gold recall and mean target NLL, and each run's paired NLL difference to the
reference: mean with a 95% bootstrap interval (tasks resampled), median, and on how many
tasks it is worse. With the same scorer
and the same tasks, runs that differ only in their gists isolate what the gists do to the
base model's predictions in a real working context (many gists of every level beside raw
code), which `gist_quality.py` (one gist in raw context) does not see.

Writes benchmarks/results/NAME.md. Reads only results; runs no model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def label(name: str) -> str:
    """The run's `Gists:` line, else its name."""
    md = RESULTS / f"{name}.md"
    if md.is_file():
        for line in md.read_text().splitlines():
            if line.startswith("Gists: "):
                return line.removeprefix("Gists: ").rstrip(".")
    return name


def layout(rows: dict[tuple, dict]) -> str:
    """Where the run's target NLL read the context: after the chat template's opening (as
    `mcagent ask` does), or first in the sequence (runs made before the opening)."""
    return "; after the opening" if any(r.get("opening") for r in rows.values()) else \
        "; no opening"


def load(name: str) -> dict[tuple, dict]:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        sys.exit(f"error: no {path.name} in {RESULTS} (run focus_quality.py --name {name})")
    out: dict[tuple, dict] = {}
    seen: Counter[tuple] = Counter()
    for r in json.loads(path.read_text()):  # a task name can repeat: count its occurrences
        key = (r["scorer"], r["package"], r["task"], r["budget"])
        out[(*key, seen[key])] = r
        seen[key] += 1
    return out


def mean_interval(values: np.ndarray, resamples: int = 4000, seed: int = 0
                  ) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values))).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def compare(names: list[str]) -> list[str]:
    runs = {n: load(n) for n in names}
    ref = names[0]
    keys = sorted(set.intersection(*(set(r) for r in runs.values())), key=str)
    if not keys:
        sys.exit("error: the runs share no (scorer, package, task, budget) rows")
    lines = ["# Focus runs compared task for task", "",
             f"Produced by `python benchmarks/focus_pairs.py {' '.join(names)}` from the "
             "runs' JSON rows. Reference: the first run. Target NLL in nats/token (lower is "
             "better); Δ = run − reference on the same task, mean [95% bootstrap interval].",
             "", "| run | gists |", "|---|---|"]
    lines += [f"| `{n}` | {label(n)}{layout(runs[n])} |" for n in names]
    for scorer in sorted({k[0] for k in keys}):
        for budget in sorted({k[3] for k in keys}):
            ks = [k for k in keys if k[0] == scorer and k[3] == budget]
            scored = [k for k in ks if all(runs[n][k]["nll"] is not None for n in names)]
            lines += ["", f"## {scorer}, budget {budget} ({len(ks)} tasks, target NLL on "
                      f"{len(scored)})", "",
                      "| run | gold recall | mean target NLL | Δ mean [95%] | Δ median | "
                      "worse on |", "|---|---|---|---|---|---|"]
            base = np.array([runs[ref][k]["nll"] for k in scored], dtype=float)
            for n in names:
                recall = np.mean([runs[n][k]["recall"] for k in ks])
                nll = np.array([runs[n][k]["nll"] for k in scored], dtype=float)
                if n == ref or not len(scored):
                    delta = "—", "—", "—"
                else:
                    d = nll - base
                    lo, hi = mean_interval(d)
                    delta = (f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{np.median(d):+.3f}",
                             f"{int((d > 0).sum())}/{len(d)}")
                mean = f"{nll.mean():.3f}" if len(scored) else "—"
                lines.append(f"| `{n}` | {recall:.1%} | {mean} | " + " | ".join(delta) + " |")
    return [*lines, ""]


def pairs_main(compare: Callable[[list[str]], list[str]], source: str, default: str) -> None:
    """The command line of a pairs script: compare the named `source` runs (the first is the
    reference) and write benchmarks/results/NAME.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help=f"{source} result names; the first is the "
                    "reference")
    ap.add_argument("--name", default=default, help="results file stem")
    args = ap.parse_args()
    if len(args.runs) < 2:
        sys.exit("error: name a reference run and at least one run to compare with it")
    lines = compare(args.runs)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    pairs_main(compare, "focus_quality", "focus_pairs")


if __name__ == "__main__":
    main()
