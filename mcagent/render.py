"""Rich renderings of reports, and their JSON forms. Nothing here computes."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

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
    console.print(f"  gist model  {status['gist_model']}")
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
