"""Rich renderings of reports, and their JSON forms. Nothing here computes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from mcagent.agent import SessionResult, Step
from mcagent.review import ReviewResult
from megacontext.indexer import Changes, IndexReport


def index_json(report: IndexReport) -> dict[str, object]:
    data = asdict(report)
    data["tokens_per_second"] = round(report.tokens_per_second, 1)
    data["seconds"] = round(report.seconds, 3)
    data["nodes_by_level"] = {str(k): v for k, v in report.nodes_by_level.items()}
    return data


def index_report(console: Console, report: IndexReport) -> None:
    console.print(
        f"[bold]Indexed[/] {report.root}: {report.new} new, {report.changed} changed, "
        f"{report.deleted} deleted, {report.unchanged} unchanged files in "
        f"{report.seconds:.1f} s ({report.tokens_processed:,} tokens processed, "
        f"{report.tokens_per_second:,.0f} tokens/s, {report.gists_computed:,} gists computed)"
    )
    _summary_tables(console, report.files, report.tokens, report.files_by_language,
                    report.skipped, report.nodes_by_level)


def status_report(console: Console, status: dict) -> None:
    s = status["index"]
    console.print(f"[bold]Index[/] {status['database']}")
    console.print(f"  base model  {status['base_model']}")
    gist = status["gist_model_description"].replace(f", base {status['base_model']})", ")")
    console.print(f"  gist model  {gist}  [dim]({status['gist_model']})[/]")
    console.print(f"  focus       {status['focus']}")
    if status["last_run"]:
        run = status["last_run"]
        finished = str(run["finished_at"]).split(".")[0]  # to the second
        console.print(f"  last index  {finished} ({run['seconds']:.1f} s)")
    _summary_tables(console, s["files"], s["tokens"], s["files_by_language"], s["skipped"],
                    s["nodes_by_level"])
    changes = status["changes"]
    total = sum(len(v) for v in changes.values())
    if total == 0:
        console.print("[green]Up to date[/]: no file changed since the last index.")
        return
    console.print(f"[yellow]{total} file(s) changed since the last index[/] "
                  "(run `mcagent index`):")
    for label, paths in changes.items():
        for p in paths[:10]:
            console.print(f"  {label:9} {p}")
        if len(paths) > 10:
            console.print(f"  … and {len(paths) - 10} more {label}")


def verify_report(console: Console, status: dict) -> None:
    """`status --verify`: the index's own consistency, after the usual report."""
    problems = status.get("problems")
    if problems is None:
        return
    changed = sum(len(v) for v in status["changes"].values())
    if not problems and not changed:
        console.print("[green]Verified[/]: every file's content hash matches the index, and "
                      "the index is consistent.")
        return
    for line in problems:
        console.print(f"[red]inconsistent[/] {line}")
    if changed:
        console.print(f"[red]{changed} file(s) differ from the index[/] (listed above)")


def changes_json(changes: Changes) -> dict[str, list[str]]:
    return {"new": changes.new, "modified": changes.modified, "deleted": changes.deleted}


def _summary_tables(console: Console, files: int, tokens: int, by_language: dict,
                    skipped: dict, levels: dict) -> None:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("language")
    table.add_column("files", justify="right")
    for language, n in by_language.items():
        table.add_row(language or "?", f"{n:,}")
    table.add_row("[bold]total[/]", f"[bold]{files:,}[/]")
    console.print(table)
    if skipped:
        console.print("skipped: " + ", ".join(f"{n:,} {r}" for r, n in skipped.items()))
    console.print(f"tokens: {tokens:,}   nodes by level: "
                  + ", ".join(f"L{k} {v:,}" for k, v in sorted(levels.items(), key=lambda x:
                                                               int(x[0]))))


def agent_step(console: Console, step: Step) -> None:
    """One line per step as the session runs."""
    r = step.record
    a = step.action
    if a is None:
        what = f"[red]invalid[/] {escape((step.observation or '')[:120])}"
    elif a["tool"] == "search":
        what = f"search {escape(repr(a['query']))} → {_first_line(step.observation)}"
    elif a["tool"] == "read":
        what = f"read {escape(a['path'])}:{a['start']}-{a['end']}"
    elif a["tool"] == "list":
        what = f"list {escape(a['dir'] or '.')}"
    else:
        what = "answer"
    t, tel = r.get("timings", {}), r.get("telemetry", {})
    seconds = sum(v for v in t.values() if isinstance(v, float))
    console.print(f"[bold]{r.get('step', '?'):>3}[/] {what}  [dim]({seconds:.1f} s; "
                  f"{_levels(tel.get('entries', {}))}; swap {tel.get('swap_rate', 0):.0%})[/]",
                  highlight=False)


def agent_report(console: Console, result: SessionResult, show_focus: bool) -> None:
    console.print()
    if result.answer is None:
        console.print(f"[yellow]No answer[/] ({result.status}).")
    else:
        console.print(result.answer, highlight=False, markup=False)
        console.print()
        console.print("[bold]Citations[/] (checked against the index):")
        for c in result.citations:
            console.print(f"  {c}", highlight=False)
        if not result.citations:
            console.print("  [dim](none)[/]")
    for note in result.dropped:
        console.print(f"[yellow]dropped citation:[/] {escape(note)}", highlight=False)
    actions = [s for s in result.steps if s.kind == "action"]
    if show_focus and actions:
        console.print(_files_tree(actions[-1].record.get("files", {})))
    console.print(f"[dim]session {result.session_id}: {len(actions)} steps, {result.status}; "
                  f"`mcagent show {result.session_id}` replays it[/]", highlight=False)


def agent_json(result: SessionResult) -> dict[str, object]:
    return {
        "session": result.session_id, "status": result.status, "answer": result.answer,
        "citations": [{"path": c.path, "start": c.start, "end": c.end}
                      for c in result.citations],
        "dropped_citations": result.dropped,
        "warnings": result.warnings,
        "transcript": [_turn_json(s.kind, s.text, s.observation, s.action, s.record)
                       for s in result.steps],
    }


def session_json(info: dict, turns: list[dict]) -> dict[str, object]:
    answer = json.loads(info["answer"]) if info.get("answer") else None
    return {
        "session": info["session_id"], "question": info["question"], "status": info["status"],
        "started_at": str(info["started_at"]), "settings": json.loads(info["settings"]),
        "answer": answer,
        "transcript": [_turn_json(t["kind"], t["text"], t["observation"],
                                  json.loads(t["record"]).get("action"), json.loads(t["record"]))
                       for t in turns],
    }


def show_session(console: Console, info: dict, turns: list[dict]) -> None:
    """A session replayed turn by turn, with the focus of each step."""
    started = f"{info['started_at']:%Y-%m-%d %H:%M}"
    console.print(f"[bold]Session {info['session_id']}[/] [dim]({started}, {info['status']})[/]",
                  highlight=False)
    for t in turns:
        record = json.loads(t["record"])
        if t["kind"] == "question":
            console.print(f"\n[bold cyan]{escape(t['text'].strip())}[/]", highlight=False)
            continue
        action = record.get("action")
        tel = record.get("telemetry", {})
        console.print(f"\n[bold]step {record.get('step')}[/] "
                      + (escape(json.dumps(action)) if action else "[red]invalid action[/]"),
                      highlight=False)
        tail = tel.get("tail", {})
        console.print(
            f"  [dim]focus: {_levels(tel.get('entries', {}))}; expands {tel.get('expands', 0)}, "
            f"collapses {tel.get('collapses', 0)}, swap {tel.get('swap_rate', 0):.0%}, "
            f"residency {tel.get('residency', 0):.1f} steps; tail {tail.get('raw_turns', 0)} raw "
            f"+ {tail.get('gisted_turns', 0)} gisted turns[/]", highlight=False)
        for path, levels in list(record.get("files", {}).items())[:6]:
            console.print(f"    [green]{escape(path)}[/] [dim]{_levels(levels)}[/]",
                          highlight=False)
        body = (t["observation"] or "").splitlines()
        for line in body[:8]:
            console.print(f"  │ {line}", highlight=False, markup=False)
        if len(body) > 8:
            console.print(f"  │ … {len(body) - 8} more lines", highlight=False, markup=False)
    if info.get("answer"):
        answer = json.loads(info["answer"])
        console.print(f"\n[bold]Answer[/]\n{escape(answer['text'] or '')}", highlight=False)
        for c in answer["citations"]:
            console.print(f"  {c}", highlight=False)


def sessions_table(console: Console, rows: list[dict]) -> None:
    table = Table("session", "started", "steps", "status", "question", box=None)
    for r in rows:
        table.add_row(str(r["session_id"]), f"{r['started_at']:%Y-%m-%d %H:%M}", str(r["steps"]),
                      r["status"], escape(str(r["question"])[:70]))
    console.print(table)


def _turn_json(kind: str, text: str, observation: str | None, action: dict | None,
               record: dict) -> dict[str, object]:
    if kind == "question":
        return {"kind": kind, "text": text.strip()}
    return {"kind": kind, "step": record.get("step"), "action": action,
            "valid": action is not None, "observation": observation,
            **{k: record.get(k) for k in ("telemetry", "tokens", "focus", "files")},
            "timings": {k: round(v, 4) for k, v in record.get("timings", {}).items()}}


def _levels(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {k}" for k, n in counts.items())


def _first_line(text: str | None) -> str:
    return escape((text or "").split("\n", 1)[0][:80])


def _files_tree(files: dict[str, dict[str, int]]) -> Tree:
    root = Tree("[bold]focus[/] (files held at full resolution, with their other levels)")
    for path, levels in files.items():
        root.add(f"{escape(path)}  [dim]{_levels(levels)}[/]")
    return root


def train_line(step: int, total: int, m: dict[str, float]) -> str:
    """One line per training step, held-out recovery when the step ran an evaluation; a line
    without a step's metrics is the check of where a run starts from."""
    if "loss" not in m:
        line = f"step {step}/{total}  start"
    else:
        kind = f"level {int(m['level'])}" if m["level"] else "context"
        line = (f"step {step}/{total}  {kind}  loss {m['loss']:.3f}  "
                f"kl {m['kl']:.3f}  nll gist {m['nll_gist']:.3f} raw {m['nll_raw']:.3f}")
    if "l1_recovery" in m:
        line += (f"  | held-out recovery L1 {m['l1_recovery']:.3f} L2 {m['l2_recovery']:.3f}"
                 f"  (from content: L1 {m.get('l1_content', float('nan')):+.3f} "
                 f"L2 {m.get('l2_content', float('nan')):+.3f})")
    if "ctx_recovery" in m:
        line += f"  in context {m['ctx_recovery']:.3f}"
    return line


@dataclass
class WatchStats:
    """What `watch` shows on its live line."""

    root: str
    updates: int = 0
    files: int = 0
    last: str = "no update yet"

    def record(self, event: dict) -> None:
        self.updates += 1
        self.files += event["paths"]
        self.last = (f"last update {event['latency_seconds'] * 1e3:.0f} ms after the change "
                     f"({event['paths']} file(s))")


@contextlib.contextmanager
def watch_live(console: Console, stats: WatchStats, pending: Callable[[], int],
               enabled: bool) -> Iterator[None]:
    """A live status line: queued and processed files, the last update's latency."""

    class Line:
        def __rich__(self) -> Text:
            return Text.from_markup(
                f"[bold]watching[/] {stats.root} · {pending()} queued · {stats.files} "
                f"processed in {stats.updates} update(s) · {stats.last} · Ctrl-C stops")

    if not enabled:
        yield
        return
    with Live(Line(), console=console, refresh_per_second=4, transient=True):
        yield


def watch_event(console: Console, event: dict) -> None:
    kind = event["event"]
    if kind == "ready":
        c = event["caught_up"]
        console.print(f"[bold]Watching[/] {event['root']} ({event['files']} files; caught up: "
                      f"{c['new']} new, {c['changed']} changed, {c['deleted']} deleted in "
                      f"{event['seconds']:.1f} s)")
    elif kind == "update":
        console.print(f"updated {event['paths']} path(s): {event['new']} new, "
                      f"{event['changed']} changed, {event['deleted']} deleted "
                      f"in {event['update_seconds'] * 1e3:.0f} ms "
                      f"({event['latency_seconds'] * 1e3:.0f} ms after the change)",
                      highlight=False)
    elif kind == "error":
        console.print(f"[red]error[/] ({event['paths']} path(s) not updated; the next change "
                      f"or restart retries): {event['message']}", highlight=False)
    elif kind == "stopped":
        console.print(f"Stopped watching after {event['updates']} update(s).")


# ---------------------------------------------------------------- review

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def review_report(console: Console, result: ReviewResult) -> None:
    console.print(f"[bold]{escape(result.summary())}[/]")
    for note in result.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    for f in result.findings:
        where = "" if f in result.inline else " [dim](outside the diff)[/]"
        console.print(f"  [{_SEVERITY_STYLE[f.severity]}]{f.severity:7}[/] "
                      f"{escape(f.path)}:{f.line}{where}  {escape(f.message)}")
        if f.suggestion:
            console.print(f"           [green]suggest:[/] {escape(f.suggestion)}")
    for d in result.dropped:
        console.print(f"[dim]dropped: {escape(d)}[/]")


def review_json(result: ReviewResult) -> dict[str, object]:
    return {
        "summary": result.summary(),
        "files": [{"path": f.path, "status": f.status, "hunks": len(f.hunks)}
                  for f in result.files],
        "findings": [{**asdict(f), "in_diff": f in result.inline} for f in result.findings],
        "dropped": result.dropped, "notes": result.notes, "tokens": result.tokens,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def github_annotations(result: ReviewResult) -> list[str]:
    """GitHub Actions workflow commands, one per finding (shown on the pull request's
    files), then the summary as a notice."""
    lines = [f"::{_GITHUB_LEVEL[f.severity]} file={_gh_property(f.path)},line={f.line},"
             f"title=mcagent {f.severity}::{_gh_data(f.message)}" for f in result.findings]
    return [*lines, f"::notice title=mcagent review::{_gh_data(result.summary())}"]


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")
