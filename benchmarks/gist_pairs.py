"""Compare gist_quality runs example for example: which GistNet weights keep more of a span?

    python benchmarks/gist_pairs.py REFERENCE RUN [RUN …] [--name gist_pairs]

Each name is a `benchmarks/gist_quality.py --name NAME` run in `benchmarks/results/`
(NAME.json holds every example's NLLs; NAME.md's `GistNet:` line labels it). Runs made with
the same seed and counts draw the same examples; rows are paired by (data, part, index) and
only where the raw and deleted NLLs agree example for example, so a pair is the same span (or
context window) scored with two GistNets. Parts: level 1, level 2, the context of many gists
and, where the runs have it, the same windows with their own gists only.

For every part it reports each run's median recovery [95% bootstrap interval] and the paired
GistNet NLL difference to the reference (run − reference, nats/token): mean with a 95%
bootstrap interval (examples resampled), and on how many examples the run is better.

Writes benchmarks/results/NAME.md. Reads only results; runs no model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.focus_pairs import mean_interval, pairs_main  # noqa: E402
from benchmarks.gist_quality import median_interval, per_example  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARTS = {1: "level 1", 2: "level 2", "context": "context of many gists",
         "own": "context, own gists only"}


def label(name: str) -> str:
    """The run's `GistNet:` line up to its data description, else its name."""
    md = RESULTS / f"{name}.md"
    if md.is_file():
        for line in md.read_text().splitlines():
            if line.startswith("GistNet: "):
                return line.removeprefix("GistNet: ").split(";")[0]
    return name


def load(name: str) -> dict[tuple[str, object], dict[str, np.ndarray]]:
    """(data, part) -> the part's per-example raw, drop and GistNet NLLs."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        sys.exit(f"error: no {path.name} in {RESULTS} (run gist_quality.py --name {name})")
    out: dict[tuple[str, object], dict[str, np.ndarray]] = {}
    for r in json.loads(path.read_text()):
        out[(r["data"], r["level"])] = {k: np.asarray(r[k], float)
                                        for k in ("raw", "drop", "gistnet")}
        if r["level"] == "context" and r.get("own_gistnet"):
            out[(r["data"], "own")] = {k: np.asarray(r[f"own_{k}"], float)
                                       for k in ("raw", "drop", "gistnet")}
    return out


def same_examples(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return len(a["raw"]) == len(b["raw"]) and all(
        np.allclose(a[k], b[k], atol=1e-4) for k in ("raw", "drop"))


def compare(names: list[str]) -> list[str]:
    runs = {n: load(n) for n in names}
    ref = names[0]
    lines = ["# GistNet runs compared example for example", "",
             f"Produced by `python benchmarks/gist_pairs.py {' '.join(names)}` from the runs' "
             "JSON rows. Reference: the first run. Recovery median [95% bootstrap interval]; "
             "Δ = GistNet NLL of the run − the reference's on the same example (nats/token, "
             "lower is better), mean [95% bootstrap interval].", "",
             "| run | GistNet |", "|---|---|"]
    lines += [f"| `{n}` | {label(n)} |" for n in names]
    order = list(PARTS)
    keys = sorted(runs[ref], key=lambda k: (k[0], order.index(k[1])))
    for key in keys:
        paired = [n for n in names[1:] if key in runs[n]
                  and same_examples(runs[ref][key], runs[n][key])]
        if not paired:
            continue
        base = runs[ref][key]
        lines += ["", f"## {key[0]}, {PARTS[key[1]]} ({len(base['raw'])} examples)", "",
                  "| run | recovery median [95%] | Δ NLL mean [95%] | better on |",
                  "|---|---|---|---|"]
        for n in [ref, *paired]:
            r = runs[n][key]
            per = per_example(r, "gistnet")
            lo, hi = median_interval(per)
            rec = f"{np.median(per):.2f} [{lo:.2f}, {hi:.2f}]" if len(per) else "—"
            if n == ref:
                lines.append(f"| `{n}` | {rec} | — | — |")
                continue
            d = r["gistnet"] - base["gistnet"]
            dlo, dhi = mean_interval(d)
            lines.append(f"| `{n}` | {rec} | {d.mean():+.3f} [{dlo:+.3f}, {dhi:+.3f}] "
                         f"| {int((d < 0).sum())} of {len(d)} |")
    unpaired = [n for n in names[1:] if not any(
        k in runs[n] and same_examples(runs[ref][k], runs[n][k]) for k in runs[ref])]
    if unpaired:
        lines += ["", "No examples in common with the reference (another seed or count): "
                  + ", ".join(f"`{n}`" for n in unpaired) + "."]
    return [*lines, ""]


def main() -> None:
    pairs_main(compare, "gist_quality", "gist_pairs")


if __name__ == "__main__":
    main()
