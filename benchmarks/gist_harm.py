"""Benchmark: why does a working context of gists predict worse than the same context with
every gist deleted?

    python benchmarks/gist_harm.py [--packages click rich] [--needles 40] [--nll-tasks 8]
        [--budgets 1024] [--gistnet W.safetensors] [--name gist_harm]

`focus_quality.py --scorers dense` found that deleting every gist from a working context
lowers the needle function's target NLL by 0.24–0.32 nats/token (`gists_in_context.md`).
This takes the same working contexts (dense focus, which does not read gists, so the raw
code is the same in every arm) and changes only what stands at the gists' positions, on the
same tasks, to tell which property of the gists does the harm. Every arm reads the context
after the chat template's opening (system prompt and the user turn's first line), as
`mcagent ask` lays it out, except the two `bare-` arms:

- `gists` (the reference) and `none` (every gist deleted: the bar a context of gists has to
  beat);
- the start: `bare-gists` and `bare-none` start the sequence with the context itself, as
  `focus_quality.py` did before it had the opening. Then the model's first position is
  whatever the context starts with: often a gist, where no training example puts one, and
  the first position is where this model keeps its attention sink;
- content: `mean` (every gist replaced by the mean gist of its level in the same context:
  presence without content), `shuffle` (gists permuted within their level: the content of
  other places), `dots` (every gist replaced by the token "..."), `scale-0.5` and
  `scale-0.25` (gists at half and a quarter of their norm);
- where the harm sits: `drop-L1`, `drop-L2`, `drop-L3+` (one level's gists deleted) and
  `drop-q1` … `drop-q4` (one quarter of the gists deleted, in timeline order: q1 farthest
  from the question, q4 nearest).

An attention probe on the `gists` and `dots` arms reports, per layer, the attention the
target's positions pay to gist positions, raw context tokens and the opening's first
position, per position relative to a raw token, and the hidden-state norms at those
positions (is a gist an attention sink?).

Writes benchmarks/results/NAME.md, NAME.json (every task's NLL per arm) and NAME.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
QUARTERS = ("drop-q1", "drop-q2", "drop-q3", "drop-q4")
ARMS = ("gists", "none", "bare-gists", "bare-none", "mean", "shuffle", "dots", "scale-0.5",
        "scale-0.25", "drop-L1", "drop-L2", "drop-L3+", *QUARTERS)
PROBED = ("gists", "dots")


@dataclass(frozen=True)
class Context:
    """A working context's positions: their vectors and what each one is."""

    vectors: torch.Tensor  # (L, D) float32
    level: np.ndarray  # (L,) 0 at raw tokens, the node's level at a gist


@dataclass(frozen=True)
class Setup:
    """What every arm shares."""

    dots: torch.Tensor  # (D,) the embedding of "..."
    opening: torch.Tensor  # (P, D) the chat template before the repository context


def context(session: object, entries: list) -> Context:
    """The working context of `entries` as vectors, with each position's level."""
    model, repo = session.model, session.repo
    e = session.entries(entries)
    vectors = torch.empty(len(e.token_ids), model.dim)
    tok = torch.from_numpy(e.token_ids)
    is_tok = tok >= 0
    vectors[is_tok] = model.embeddings[tok[is_tok]]
    vectors[~is_tok] = e.gists[torch.from_numpy(e.gist_rows[~is_tok.numpy()])].float()
    level_of_entry = np.array([0 if x.raw else int(repo.level[x.node]) for x in entries])
    return Context(vectors, np.repeat(level_of_entry, e.lengths))


def arm_vectors(name: str, c: Context, setup: Setup, rng: np.random.Generator
                ) -> torch.Tensor:
    """(P + L', D) what the model reads in arm `name`: the opening (none in `bare-` arms),
    then the context with its gists changed."""
    out = changed(name.removeprefix("bare-"), c, setup, rng)
    return out if name.startswith("bare-") else torch.cat([setup.opening, out])


def changed(name: str, c: Context, setup: Setup, rng: np.random.Generator) -> torch.Tensor:
    """(L', D) the context with its gists changed as arm `name` says."""
    gist = c.level > 0
    v = c.vectors.clone()
    if name == "gists":
        out = v
    elif name == "none":
        out = v[torch.from_numpy(~gist)]
    elif name == "mean" or name == "shuffle":
        for level in np.unique(c.level[gist]):
            at = np.flatnonzero(c.level == level)
            src = (at if name == "mean" else rng.permutation(at))
            v[at] = (c.vectors[src].mean(0, keepdim=True) if name == "mean" else c.vectors[src])
        out = v
    elif name == "dots":
        v[torch.from_numpy(gist)] = setup.dots
        out = v
    elif name.startswith("scale-"):
        v[torch.from_numpy(gist)] *= float(name.removeprefix("scale-"))
        out = v
    elif name.startswith("drop-L"):
        low = int(name[len("drop-L"):].rstrip("+"))
        hit = (c.level >= low) if name.endswith("+") else (c.level == low)
        out = v[torch.from_numpy(~hit)]
    elif name in QUARTERS:
        out = v[torch.from_numpy(~quarter(c.level, QUARTERS.index(name)))]
    else:
        raise ValueError(f"unknown arm {name}")
    return out


def quarter(level: np.ndarray, q: int) -> np.ndarray:
    """(L,) bool: the gists of the q-th quarter (0 = first in the timeline) of the gists."""
    at = np.flatnonzero(level > 0)
    mask = np.zeros(len(level), bool)
    mask[np.array_split(at, 4)[q]] = True
    return mask


def scored(session: object, vectors: torch.Tensor, task: object
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, T, D) context + question + target, (1, H) the positions that predict the target,
    and (1, H) the target's ids (its first 40 tokens, as `focus_quality.py` scores them)."""
    model = session.model
    prompt = model.encode([task.prompt()])[0].ids.astype(np.int64)
    target = model.encode([task.target])[0].ids[:40].astype(np.int64)
    tail = model.embeddings[torch.from_numpy(np.concatenate([prompt, target[:-1]]))]
    x = torch.cat([vectors, tail])[None]
    H = len(target)
    return x, (x.shape[1] - H + torch.arange(H))[None], torch.from_numpy(target)[None]


def nll(session: object, vectors: torch.Tensor, task: object) -> float:
    """NLL per token of the task's target after `vectors` and the question."""
    x, at, target = scored(session, vectors, task)
    valid = torch.ones_like(target, dtype=torch.bool)
    return float(session.model.target_nll(x, at, target, valid)[0])


def probe(session: object, c: Context, vectors: torch.Tensor, task: object) -> dict:
    """Per layer: attention from the target's positions to the context's gist positions and
    raw tokens and to the first position (sums, and per gist over per raw token), and median
    hidden-state norms there. `vectors` are the opening (P positions) then the context."""
    x, at, _ = scored(session, vectors, task)
    received, norms = session.model.attention_profile(x, at[0])
    P, L = len(vectors) - len(c.level), len(c.level)
    assert P > 0, "the probed arms read the opening first"
    gist = torch.from_numpy(c.level > 0)
    raw = ~gist
    ctx, ctx_norms = received[:, P : P + L], norms[:, P : P + L]
    per_raw = ctx[:, raw].sum(1) / max(int(raw.sum()), 1)
    return {
        "to_gists": ctx[:, gist].sum(1).tolist(), "to_raw": ctx[:, raw].sum(1).tolist(),
        "to_first": received[:, 0].tolist(),
        "gist_over_raw": (ctx[:, gist].sum(1) / max(int(gist.sum()), 1) / per_raw).tolist(),
        "norm_gist": ctx_norms[:, gist].median(1).values.tolist(),
        "norm_raw": ctx_norms[:, raw].median(1).values.tolist(),
        "norm_first": norms[:, 0].tolist(),
    }


def main() -> None:
    import platformdirs

    from benchmarks.focus_quality import composition, needle_repository, opening
    from benchmarks.index_speed import machine
    from benchmarks.plotting import pyplot
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.ask import AskConfig, AskSession
    from megacontext.gistnet import default_gist_model, load_gistnet
    from megacontext.store import Store, db_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", nargs="+", default=["click", "rich"])
    ap.add_argument("--needles", type=int, default=40)
    ap.add_argument("--nll-tasks", type=int, default=8)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1024])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gistnet", type=Path, help="GistNet weights (default: the shipped ones)")
    ap.add_argument("--name", default="gist_harm", help="results file stem")
    args = ap.parse_args()
    if args.gistnet is not None and not args.gistnet.is_file():
        sys.exit(f"error: no GistNet weights at {args.gistnet}")
    pyplot()  # before the long run, not after it
    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent")),
                                        dtype="bfloat16"))
    gist_model = (load_gistnet(args.gistnet)[0] if args.gistnet is not None
                  else default_gist_model(model))
    dots = model.encode(["..."])[0].ids
    assert len(dots) == 1, "'...' is one token in this tokenizer"
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="gist-harm-"))
    try:
        for package in args.packages:
            repo, tasks = needle_repository(package, work, model, gist_model, args.needles,
                                            args.seed)
            with Store.open(db_path(repo), read_only=True) as store:
                session = AskSession(store, model, package, AskConfig(focus="dense"))
            setup = Setup(model.embeddings[int(dots[0])],
                          model.embeddings[torch.tensor(opening(session), dtype=torch.long)])
            for task in tasks[:args.nll_tasks]:
                for budget in args.budgets:
                    entries = session.focus(task.question, budget, {})
                    c = context(session, entries)
                    row = {"package": package, "task": task.name, "budget": budget,
                           "context": composition(session, entries), "nll": {}, "probe": {}}
                    for name in ARMS:
                        v = arm_vectors(name, c, setup, rng)
                        row["nll"][name] = nll(session, v, task)
                        if name in PROBED:
                            row["probe"][name] = probe(session, c, v, task)
                    rows.append(row)
                    print(f"{package} {task.name} {budget}: " + " ".join(
                        f"{k} {v:.3f}" for k, v in row["nll"].items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(rows, args, machine(), gist_model.description)


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    from benchmarks.focus_pairs import mean_interval as interval

    return interval(values)


def arm_table(rows: list[dict], budget: int) -> list[str]:
    rs = [r for r in rows if r["budget"] == budget]
    ref = np.array([r["nll"]["gists"] for r in rs])
    none = np.array([r["nll"]["none"] for r in rs])
    counts = {name: np.array([count(r, name) for r in rs]) for name in ARMS}
    lines = [f"## Budget {budget} ({len(rs)} tasks)", "",
             "| arm | gists changed (median per context) | mean NLL | Δ vs `gists` mean [95%] | "
             "worse than `gists` on | Δ vs `none` mean | per deleted gist (nats/token × 1000) |",
             "|---|---|---|---|---|---|---|"]
    for name in ARMS:
        v = np.array([r["nll"][name] for r in rs])
        d = v - ref
        lo, hi = mean_interval(d)
        per = (f"{1000 * -d.mean() / counts[name].mean():.2f}"
               if name.startswith("drop") or name == "none" else "—")
        lines.append(f"| `{name}` | {int(np.median(counts[name]))} | {v.mean():.3f} | "
                     f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | {int((d > 0).sum())}/{len(d)} | "
                     f"{(v - none).mean():+.3f} | {per} |")
    lines += ["", "Without the opening (`bare-`), against the same arm with it: "
              + "; ".join(f"`{name}` {bare_delta(rs, name)}" for name in ("gists", "none"))
              + " nats/token (mean [95%]).", ""]
    return lines


def bare_delta(rs: list[dict], name: str) -> str:
    d = np.array([r["nll"][f"bare-{name}"] - r["nll"][name] for r in rs])
    lo, hi = mean_interval(d)
    return f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


def count(row: dict, name: str) -> int:
    """How many gists the arm changes (or deletes) in this row's context."""
    gists = {int(k): n for k, n in row["context"]["gists"].items()}
    total = sum(gists.values())
    if name.startswith("drop-L"):
        low = int(name[len("drop-L"):].rstrip("+"))
        return sum(n for k, n in gists.items() if (k >= low if name.endswith("+") else k == low))
    if name in QUARTERS:
        return len(np.array_split(np.arange(total), 4)[QUARTERS.index(name)])
    return 0 if name.endswith("gists") else total


def probe_table(rows: list[dict], budget: int) -> list[str]:
    rs = [r for r in rows if r["budget"] == budget]
    layers = len(rs[0]["probe"]["gists"]["to_gists"])
    picks = sorted({0, 1, 2, 4, 8, 12, 16, 20, 24, layers - 1})
    def med(arm: str, key: str, layer: int) -> float:
        return float(np.median([r["probe"][arm][key][layer] for r in rs]))
    lines = [f"### Attention from the target's positions, budget {budget} (medians over "
             "tasks)", "",
             "Sums over positions: the context's gists, its raw tokens, and the first "
             "position (the opening's first token). "
             "*Per gist / per raw token*: the attention one gist position gets over what one "
             "raw context token gets. `dots` puts the token \"...\" at every gist position.",
             "", "| layer | to gists | to raw | to first | per gist / per raw | `dots`: to "
             "dots | `dots`: per dot / per raw |", "|---|---|---|---|---|---|---|"]
    for layer in picks:
        lines.append(f"| {layer} | {med('gists', 'to_gists', layer):.3f} | "
                     f"{med('gists', 'to_raw', layer):.3f} | "
                     f"{med('gists', 'to_first', layer):.3f} | "
                     f"{med('gists', 'gist_over_raw', layer):.2f} | "
                     f"{med('dots', 'to_gists', layer):.3f} | "
                     f"{med('dots', 'gist_over_raw', layer):.2f} |")
    norms = len(rs[0]["probe"]["gists"]["norm_gist"])
    lines += ["", f"### Hidden-state norms at the context's positions, budget {budget} "
              "(medians; layer 0 is the input, the last the final norm's output)", "",
              "| layer | gists | raw context tokens | first position |", "|---|---|---|---|"]
    for layer in sorted({0, 1, 2, 4, 8, 16, 24, norms - 2, norms - 1}):
        lines.append(f"| {layer} | {med('gists', 'norm_gist', layer):.1f} | "
                     f"{med('gists', 'norm_raw', layer):.1f} | "
                     f"{med('gists', 'norm_first', layer):.1f} |")
    return [*lines, ""]


def write(rows: list[dict], args: argparse.Namespace, machine_text: str, gists: str) -> None:
    from benchmarks.plotting import pyplot

    budgets = sorted({r["budget"] for r in rows})
    lines = [
        "# Gist harm: what about a context of gists does the damage?", "",
        f"Machine: {machine_text}. Produced by `python benchmarks/gist_harm.py --packages "
        f"{' '.join(args.packages)} --needles {args.needles} --nll-tasks {args.nll_tasks} "
        f"--budgets {' '.join(map(str, args.budgets))}"
        + (f" --gistnet {args.gistnet}" if args.gistnet is not None else "")
        + (f" --name {args.name}" if args.name != "gist_harm" else "") + "`.",
        f"Gists: {gists}. Focus: dense (it does not read gists, so every arm holds the same "
        "raw code). Target NLL in nats/token of the needle function's signature and first "
        "lines after the context and the question (lower is better), as "
        "`focus_quality.py` scores it; Δ = arm − `gists` on the same task.", "",
    ]
    for b in budgets:
        lines += arm_table(rows, b) + probe_table(rows, b)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    (RESULTS / f"{args.name}.json").write_text(
        "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    plot(pyplot(), rows, budgets[0], RESULTS / f"{args.name}.png")
    print("\n".join(lines))


def plot(plt: object, rows: list[dict], budget: int, path: Path) -> None:
    rs = [r for r in rows if r["budget"] == budget]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ref = np.array([r["nll"]["gists"] for r in rs])
    deltas = [np.array([r["nll"][n] for r in rs]) - ref for n in ARMS[1:]]
    a.barh(ARMS[1:], [d.mean() for d in deltas], color="tab:blue")
    a.axvline(0, color="black", lw=0.8)
    a.invert_yaxis()
    a.set_xlabel("Δ target NLL vs all gists (nats/token)")
    a.set_title(f"What changes the harm (budget {budget}, {len(rs)} tasks)")
    layers = np.arange(len(rs[0]["probe"]["gists"]["gist_over_raw"]))
    for arm, label in (("gists", "gist"), ("dots", "\"...\"")):
        b.plot(layers, np.median([r["probe"][arm]["gist_over_raw"] for r in rs], axis=0),
               label=f"per {label} / per raw token")
    b.axhline(1, color="black", lw=0.8)
    b.set_yscale("log")
    b.set_xlabel("layer")
    b.set_title("Attention from the target, per position")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
