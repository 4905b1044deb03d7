"""Benchmark: how well a gist stands in for the span it compresses, on code never trained on.

    python benchmarks/gist_quality.py [--weights PATH] [--n1 640] [--n2 432] [--n-ctx 48]

Held-out code: the standard library's held-out packages (`HOLDOUT_PACKAGES`, never trained
on) and third-party packages installed here (click, rich). For spans cut exactly as the
index cuts them — level-1 blocks (≤ 32 tokens) and level-2 groups (≤ 32 blocks, ≤ 1,024
tokens) — with a 128-token prefix, the frozen base model's NLL over the next 64 tokens is
measured with the raw span (best), the span deleted (worst), the mean-pool baseline gist and
the trained GistNet gist, all in one run on the same examples.

A content control guards against a gist that carries nothing: each example also gets
another example's GistNet gist (the batch rolled by one). A gist that depends on its span
must do better with its own span's gist than with a stranger's; one that is the same
vector whatever the span scores alike on both (its whole recovery is then a learned
separator, not compression). The mean pairwise cosine of the gists is reported beside it.

Reports the distribution of ΔNLL@64 = NLL − NLL_raw per method, and the recovery (NLL_drop −
NLL_gist) / (NLL_drop − NLL_raw): the median over examples whose span helps (NLL_drop >
NLL_raw + 0.02, so the ratio is defined) and the recovery of the mean NLLs over all
examples. Each median comes with a 95% bootstrap interval (examples resampled), and a
target's verdict says when the target lies inside it: the sample cannot then tell met from
not met. Per-example recovery is widely spread (on held-out stdlib at level 1 its quartiles
are about 0.3 and 1.0), so the median needs hundreds of examples: two draws of 160 and 96
spans from the same pool gave 0.49 and 0.71; the defaults draw 640 and 432, each level
from its own random stream (so `--n1 0` draws the same level-2 groups). Tables split the
median by how much the spans are worth and by what they are (code, or literal data: rows of
strings and numbers such as generated tables, which examples drawn uniformly over a
package's blocks meet as often as the package holds them), and every example's NLLs go to a
JSON file beside the results. Writes benchmarks/results/gist_quality.md, .png and .json
(`--name` changes the name, to measure candidate weights beside the shipped ones).

In a context of many gists (`--n-ctx` windows per dataset; `--n1 0 --n2 0` for this part
alone): a gist is used among others, as in a working context. Each example is a 64-token
raw prefix, a window of 20 blocks laid out as raw blocks and gists of levels 1–3, about 96
gists of other places in the same code between the pieces (levels 2–3 of them built on a
pool of level-1 gists), and 48 continuation tokens; the NLL over every raw token after the
first gist is measured all raw, with the gists (GistNet; mean-pool), and with every gist
deleted. In-context recovery below 0 means the gists do worse than no gists at all. The same
windows and layouts are also scored with the window's own gists alone (the foreign ones
deleted), which separates what the gists of the code around the continuation do from what
gists of other places among them do.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PREFIX, HORIZON = 128, 64
THIRD_PARTY = ["click", "rich"]
HELPS = 0.02  # nats: a span "helps" when deleting it costs more than this
CTX_BLOCKS, CTX_PREFIX, CTX_HORIZON = 20, 64, 48  # a context example, as in training
CTX_FOREIGN, CTX_POOL = 96, 16  # mean gists of other code per example; runs in their pool
BENEFIT_BINS = ((HELPS, 0.1), (0.1, 0.3), (0.3, np.inf))  # for recovery by span value
_STRING = re.compile(r'''[rbfuRBFU]{0,2}("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')''')
_NUMBER = re.compile(r"\b(?:0[xXoObB][0-9a-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?[jJ]?)\b")


def main() -> None:
    import platformdirs
    import torch

    from benchmarks.index_speed import machine
    from benchmarks.plotting import pyplot
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.gist import MeanPoolGist
    from megacontext.gistnet import load_gistnet, shipped_weights
    from megacontext.train.data import cached_corpus, package_files, stdlib_files
    from megacontext.train.objective import candidates, gist_batch, make_batch, substitutions

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, help="GistNet weights (default: the shipped ones)")
    ap.add_argument("--n1", type=int, default=640, help="level-1 examples per dataset")
    ap.add_argument("--n2", type=int, default=432, help="level-2 examples per dataset")
    ap.add_argument("--n-ctx", type=int, default=48,
                    help="context windows per dataset (many gists at once; 0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="gist_quality", help="results file name (no suffix)")
    args = ap.parse_args()
    if min(args.n1, args.n2, args.n_ctx) < 0 or not (args.n1 or args.n2 or args.n_ctx):
        sys.exit("error: --n1, --n2 and --n-ctx take counts ≥ 0, not all 0")
    pyplot()  # before the long run, not after it
    torch.manual_seed(args.seed)
    cache = Path(platformdirs.user_cache_dir("mcagent"))
    model = load_base_model(ModelConfig(cache_dir=cache))
    weights = args.weights or shipped_weights(model.id)
    if weights is None:
        sys.exit(f"no GistNet weights for {model.id}: pass --weights")
    net, manifest = load_gistnet(weights, model.device)
    meanpool = MeanPoolGist(model.token_norm)
    lib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    datasets = {
        "held-out stdlib": (lib, stdlib_files(lib, "holdout")),
        "third-party (" + ", ".join(THIRD_PARTY) + ")": (site, package_files(site, THIRD_PARTY)),
    }
    started = time.perf_counter()
    rows: dict[tuple[str, int], dict[str, list[float]]] = {}
    context: dict[str, dict[str, list[float]]] = {}
    for d, (name, (root, paths)) in enumerate(datasets.items()):
        corpus = cached_corpus(root, paths, model, cache / "eval-corpora")
        for level, n, batch in ((1, args.n1, 8), (2, args.n2, 2)):
            if not n:
                continue
            # one stream per level: a level's draw does not depend on the other's count
            rng = np.random.default_rng([args.seed, d] if level == 1 else [args.seed, d, level])
            pool = candidates(corpus, level, PREFIX, HORIZON)
            picked = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
            out = rows.setdefault((name, level), {k: [] for k in
                                                  ("raw", "drop", "meanpool", "gistnet",
                                                   "shuffled", "tokens", "literal")})
            vectors = []
            for lo in range(0, len(picked), batch):
                b = make_batch(corpus, picked[lo : lo + batch], level, PREFIX, HORIZON)
                with torch.no_grad():
                    g_net = gist_batch(net, model, b, model.device)
                    g_mean = gist_batch(meanpool, model, b, model.device)
                    g_other = g_net.roll(1, 0)  # every example gets another span's gist
                    res_net, res_mean, res_other = substitutions(
                        model, b, [g_net, g_mean, g_other], with_drop=True)
                vectors.append(g_net)
                out["shuffled"] += res_other.nll_gist.tolist()
                out["raw"] += res_net.nll_raw.tolist()
                out["drop"] += res_net.nll_drop.tolist()
                out["gistnet"] += res_net.nll_gist.tolist()
                out["meanpool"] += res_mean.nll_gist.tolist()
                out["tokens"] += [len(s) for s in b.spans]
                out["literal"] += [is_literal_data(model.tokenizer.decode(s.tolist()))
                                   for s in b.spans]
            unit = torch.nn.functional.normalize(torch.cat(vectors).float(), dim=-1)
            cos = unit @ unit.T
            out["cosine"] = [float(cos[~torch.eye(len(cos), dtype=torch.bool)].mean())]
            print(f"{name} level {level}: {len(picked)} examples "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        if args.n_ctx:
            context[name] = in_context(net, meanpool, model, corpus, args.n_ctx,
                                       np.random.default_rng([args.seed, d, 3]))
            print(f"{name} in context: {len(context[name]['raw'])} windows "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    write(rows, context, weights, manifest, machine(), time.perf_counter() - started, args)


def in_context(net: object, meanpool: object, model: object, corpus: object, n: int,
               rng: np.random.Generator, batch: int = 2) -> dict[str, list[float]]:
    """Per window: NLL over every raw token after the first gist, all raw, with GistNet's
    and with mean-pool gists (the same layout and foreign places), and with the gists
    deleted."""
    import torch

    from megacontext.train.objective import (
        ContextBatch,
        context_candidates,
        context_losses,
        foreign_pool,
        gist_pieces,
        make_context_batch,
    )

    windows = context_candidates(corpus, CTX_BLOCKS, CTX_PREFIX, CTX_HORIZON)
    picked = np.sort(rng.choice(windows, size=min(n, len(windows)), replace=False))
    pool_seed = int(rng.integers(2**31))
    pools = {m: foreign_pool(g, model, corpus, np.random.default_rng(pool_seed), CTX_POOL,
                             model.device) for m, g in (("gistnet", net), ("meanpool", meanpool))}
    out: dict[str, list[float]] = {k: [] for k in ("raw", "drop", "gistnet", "meanpool",
                                                   "own_raw", "own_drop", "own_gistnet")}
    for lo in range(0, len(picked), batch):
        seed = int(rng.integers(2**31))
        with torch.no_grad():
            for m, g in (("gistnet", net), ("meanpool", meanpool)):
                cb = make_context_batch(corpus, picked[lo : lo + batch], CTX_BLOCKS, CTX_PREFIX,
                                        CTX_HORIZON, np.random.default_rng(seed), CTX_FOREIGN,
                                        pools[m])
                vectors = gist_pieces(g, model, cb, model.device)
                r = context_losses(model, cb, vectors, with_drop=m == "gistnet")
                out[m] += r.nll_gist.tolist()
                if m == "gistnet":
                    out["raw"] += r.nll_raw.tolist()
                    out["drop"] += r.nll_drop.tolist()
                    # the same windows and layouts without the foreign gists (theirs are the
                    # tokens after the text): scored on every raw token after the first own gist
                    own = ContextBatch(cb.tokens, [[p for p in pieces if p.lo < end] for
                                                   pieces, (_, end) in zip(cb.pieces, cb.cont,
                                                                           strict=True)],
                                       cb.cont, cb.fixed)
                    r = context_losses(model, own, vectors, with_drop=True)
                    out["own_raw"] += r.nll_raw.tolist()
                    out["own_drop"] += r.nll_drop.tolist()
                    out["own_gistnet"] += r.nll_gist.tolist()
    return out


def is_literal_data(text: str) -> bool:
    """Whether a span is literal data, not code: nothing but string and number literals and
    punctuation (the rows of a table of colours, widths or emoji names), no name, keyword
    or comment. A string cut by the span's edge leaves letters behind and counts as code."""
    rest = _NUMBER.sub(" ", _STRING.sub(" ", text))
    return bool(text.strip()) and re.search(r"[A-Za-z_#]", rest) is None


def where(r: dict[str, list[float]], keep: np.ndarray) -> dict[str, list[float]]:
    """The examples of `r` that `keep` marks (per-example fields only)."""
    n = len(r["raw"])
    return {k: np.asarray(v)[keep].tolist() for k, v in r.items() if len(v) == n}


def per_example(r: dict[str, list[float]], method: str) -> np.ndarray:
    """Recovery of each example whose span helps (where the ratio is defined)."""
    raw, drop, got = (np.asarray(r[k]) for k in ("raw", "drop", method))
    helps = drop > raw + HELPS
    return (drop[helps] - got[helps]) / (drop[helps] - raw[helps])


def recovery(r: dict[str, list[float]], method: str) -> tuple[float, float, int]:
    """(median per-example recovery where the span helps, recovery of the means, n helped)."""
    raw, drop, got = (np.asarray(r[k]) for k in ("raw", "drop", method))
    per = per_example(r, method)
    of_means = (drop.mean() - got.mean()) / (drop.mean() - raw.mean())
    return float(np.median(per)) if len(per) else float("nan"), float(of_means), len(per)


def median_interval(values: np.ndarray, level: float = 0.95, resamples: int = 4000,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of `values` (NaNs when there are none)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(resamples, len(values))), axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def in_benefit(r: dict[str, list[float]], lo: float, hi: float) -> dict[str, list[float]]:
    """The examples of `r` whose span is worth [lo, hi) nats/token (NLL_drop − NLL_raw)."""
    benefit = np.asarray(r["drop"]) - np.asarray(r["raw"])
    return where(r, (benefit >= lo) & (benefit < hi))


def verdict(median: float, interval: tuple[float, float], target: float) -> str:
    """'met' / '**not met**', saying so when the target lies inside the median's interval."""
    said = "met" if median >= target else "**not met**"
    if interval[0] <= target <= interval[1]:
        said += " (the target lies inside the 95% interval: this sample cannot tell)"
    return said


def write(rows: dict, context: dict, weights: Path, manifest: dict, machine_text: str,
          seconds: float, args: argparse.Namespace) -> None:
    lines = [
        "# Gist quality: does one vector stand in for 32 (or ~1,024) tokens?", "",
        f"Machine: {machine_text}. Produced by "
        f"`{' '.join(['python benchmarks/gist_quality.py', *sys.argv[1:]])}` in "
        f"{seconds / 60:.0f} min.",
        f"GistNet: `{weights.name}` — {manifest.get('steps')} steps, seed "
        f"{manifest.get('seed')}, base `{manifest.get('base_model')}`, commit "
        f"{str(manifest.get('commit'))[:7]}; trained only on the standard library "
        f"(held out: {', '.join(manifest.get('data', {}).get('holdout_packages', []))}).",
        f"Spans cut as the index cuts them; {PREFIX}-token prefix; NLL over the next "
        f"{HORIZON} tokens; base model fp32, frozen.", "",
        "Recovery = (NLL_drop − NLL_gist) / (NLL_drop − NLL_raw): 1 is as good as the raw "
        "span, 0 as bad as deleting it. *Median* is over examples whose span helps "
        f"(NLL_drop > NLL_raw + {HELPS}), with its 95% bootstrap interval in brackets; *of "
        "means* uses the mean NLLs of all examples.", "",
        "| data | level | n (span helps) | mean span tokens | NLL raw | NLL drop | NLL mean-pool "
        "| NLL GistNet | recovery mean-pool: median / of means | **recovery GistNet: median** "
        "/ of means |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    intro = len(lines) - 3  # up to the single-span tables, which need single-span rows
    for (name, level), r in rows.items():
        mp, gn = recovery(r, "meanpool"), recovery(r, "gistnet")
        lo, hi = median_interval(per_example(r, "gistnet"))
        lines.append(
            f"| {name} | {level} | {len(r['raw'])} ({gn[2]}) | {np.mean(r['tokens']):.0f} "
            f"| {np.mean(r['raw']):.3f} | {np.mean(r['drop']):.3f} | {np.mean(r['meanpool']):.3f} "
            f"| {np.mean(r['gistnet']):.3f} | {mp[0]:.2f} / {mp[1]:.2f} "
            f"| **{gn[0]:.2f}** [{lo:.2f}, {hi:.2f}] / {gn[1]:.2f} |")
    lines += ["", "## Content control: does the gist depend on its span?", "",
              "Each example scored with another example's GistNet gist. *Content* is GistNet's "
              "recovery (of means) minus the stranger's: 0 means the gists carry nothing "
              "about their own spans.", "",
              "| data | level | recovery own gist: median / of means | recovery another span's "
              "gist: median / of means | **content** | mean pairwise cosine of gists |",
              "|---|---|---|---|---|---|"]
    for (name, level), r in rows.items():
        gn, other = recovery(r, "gistnet"), recovery(r, "shuffled")
        lines.append(f"| {name} | {level} | {gn[0]:.2f} / {gn[1]:.2f} | {other[0]:.2f} / "
                     f"{other[1]:.2f} | **{gn[1] - other[1]:+.3f}** | {r['cosine'][0]:.4f} |")
    lines += ["", "## ΔNLL@64 = NLL − NLL_raw (nats/token): p10 / p25 / median / p75 / p90", "",
              "| data | level | drop | mean-pool | GistNet |", "|---|---|---|---|---|"]
    for (name, level), r in rows.items():
        raw = np.asarray(r["raw"])
        cells = [" / ".join(f"{v:.2f}" for v in np.percentile(np.asarray(r[m]) - raw,
                                                                [10, 25, 50, 75, 90]))
                 for m in ("drop", "meanpool", "gistnet")]
        lines.append(f"| {name} | {level} | " + " | ".join(cells) + " |")
    lines += ["", "## Recovery by how much the span matters", "",
              "Median GistNet recovery [95% interval] of the examples whose span is worth "
              "this much (NLL_drop − NLL_raw, nats/token); n in brackets.", "",
              "| data | level | " + " | ".join(f"{lo}–{hi} nats" if hi < np.inf else
                                              f"≥ {lo} nats" for lo, hi in BENEFIT_BINS)
              + " |", "|---|---|" + "---|" * len(BENEFIT_BINS)]
    for (name, level), r in rows.items():
        cells = []
        for lo, hi in BENEFIT_BINS:
            part = in_benefit(r, lo, hi)
            per = per_example(part, "gistnet")
            low, high = median_interval(per)
            cells.append(f"{np.median(per):.2f} [{low:.2f}, {high:.2f}] ({len(per)})" if len(per)
                         else "— (0)")
        lines.append(f"| {name} | {level} | " + " | ".join(cells) + " |")
    lines += ["", "## Recovery by what the span is", "",
              "*Literal data*: spans of string and number literals and punctuation alone (rows "
              "of generated tables), not code. Median GistNet recovery [95% interval] / of "
              "means; n (span helps) in brackets.", "",
              "| data | level | literal data: share of examples | code | literal data |",
              "|---|---|---|---|---|"]
    for (name, level), r in rows.items():
        literal = np.asarray(r["literal"], dtype=bool)
        cells = []
        for part in (where(r, ~literal), where(r, literal)):
            per = per_example(part, "gistnet")
            if not len(per):
                cells.append("— (0)")
                continue
            low, high = median_interval(per)
            cells.append(f"{np.median(per):.2f} [{low:.2f}, {high:.2f}] / "
                         f"{recovery(part, 'gistnet')[1]:.2f} ({len(per)})")
        lines.append(f"| {name} | {level} | {literal.mean():.0%} | " + " | ".join(cells) + " |")
    targets = {1: 0.6, 2: 0.35}
    lines += ["", "## Targets", ""]
    for (name, level), r in rows.items():
        got = recovery(r, "gistnet")[0]
        interval = median_interval(per_example(r, "gistnet"))
        lines.append(f"- {name}, level {level}: median recovery {got:.2f} "
                     f"[{interval[0]:.2f}, {interval[1]:.2f}] (target ≥ {targets[level]}): "
                     f"{verdict(got, interval, targets[level])}")
    if not rows:
        lines = lines[:intro]
    if context:
        lines += context_section(context)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    per_examples = [{"data": name, "level": level, **r} for (name, level), r in rows.items()]
    per_examples += [{"data": name, "level": "context", **r} for name, r in context.items()]
    (RESULTS / f"{args.name}.json").write_text(json.dumps(per_examples) + "\n")
    if rows:
        plot(rows, RESULTS / f"{args.name}.png")
    print("\n".join(lines))


def context_section(context: dict[str, dict[str, list[float]]]) -> list[str]:
    """The in-context table: NLLs and recoveries of GistNet's and mean-pool gists."""
    lines = ["", "## In a context of many gists", "",
             f"Per example: a {CTX_PREFIX}-token raw prefix, a window of {CTX_BLOCKS} blocks "
             "laid out as raw blocks and gists of levels 1–3, 0 to "
             f"{2 * CTX_FOREIGN} gists of other places in the same code between the pieces "
             f"(mean {CTX_FOREIGN}; levels 2–3 of them built on level-1 gists of {CTX_POOL} "
             f"runs of groups), and {CTX_HORIZON} continuation tokens. NLL over every raw token "
             "after the first gist; *drop* deletes every gist (what retrieval alone gives). "
             "Recovery below 0: the gists do worse than no gists.", "",
             "| data | windows (gists help) | NLL raw | NLL drop | NLL mean-pool | NLL GistNet "
             "| recovery mean-pool: median / of means | **recovery GistNet: median** / of "
             "means | GistNet worse than drop on |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in context.items():
        lines.append(_context_row(name, r, with_meanpool=True))
    if all("own_gistnet" in r and r["own_gistnet"] for r in context.values()):
        lines += ["", "The same windows and layouts with only the window's own gists (the foreign "
                  "ones deleted; every raw token after the first own gist scored): what the "
                  "gists of the code around the continuation do without gists of other places "
                  "among them.", "",
                  "| data | windows (gists help) | NLL raw | NLL drop | NLL GistNet "
                  "| **recovery GistNet: median** / of means | GistNet worse than drop on |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in context.items():
            own = {"raw": r["own_raw"], "drop": r["own_drop"], "gistnet": r["own_gistnet"]}
            lines.append(_context_row(name, own, with_meanpool=False))
    return lines


def _context_row(name: str, r: dict[str, list[float]], with_meanpool: bool) -> str:
    """One dataset's row of an in-context table (the mean-pool columns when asked)."""
    gn = recovery(r, "gistnet")
    lo, hi = median_interval(per_example(r, "gistnet"))
    worse = int((np.asarray(r["gistnet"]) > np.asarray(r["drop"])).sum())
    cells = [f"{len(r['raw'])} ({gn[2]})", f"{np.mean(r['raw']):.3f}",
             f"{np.mean(r['drop']):.3f}"]
    if with_meanpool:
        mp = recovery(r, "meanpool")
        cells += [f"{np.mean(r['meanpool']):.3f}", f"{np.mean(r['gistnet']):.3f}",
                  f"{mp[0]:.2f} / {mp[1]:.2f}"]
    else:
        cells.append(f"{np.mean(r['gistnet']):.3f}")
    cells += [f"**{gn[0]:.2f}** [{lo:.2f}, {hi:.2f}] / {gn[1]:.2f}", f"{worse} of {len(r['raw'])}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def plot(rows: dict, path: Path) -> None:
    from benchmarks.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4), sharey=True)
    for ax, ((name, level), r) in zip(np.atleast_1d(axes), rows.items(), strict=True):
        raw = np.asarray(r["raw"])
        data = [np.asarray(r[m]) - raw for m in ("drop", "meanpool", "gistnet")]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks([1, 2, 3], ["deleted", "mean-pool", "GistNet"])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{name}\nlevel {level}", fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("ΔNLL@64 vs raw span (nats/token)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
