"""`mcagent` commands: thin typer wrappers that parse, call the library and render."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import prompts
from ingest.errors import IngestError
from mcagent import render
from mcagent.config import ConfigError, Settings, load_settings
from megacontext.adapter import BaseModel, load_base_model
from megacontext.ask import AskConfig, AskSession
from megacontext.errors import MegaContextError
from megacontext.gistnet import default_gist_model
from megacontext.indexer import index_repository, pending_changes
from megacontext.store import Store, db_path

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="A coding agent whose memory of a repository is a MegaContext.")
out = Console()
err = Console(stderr=True)

PathArg = Annotated[Path, typer.Argument(help="Repository root (default: current folder).")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Base model: a local Hugging Face folder or hub id (default: SmolLM2).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON report on stdout.")]


@app.command()
def index(
    path: PathArg = Path("."),
    model: ModelOpt = None,
    max_file_bytes: Annotated[int | None, typer.Option(
        help="Skip files larger than this many bytes (default 1,000,000).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Index the repository into .mcagent/index.duckdb (incrementally)."""
    with _user_errors():
        settings = _settings(path, model=model, max_file_bytes=max_file_bytes)
        base = _load_model(settings)
        with _progress() as progress:
            report = index_repository(settings.root, base, default_gist_model(base),
                                      settings.index, progress)
    if report.created:
        err.print("Created .mcagent/ for the index; it ignores itself in git "
                  "(.mcagent/.gitignore).")
    if as_json:
        print(json.dumps(render.index_json(report), indent=2))
    else:
        render.index_report(out, report)


@app.command()
def status(path: PathArg = Path("."), as_json: JsonOpt = False) -> None:
    """Show what the index holds and which files changed since it was built."""
    with _user_errors():
        settings = _settings(path)
        with Store.open(db_path(settings.root), read_only=True) as store:
            meta = store.meta()
            report = {
                "database": str(db_path(settings.root)),
                "base_model": meta.get("base_model", "?"),
                "gist_model": meta.get("gist_model", "?"),
                "gist_model_description": meta.get("gist_model_description",
                                                   _gist_label(meta.get("gist_model", "?"))),
                "index": store.summary(),
                "last_run": store.last_run(),
                "changes": render.changes_json(pending_changes(settings.root, store,
                                                               settings.index)),
            }
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        render.status_report(out, report)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="What to ask about the repository.")],
    repo: Annotated[Path, typer.Option("--repo", "-C", help="Repository root.")] = Path("."),
    budget: Annotated[int | None, typer.Option(
        help="Positions the model sees (default 2048 on CPU, 8192 on GPU).")] = None,
    model: ModelOpt = None,
    focus: Annotated[str, typer.Option(help="Focus scorer: bm25.")] = "bm25",
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    show_focus: Annotated[bool, typer.Option(
        "--show-focus", help="Show every file with the level it is held at.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question over the whole repository, citing what it focused on."""
    if not question.strip():
        raise typer.BadParameter("the question is empty", param_hint="QUESTION")
    if focus != "bm25":
        raise typer.BadParameter(f"unknown scorer {focus!r}; available: bm25", param_hint="--focus")
    with _user_errors():
        settings = _settings(repo, model=model)
        base = _load_model(settings)
        with _progress() as progress:
            index_repository(settings.root, base, default_gist_model(base),
                             settings.index, progress)
        config = AskConfig(budget=budget or (2048 if base.device.type == "cpu" else 8192),
                           max_new_tokens=max_tokens)
        with Store.open(db_path(settings.root), read_only=True) as store:
            session = AskSession(store, base, settings.root.name, config)
            stream = None if as_json else _stream_to(out)
            result = session.ask(question, prompts.render("ask_system",
                                                          repository=settings.root.name),
                                 stream)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if as_json:
        print(json.dumps(render.ask_json(result), indent=2))
        return
    render.ask_report(out, result, show_focus)


train_app = typer.Typer(no_args_is_help=True, help="Train the learned parts for a base model.")
app.add_typer(train_app, name="train")


@train_app.command("gistnet")
def train_gistnet_command(
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Folder for checkpoints and the exported weights.")] = Path("gistnet-run"),
    lib: Annotated[Path | None, typer.Option(
        help="The interpreter's standard library (Lib/); default: this Python's.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps in all.")] = 1500,
    batch: Annotated[int, typer.Option(min=1, help="Level-1 examples per step.")] = 8,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = 8e-4,
    seed: int = 0,
    hours: Annotated[float | None, typer.Option(
        min=0.0, help="Stop (with a checkpoint) after this long; rerun to resume.")] = None,
    model: ModelOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(
        help="The frozen base model's dtype (bfloat16 is fastest on modern CPUs).")] = "bfloat16",
) -> None:
    """Train GistNet on the standard library with the base model frozen (resumable)."""
    import sysconfig

    from megacontext.adapter import ModelConfig
    from megacontext.train.gistnet import TrainConfig, train_gistnet

    with _user_errors():
        lib_dir = lib if lib is not None else Path(sysconfig.get_paths()["stdlib"])
        if not (lib_dir / "os.py").is_file():
            raise ConfigError(f"{lib_dir} is not a Python standard library (no os.py)")
        settings = _settings(Path("."), model=model)
        config = ModelConfig(name=settings.model.name, cache_dir=settings.model.cache_dir,
                             device=device, dtype=dtype)
        base = _load_model(Settings(settings.root, config, settings.index))
        train = TrainConfig(lib=lib_dir.resolve(), out=out_dir.resolve(), steps=steps,
                            batch=batch, lr=lr, seed=seed)

        def report(step: int, total: int, metrics: dict[str, float]) -> None:
            err.print(render.train_line(step, total, metrics), highlight=False)

        state = train_gistnet(train, base, report,
                              stop_after=hours * 3600 if hours is not None else None)
        out.print(f"GistNet at step {state.step}/{steps}: weights in {out_dir}")


def main() -> None:
    app()


def _stream_to(console: Console) -> Callable[[str], None]:
    def write(text: str) -> None:
        console.file.write(text)
        console.file.flush()

    return write


def _settings(path: Path, **flags: object) -> Settings:
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory: pass the repository's root folder")
    return load_settings(path.resolve(), **flags)


def _load_model(settings: Settings) -> BaseModel:
    with err.status("Loading the base model (the first run converts it once, ≈30 s)…"):
        return load_base_model(settings.model)


def _gist_label(gist_id: str) -> str:
    return f"{gist_id} (baseline, untrained)" if gist_id.startswith("meanpool") else gist_id


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit code 1; Ctrl-C exits 130."""
    try:
        yield
    except (IngestError, MegaContextError, ConfigError) as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted: nothing was written")
        raise typer.Exit(130) from None


@contextlib.contextmanager
def _progress() -> Iterator:
    """A progress bar per stage on stderr; yields the callback the library reports to."""
    bars = Progress(TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True,
                    disable=not sys.stderr.isatty())
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield report
