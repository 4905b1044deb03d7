"""Rich renderings of reports, and their JSON forms. Nothing here computes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from megacontext.ask import AskResult
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
    console.print(f"  gist model  {status['gist_model_description']}  "
                  f"[dim]({status['gist_model']})[/]")
    if status["last_run"]:
        run = status["last_run"]
        console.print(f"  last index  {run['finished_at']} ({run['seconds']:.1f} s)")
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


def ask_json(result: AskResult) -> dict[str, object]:
    return {
        "answer": result.answer,
        "citations": [{"path": s.path, "start": s.line_start, "end": s.line_end,
                       "symbol": s.symbol} for s in result.focus],
        "focus": {path: {("raw" if lv == 0 else f"L{lv}"): n for lv, n in levels.items()}
                  for path, levels in result.levels_by_file.items()},
        "tokens": result.tokens,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "warnings": result.warnings,
    }


def ask_report(console: Console, result: AskResult, show_focus: bool) -> None:
    """After the streamed answer: the spans held at full resolution, then the numbers."""
    console.print()
    console.print("[bold]Focus[/] (held at full resolution):")
    for span in result.focus[:40] or []:
        console.print(f"  {span}  [dim]{span.symbol}[/]", highlight=False)
    if not result.focus:
        console.print("  [dim](nothing: every part of the repository is held as gists)[/]")
    t, tk = result.timings, result.tokens
    console.print(
        f"[dim]{tk['context']:,} positions of {tk['budget']:,} for "
        f"{tk['repository_tokens']:,} repository tokens ({tk['raw_tokens']:,} raw tokens, "
        f"{tk['gists']:,} gists); score {t['score'] * 1000:.0f} ms, allocate "
        f"{t['allocate'] * 1000:.0f} ms, assemble {t['assemble'] * 1000:.0f} ms, prefill "
        f"{t['prefill']:.1f} s, decode {t['decode_tokens_per_s']:.1f} tokens/s[/]")
    if show_focus:
        console.print(_focus_tree(result))


def _focus_tree(result: AskResult) -> Tree:
    root = Tree("[bold]repository[/] (level each file is held at; raw = full text)")
    for path, levels in result.levels_by_file.items():
        shown = ", ".join(("raw" if lv == 0 else f"L{lv}") + (f"×{n}" if n > 1 else "")
                          for lv, n in sorted(levels.items()))
        root.add(f"{path}  [dim]{shown}[/]")
    return root


def train_line(step: int, total: int, m: dict[str, float]) -> str:
    """One line per training step; held-out recovery when the step ran an evaluation."""
    line = (f"step {step}/{total}  level {int(m['level'])}  loss {m['loss']:.3f}  "
            f"kl {m['kl']:.3f}  nll gist {m['nll_gist']:.3f} raw {m['nll_raw']:.3f}")
    if "l1_recovery" in m:
        line += f"  | held-out recovery L1 {m['l1_recovery']:.3f} L2 {m['l2_recovery']:.3f}"
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
