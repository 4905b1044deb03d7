"""Benchmark: does the focus hold the function a question is about at full resolution?

    python benchmarks/focus_quality.py [--packages click rich] [--needles 40] [--nll-tasks 8]
        [--scorers …] [--gistnet W.safetensors] [--gistnet-upper W.safetensors]
        [--drop-gists-from LEVEL] [--name focus_quality]

Needle tasks from third-party packages installed here (never trained on): the question is a
function's docstring summary; the repository is the whole package with the docstrings of
the picked functions removed (all of them at once, so one index serves every task). For
budgets 1024, 2048 and 4096 and every scorer (lensnet, bm25, dense, repomap), in one run:

- **gold recall**: the share of tasks whose whole needle function (every block of it) is in
  the working context as raw tokens;
- **target NLL**: nats per token of the function's signature and first lines, predicted by
  the frozen base model after the working context and the question (on the first
  `--nll-tasks` tasks of each package: each costs a forward pass over the whole budget);
- **refocus time**: score + allocate, median per task; and the session's load time (for
  `lensnet` and `dense` it includes embedding every block with all-MiniLM-L6-v2; both keep
  the vectors in one cache beside the index, so the scorer that runs first pays for it).

The gists are the shipped GistNet's unless `--gistnet` names other weights (LensNet stays
the shipped one); `--gistnet-upper` takes the gists of levels ≥ 3 (files, folders: the
levels GistNet is not trained on) from other weights, to tell where gists help or hurt.
`--drop-gists-from L` deletes the gists of levels ≥ L from the working context before the
target NLL (1: every gist; raw blocks stay where the focus put them): the deleted-gists
baseline that a context of gists has to beat.

The target NLL reads the working context where `mcagent ask` puts it: after the chat
template's opening (system prompt, the user turn's first line). `--no-opening` starts the
sequence with the context itself, as runs before `gist_harm.md` did; then the model's first
position is often a gist, which no training example has, and gists look much worse than
they are in `ask` (`gist_harm.md`).
Writes benchmarks/results/NAME.md, NAME.png and NAME.json (every task's row, for paired
comparisons between runs, `focus_pairs.py`); NAME is `focus_quality` unless `--name` says.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from megacontext.gist import GistModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SCORERS = ("lensnet", "bm25", "dense", "repomap")
BUDGETS = (1024, 2048, 4096)


def main() -> None:
    import platformdirs

    from benchmarks.index_speed import machine
    from benchmarks.plotting import pyplot
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.ask import AskConfig, AskSession
    from megacontext.gistnet import default_gist_model, load_gistnet
    from megacontext.store import Store, db_path
    from megacontext.train.lensnet import gold_blocks

    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", nargs="+", default=["click", "rich"])
    ap.add_argument("--needles", type=int, default=40)
    ap.add_argument("--nll-tasks", type=int, default=8)
    ap.add_argument("--scorers", nargs="+", default=list(SCORERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gistnet", type=Path, help="GistNet weights (default: the shipped ones)")
    ap.add_argument("--gistnet-upper", type=Path, help="GistNet weights for levels >= 3")
    ap.add_argument("--drop-gists-from", type=int, metavar="LEVEL",
                    help="delete gists of this level and above before the target NLL")
    ap.add_argument("--no-opening", action="store_true",
                    help="score the target without the chat template's opening before the "
                    "context (the layout of runs before gist_harm.md)")
    ap.add_argument("--name", default="focus_quality", help="results file stem")
    args = ap.parse_args()
    for weights in (args.gistnet, args.gistnet_upper):
        if weights is not None and not weights.is_file():
            sys.exit(f"error: no GistNet weights at {weights}")
    if args.drop_gists_from is not None and args.drop_gists_from < 1:
        sys.exit("error: --drop-gists-from takes a level of 1 or more")
    pyplot()  # before the long run, not after it
    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent")),
                                        dtype="bfloat16"))
    gist_model = (load_gistnet(args.gistnet)[0] if args.gistnet is not None
                  else default_gist_model(model))
    if args.gistnet_upper is not None:
        gist_model = SplitByLevel(gist_model, load_gistnet(args.gistnet_upper)[0])
    work = Path(tempfile.mkdtemp(prefix="focus-quality-"))
    rows: list[dict] = []
    sizes = {}
    try:
        for package in args.packages:
            repo, tasks = needle_repository(package, work, model, gist_model, args.needles,
                                            args.seed)
            for scorer in args.scorers:
                with Store.open(db_path(repo), read_only=True) as store:
                    t = time.perf_counter()
                    session = AskSession(store, model, package, AskConfig(focus=scorer))
                    load = time.perf_counter() - t
                sizes[package] = (len(session.repo.paths), int(sum(
                    len(v) for v in session.file_tokens.values())))
                front = [] if args.no_opening else opening(session)
                for n, task in enumerate(tasks):
                    gold = set(gold_blocks(session, task).tolist())
                    for budget in BUDGETS:
                        timings: dict[str, float] = {}
                        entries = session.focus(task.question, budget, timings)
                        raw = {e.node for e in entries if e.raw}
                        row = {"package": package, "scorer": scorer, "budget": budget,
                               "task": task.name, "recall": bool(gold) and gold <= raw,
                               "partial": len(gold & raw) / max(len(gold), 1),
                               "seconds": timings["score"] + timings["allocate"],
                               "load": load, "nll": None, "opening": bool(front),
                               "context": composition(session, entries)}
                        if n < args.nll_tasks:
                            row["nll"] = target_nll(session, kept(session, entries,
                                                                  args.drop_gists_from), task,
                                                    front)
                        rows.append(row)
                done = [r for r in rows if r["package"] == package and r["scorer"] == scorer]
                print(f"{package} {scorer}: recall " + ", ".join(
                    f"{b}: {np.mean([r['recall'] for r in done if r['budget'] == b]):.2f}"
                    for b in BUDGETS), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gists = gist_model.description
    if args.drop_gists_from is not None:
        gists = (f"none (every gist deleted before the target NLL; {gists} for the focus)"
                 if args.drop_gists_from == 1 else
                 f"{gists}, gists of levels ≥ {args.drop_gists_from} deleted before the "
                 "target NLL")
    write(rows, sizes, args, machine(), gists)


def kept(session: object, entries: list, drop_from: int | None) -> list:
    """The entries without the gists of levels ≥ `drop_from` (all of them when None)."""
    if drop_from is None:
        return entries
    level = session.repo.level
    return [e for e in entries if e.raw or int(level[e.node]) < drop_from]


def composition(session: object, entries: list) -> dict:
    """What the working context holds: raw tokens, and gists counted by level."""
    level = session.repo.level
    gists = Counter(int(level[e.node]) for e in entries if not e.raw)
    tokens = int((session.entries(entries).token_ids >= 0).sum())
    return {"tokens": tokens, "gists": {str(k): gists[k] for k in sorted(gists)}}


class SplitByLevel:
    """Diagnostic gist model: levels 1-2 from one, levels >= 3 from another."""

    def __init__(self, lower: GistModel, upper: GistModel) -> None:
        self.lower, self.upper = lower, upper
        self.id = f"split-{lower.id}-{upper.id}"
        self.description = (f"levels 1-2: {lower.description}; levels ≥ 3: "
                            f"{upper.description}")

    def __call__(self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
                 ) -> torch.Tensor:
        out = self.lower(children, mask, level)
        upper = level.to(out.device) >= 3
        if bool(upper.any()):
            out = out.clone()
            out[upper] = self.upper(children[upper], mask[upper], level[upper]).to(out.dtype)
        return out


def opening(session: object) -> list[int]:
    """Token ids of the chat template before the repository context, as `mcagent ask`
    builds them for this repository (the question comes after the context)."""
    from megacontext.ask import SLOT, USER_TEMPLATE
    from prompts import render

    user = USER_TEMPLATE.format(name=session.name, files=len(session.repo.paths), slot=SLOT,
                                question="")
    before, _ = session.model.chat_ids(render("ask_system", repository=session.name), user,
                                       SLOT)
    return before


def target_nll(session: object, entries: list, task: object, front: list[int]) -> float:
    """NLL per token of the task's target after `front` (token ids), the working context and
    the question."""
    model = session.model
    e = session.entries(entries)
    vectors = torch.empty(len(e.token_ids), model.dim)
    tok = torch.from_numpy(e.token_ids)
    is_tok = tok >= 0
    vectors[is_tok] = model.embeddings[tok[is_tok]]
    rows = torch.from_numpy(e.gist_rows[~is_tok.numpy()])
    vectors[~is_tok] = e.gists[rows].float()
    prompt = model.encode([task.prompt()])[0].ids.astype(np.int64)
    target = model.encode([task.target])[0].ids[:40].astype(np.int64)
    tail = model.embeddings[torch.from_numpy(np.concatenate([prompt, target[:-1]]))]
    head = model.embeddings[torch.tensor(front, dtype=torch.long)]
    x = torch.cat([head, vectors, tail])[None]
    H = len(target)
    at = (x.shape[1] - H + torch.arange(H))[None]
    nll = model.target_nll(x, at, torch.from_numpy(target)[None],
                           torch.ones(1, H, dtype=torch.bool))
    return float(nll[0])


def needle_repository(package: str, work: Path, model: object, gist_model: object,
                      needles: int, seed: int) -> tuple[Path, list]:
    """A copy of an installed package under `work` with `needles` functions' docstrings
    removed (the needle tasks), indexed with `gist_model`: (its folder, the tasks)."""
    from megacontext.indexer import IndexConfig, index_repository
    from megacontext.train.tasks import mine_needles

    source = Path(__import__(package).__file__).parent
    repo = work / package
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("__pycache__"))
    texts = {p.relative_to(repo).as_posix(): p.read_text() for p in repo.rglob("*.py")}
    tasks, edited = mine_needles(texts, needles, seed)
    for path, text in edited.items():
        (repo / path).write_text(text)
    index_repository(repo, model, gist_model, IndexConfig())
    return repo, tasks


def write(rows: list[dict], sizes: dict, args: argparse.Namespace, machine_text: str,
          gists: str) -> None:
    from benchmarks.plotting import pyplot

    plt = pyplot()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(  # one task's row per line; first, so a
        "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")  # long run keeps them
    scorers = [s for s in SCORERS if any(r["scorer"] == s for r in rows)]

    def pick(scorer: str, budget: int) -> list[dict]:
        return [r for r in rows if r["scorer"] == scorer and r["budget"] == budget]

    tasks = len(pick(scorers[0], BUDGETS[0]))

    lines = [
        "# Focus quality: is the needle function held at full resolution?", "",
        f"Machine: {machine_text}. Produced by `python benchmarks/focus_quality.py --packages "
        f"{' '.join(args.packages)} --needles {args.needles} --nll-tasks {args.nll_tasks}"
        + (f" --scorers {' '.join(args.scorers)}" if args.scorers != list(SCORERS) else "")
        + (f" --gistnet {args.gistnet}" if args.gistnet is not None else "")
        + (f" --gistnet-upper {args.gistnet_upper}" if args.gistnet_upper is not None
           else "")
        + (f" --drop-gists-from {args.drop_gists_from}" if args.drop_gists_from is not None
           else "")
        + (" --no-opening" if args.no_opening else "")
        + (f" --name {args.name}" if args.name != "focus_quality" else "") + "`.",
        f"Gists: {gists}.",
        "Repositories: " + ", ".join(f"`{p}` ({f} files, {t:,} tokens)" for p, (f, t) in
                                     sizes.items()) + " — third-party, never trained on. "
        f"{tasks} needle tasks: the question is a function's docstring summary; the picked "
        "functions' docstrings are removed from the indexed copy.", "",
        "Gold recall = every block of the needle function is in the working context as raw "
        "tokens. Partial = the share of its blocks that are. Target NLL = nats/token of the "
        "function's signature and first lines after "
        + ("" if args.no_opening else "the chat template's opening (as `mcagent ask` lays it "
           "out), ") + "the working context and the question "
        f"(first {args.nll_tasks} tasks per package; lower is better). Refocus = score + "
        "allocate, median per task. Load = the session's start, summed over the packages "
        f"(scorers run in the order {', '.join(scorers)}; `lensnet` and `dense` share one "
        "cache of block embeddings beside the index, filled by the first of them).", "",
        "| scorer | budget | gold recall | partial | target NLL | refocus ms (median) | "
        "load s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in scorers:
        for b in BUDGETS:
            rs = pick(s, b)
            nll = [r["nll"] for r in rs if r["nll"] is not None]
            nll_text = f"{np.mean(nll):.3f}" if nll else "—"
            load = sum({r["package"]: r["load"] for r in rs}.values())
            lines.append(f"| {s} | {b} | {np.mean([r['recall'] for r in rs]):.1%} | "
                         f"{np.mean([r['partial'] for r in rs]):.2f} | {nll_text} | "
                         f"{1000 * np.median([r['seconds'] for r in rs]):.0f} | {load:.1f} |")
    baselines = [s for s in scorers if s != "lensnet"]
    best = {b: max((np.mean([r["recall"] for r in pick(s, b)]), s) for s in baselines)
            for b in BUDGETS} if baselines else {}
    if "lensnet" in scorers and baselines:
        ln = np.mean([r["recall"] for r in pick("lensnet", 2048)])
        gap = ln - best[2048][0]
        lines += ["", f"At budget 2048: lensnet {ln:.1%} against the best baseline "
                  f"({best[2048][1]}) {best[2048][0]:.1%}: {100 * gap:+.1f} points (target: "
                  f"+5). {'Met.' if gap >= 0.05 else 'Not met.'}"]
    lines.append("")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in scorers:
        ax.plot(BUDGETS, [np.mean([r["recall"] for r in pick(s, b)]) for b in BUDGETS],
                marker="o", label=s)
    ax.set_xscale("log", base=2)
    ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
    ax.set_xlabel("budget (positions)")
    ax.set_ylabel("gold recall")
    ax.set_title(f"Needle function fully raw ({tasks} tasks, {', '.join(sizes)})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
