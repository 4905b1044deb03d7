"""Benchmark: does an agent session find and cite the function a question is about?

    python benchmarks/agent_needle.py [--tasks 8] [--budget 2048] [--max-steps 4]

Needle tasks from a third-party package installed here (click; never trained on): the
question is a function's docstring summary, and the repository is the whole package with
that docstring removed (so the answer cannot be found by matching the question's words
against the docstring itself). Each task runs one real agent session with the default
model on this machine (`mcagent ask`'s code path, constrained decoding, refocus before every
step) and is scored by its validated citations:

- **hit**: a cited span overlaps the gold function's lines;
- **contains**: a cited span contains the whole function (the issue's strict criterion).

Scorers: `--focus lensnet` and `--focus bm25`, same tasks, same model, same budget.
Writes benchmarks/results/agent_needle.md.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PACKAGE = "click"


def main() -> None:
    import platformdirs

    from benchmarks.index_speed import machine
    from mcagent.agent import AgentConfig
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.ask import AskConfig
    from megacontext.gistnet import default_gist_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorers", nargs="+", default=["lensnet", "bm25"])
    args = ap.parse_args()
    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent"))))
    gist_model = default_gist_model(model)
    source = Path(__import__(PACKAGE).__file__).parent
    work = Path(tempfile.mkdtemp(prefix="agent-needle-"))
    repo = work / PACKAGE
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("__pycache__"))
    tasks = needles(repo, args.tasks, args.seed)
    rows = []
    try:
        for scorer in args.scorers:
            config = AgentConfig(max_steps=args.max_steps,
                                 ask=AskConfig(budget=args.budget, focus=scorer))
            for n, task in enumerate(tasks, 1):
                row = session_row(repo, task, config, model, gist_model)
                rows.append({"scorer": scorer, **row})
                print(f"[{scorer} {n}/{len(tasks)}] {task['name']}: hit {row['hit']} contains "
                      f"{row['contains']} {row['steps']} steps {row['seconds']:.0f} s "
                      f"{row['tools']} {row['citations']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(rows, args, machine())


def session_row(repo: Path, task: dict, config: object, model: object, gist_model: object
                ) -> dict:
    """One agent session on one task, with the task's docstring removed while it runs."""
    import prompts
    from mcagent.agent import Agent, model_policy, run
    from mcagent.tools import Workspace
    from megacontext.ask import AskSession
    from megacontext.indexer import IndexConfig, index_repository
    from megacontext.store import Store, db_path

    path = repo / task["path"]
    original = path.read_text()
    path.write_text(task["text"])  # the docstring removed
    try:
        index_repository(repo, model, gist_model, IndexConfig())
        started = time.perf_counter()
        with Store.open(db_path(repo), read_only=True) as store:
            session = AskSession(store, model, repo.name, config.ask)
        agent = Agent(session, Workspace(repo, session.repo), gist_model,
                      prompts.render("agent_system", repository=repo.name), config)
        agent.add_question(task["question"])
        result = run(agent, model_policy(config.action_tokens), lambda s: None)
        seconds = time.perf_counter() - started
    finally:
        path.write_text(original)
    lo, hi = task["lines"]
    cited = [c for c in result.citations if c.path == task["path"]]
    return {
        "task": task, "hit": any(c.start <= hi and c.end >= lo for c in cited),
        "contains": any(c.start <= lo and c.end >= hi for c in cited),
        "steps": sum(1 for s in result.steps if s.kind == "action"), "seconds": seconds,
        "status": result.status, "citations": [str(c) for c in result.citations],
        "tools": [s.action["tool"] if s.action else
                  f"invalid ({(s.observation or '').split(':')[0].split(' ')[0]})"
                  for s in result.steps if s.kind == "action"],
    }


def needles(repo: Path, count: int, seed: int) -> list[dict]:
    """Functions with a docstring whose summary reads as a question, picked with a seed."""
    found = []
    for path in sorted(repo.rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            body = node.body
            if (not doc or len(body) < 3 or node.name.startswith("__")
                    or len(doc.split("\n", 1)[0].split()) < 5):
                continue
            found.append((path, node))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(found), size=min(count, len(found)), replace=False)
    tasks = []
    for i in sorted(picked.tolist()):
        path, node = found[i]
        lines = path.read_text().splitlines(keepends=True)
        doc_node = node.body[0]
        summary = ast.get_docstring(node).split("\n", 1)[0].strip()
        # Remove the docstring's lines; the function's span shrinks by as many.
        removed = doc_node.end_lineno - doc_node.lineno + 1
        kept = lines[: doc_node.lineno - 1] + lines[doc_node.end_lineno :]
        tasks.append({"path": path.relative_to(repo).as_posix(), "name": node.name,
                      "question": f"Which function does this: {summary}",
                      "text": "".join(kept),
                      "lines": (node.lineno, node.end_lineno - removed)})
    return tasks


def write(rows: list[dict], args: argparse.Namespace, machine_text: str) -> None:
    lines = [
        "# Agent needle: does a session cite the function the question is about?", "",
        f"Machine: {machine_text}. Produced by `python benchmarks/agent_needle.py --tasks "
        f"{args.tasks} --budget {args.budget} --max-steps {args.max_steps} --scorers "
        f"{' '.join(args.scorers)}`; default model (SmolLM2-135M-Instruct) on the CPU, "
        "greedy, actions under the JSON schema.",
        f"Tasks: functions of `{PACKAGE}` (third-party, never trained on) with a docstring; "
        "the question is the docstring's summary, the repository is the package with that "
        "docstring removed.", "",
        "| focus | sessions | hit (cites a span overlapping the function) | contains (cites "
        "the whole function) | mean steps | median seconds / session |",
        "|---|---|---|---|---|---|",
    ]
    for scorer in args.scorers:
        rs = [r for r in rows if r["scorer"] == scorer]
        n, hits, contains = len(rs), sum(r["hit"] for r in rs), sum(r["contains"] for r in rs)
        lines.append(
            f"| {scorer} | {n} | {hits}/{n} ({hits / max(n, 1):.0%}) | {contains}/{n} "
            f"({contains / max(n, 1):.0%}) | {np.mean([r['steps'] for r in rs]):.1f} | "
            f"{np.median([r['seconds'] for r in rs]):.0f} |")
    lines += ["", "Per session (tools in order; citations as validated):", "",
              "| focus | function | file | gold lines | status | tools | citations | hit |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["task"]
        lines.append(f"| {r['scorer']} | `{t['name']}` | {t['path']} | {t['lines'][0]}-"
                     f"{t['lines'][1]} | {r['status']} | {' → '.join(r['tools'])} | "
                     f"{', '.join(r['citations']) or '—'} | {'yes' if r['hit'] else 'no'} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agent_needle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
