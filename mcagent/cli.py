"""`mcagent` commands: thin typer wrappers that parse, call the library and render."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import prompts
from ingest import diff as diffs
from ingest.errors import IngestError
from ingest.watch import Batch
from mcagent import render
from mcagent.agent import Agent, AgentConfig, AgentError, SessionLog, ask_session, model_policy
from mcagent.config import ConfigError, Settings, load_settings
from mcagent.github import Finding, GitHubClient, GitHubConfig, GitHubError, post_review, sanitize
from mcagent.review import SEVERITIES, ReviewConfig, ReviewResult, reviewable
from mcagent.review import review as run_review
from mcagent.tools import Workspace
from megacontext.adapter import BaseModel, load_base_model
from megacontext.ask import AskConfig, AskSession
from megacontext.errors import MegaContextError, ModelNotFound
from megacontext.focus import SCORERS
from megacontext.gist import GistModel
from megacontext.gistnet import default_gist_model, shipped_weights
from megacontext.indexer import index_repository, pending_changes
from megacontext.lensnet import default_focus
from megacontext.store import SessionStore, Store, db_path, sessions_path

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="A coding agent whose memory of a repository is a MegaContext.")
out = Console()
err = Console(stderr=True)

PathArg = Annotated[Path, typer.Argument(help="Repository root (default: current folder).")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Base model: a local Hugging Face folder or hub id (default: SmolLM2).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON report on stdout.")]
WaitOpt = Annotated[float | None, typer.Option(
    "--wait", min=0.0, help="Seconds to wait while another mcagent process (e.g. `watch`) "
    "holds the index (default 60).")]


@app.command()
def index(
    path: PathArg = Path("."),
    model: ModelOpt = None,
    max_file_bytes: Annotated[int | None, typer.Option(
        help="Skip files larger than this many bytes (default 1,000,000).")] = None,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Index the repository into .mcagent/index.duckdb (incrementally)."""
    with _user_errors():
        settings = _settings(path, model=model, max_file_bytes=max_file_bytes, lock_wait=wait)
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
def status(
    path: PathArg = Path("."),
    verify: Annotated[bool, typer.Option(
        "--verify", help="Re-hash every file and check the index's own consistency; exit 1 "
        "on any mismatch.")] = False,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what the index holds and which files changed since it was built."""
    with _user_errors():
        settings = _settings(path, lock_wait=wait)
        with Store.open(db_path(settings.root), read_only=True,
                        wait=settings.index.lock_wait, on_wait=_waiting) as store:
            meta = store.meta()
            report = {
                "database": str(db_path(settings.root)),
                "base_model": meta.get("base_model", "?"),
                "gist_model": meta.get("gist_model", "?"),
                "gist_model_description": meta.get("gist_model_description",
                                                   _gist_label(meta.get("gist_model", "?"))),
                "focus": default_focus(meta.get("base_model", "?"))[1],
                "index": store.summary(),
                "last_run": store.last_run(),
                "changes": render.changes_json(pending_changes(settings.root, store,
                                                               settings.index, rehash=verify)),
            }
            if verify:
                report["problems"] = store.integrity()
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        render.status_report(out, report)
        render.verify_report(out, report)
    if verify and (report["problems"] or any(report["changes"].values())):
        raise typer.Exit(1)


@app.command()
def ask(
    question: Annotated[str | None, typer.Argument(
        help="What to ask about the repository (with --continue: a follow-up).")] = None,
    repo: Annotated[Path, typer.Option("--repo", "-C", help="Repository root.")] = Path("."),
    budget: Annotated[int | None, typer.Option(
        help="Positions the model sees (default 2048 on CPU, 8192 on GPU).")] = None,
    model: ModelOpt = None,
    focus: Annotated[str, typer.Option(
        help="Focus scorer: lensnet (default where its weights ship), bm25, dense or repomap."
    )] = "default",
    max_steps: Annotated[int, typer.Option(
        "--max-steps", min=1, help="Most actions before the session must answer.")] = 6,
    resume: Annotated[bool, typer.Option(
        "--continue", help="Continue the last session (the question is then a follow-up).")
    ] = False,
    show_focus: Annotated[bool, typer.Option(
        "--show-focus", help="Show the files held at full resolution at the last step.")
    ] = False,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question over the whole repository: search, read and answer, citing spans."""
    if question is not None and not question.strip():
        raise typer.BadParameter("the question is empty", param_hint="QUESTION")
    if question is None and not resume:
        raise typer.BadParameter("give a question (or --continue the last session)",
                                 param_hint="QUESTION")
    if focus not in ("default", *SCORERS):
        raise typer.BadParameter(f"unknown scorer {focus!r}; choose one of {', '.join(SCORERS)}",
                                 param_hint="--focus")
    with _user_errors():
        settings = _settings(repo, model=model, lock_wait=wait)
        base = _load_model(settings)
        gist_model = default_gist_model(base)
        with _progress() as progress:
            index_repository(settings.root, base, gist_model, settings.index, progress)
        budget = budget or (2048 if base.device.type == "cpu" else 8192)
        config = AgentConfig(max_steps=max_steps, ask=AskConfig(budget=budget, focus=focus))
        store = Store.open(db_path(settings.root), read_only=True,
                           wait=settings.index.lock_wait, on_wait=_waiting)
        try:
            with err.status("Loading the index…"):
                session = AskSession(store, base, settings.root.name, config.ask)
            if session.gists.preloaded:  # all in memory: let a watcher write while we think
                store.close()
            agent = Agent(session, Workspace(settings.root, session.repo), gist_model,
                          prompts.render("agent_system", repository=settings.root.name),
                          config)
            log = SessionLog(settings.root, settings.index.lock_wait)
            on_step = None if as_json else (lambda step: render.agent_step(out, step))
            result = ask_session(
                agent, log, question.strip() if question else None,
                model_policy(config.action_tokens),
                {"budget": budget, "focus": session.focuser.name, "max_steps": max_steps,
                 "scorer": session.focuser.identity, "model": base.id,
                 "gist_model": getattr(gist_model, "id", "?")},
                resume=resume, on_step=on_step)
        finally:
            store.close()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if as_json:
        print(json.dumps(render.agent_json(result), indent=2))
        return
    render.agent_report(out, result, show_focus)


@app.command()
def show(
    session: Annotated[int | None, typer.Argument(
        help="Session number (default: the last one).")] = None,
    repo: Annotated[Path, typer.Option("--repo", "-C", help="Repository root.")] = Path("."),
    list_all: Annotated[bool, typer.Option("--list", help="List the recent sessions.")] = False,
    wait: WaitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay an agent session step by step, with its focus at each step."""
    with _user_errors():
        settings = _settings(repo, lock_wait=wait)
        if not sessions_path(settings.root).is_file():
            raise AgentError(f"no sessions in {settings.root}: run `mcagent ask` first")
        with SessionStore.open_log(settings.root, settings.index.lock_wait) as log:
            if list_all:
                rows = log.sessions()
            else:
                number = session if session is not None else log.last_session()
                info = log.session(number) if number is not None else None
                if info is None:
                    raise AgentError(f"no session {number}: `mcagent show --list` lists them")
                turns = log.turns(int(number))
    if list_all:
        if as_json:
            print(json.dumps([{**r, "started_at": str(r["started_at"])} for r in rows], indent=2))
        else:
            render.sessions_table(out, rows)
        return
    if as_json:
        print(json.dumps(render.session_json(info, turns), indent=2))
        return
    render.show_session(out, info, turns)


@app.command()
def watch(
    path: PathArg = Path("."),
    model: ModelOpt = None,
    quiet: Annotated[float, typer.Option(
        min=0.0, help="Seconds without file events that close a batch.")] = 0.15,
    wait: WaitOpt = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON event per line on stdout.")] = False,
) -> None:
    """Keep the index current while files change (Ctrl-C or SIGTERM stops; `ask` works
    meanwhile)."""
    import signal

    from ingest.watch import WatchConfig, Watcher

    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: the same as Ctrl-C

    with _user_errors():
        settings = _settings(path, model=model, lock_wait=wait)
        base = _load_model(settings)
        gist_model = default_gist_model(base)
        root = settings.root
        emit = _watch_events(as_json)
        stats = render.WatchStats(root=str(root))
        try:
            with Watcher(root, WatchConfig(quiet=quiet)) as watcher:  # events queue from now
                with _progress() as progress:  # catch up with what changed while unwatched
                    report = index_repository(root, base, gist_model, settings.index,
                                              progress)
                with Store.open(db_path(root), read_only=True,
                                wait=settings.index.lock_wait) as store:
                    known = set(store.files())
                emit({"event": "ready", "root": str(root), "files": report.files,
                      "caught_up": {"new": report.new, "changed": report.changed,
                                    "deleted": report.deleted},
                      "seconds": round(report.seconds, 3)})
                with render.watch_live(err, stats, lambda: watcher.pending,
                                       enabled=not as_json):
                    for batch in watcher.batches():
                        _apply(batch, root, known, base, gist_model, settings, emit, stats)
        except KeyboardInterrupt:
            emit({"event": "stopped", "updates": stats.updates, "files": stats.files})


def _apply(batch: Batch, root: Path, known: set[str], base: BaseModel, gist_model: GistModel,
           settings: Settings, emit: Callable[[dict], None], stats: render.WatchStats) -> None:
    """One watcher batch through the same incremental update as `index`."""
    import time

    from ingest.watch import expand, relevant

    paths = relevant(root, expand(root, batch.paths, known), known, settings.index.walk)
    if not paths:
        return  # ignored files only: the index is not touched
    started = time.monotonic()
    try:
        done = index_repository(root, base, gist_model, settings.index, paths=paths)
    except (IngestError, MegaContextError) as e:
        emit({"event": "error", "paths": len(paths), "message": str(e)})
        return
    finished = time.monotonic()
    known.update(p for p in paths if (root / p).is_file())
    known.difference_update(p for p in paths if not (root / p).exists())
    event = {"event": "update", "paths": len(paths), "new": done.new,
             "changed": done.changed, "deleted": done.deleted,
             "tokens": done.tokens_processed, "gists": done.gists_computed,
             "update_seconds": round(finished - started, 3),
             "latency_seconds": round(finished - batch.since, 3), "sample": paths[:8]}
    stats.record(event)
    emit(event)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch_events(as_json: bool) -> Callable[[dict], None]:
    def emit(event: dict) -> None:
        if as_json:
            print(json.dumps(event), flush=True)
        else:
            render.watch_event(err, event)

    return emit


class ReviewTimeout(BaseException):
    """`mcagent review --timeout` ran out. A BaseException, as KeyboardInterrupt is, so the
    `except Exception` of library code the alarm lands in cannot swallow it."""


@app.command()
def review(
    repo: Annotated[Path, typer.Option("--repo", "-C", help="Repository root.")] = Path("."),
    staged: Annotated[bool, typer.Option(
        "--staged", help="Review what is staged (the default; a pre-commit hook).")] = False,
    diff: Annotated[str | None, typer.Option(
        "--diff", metavar="REF", help="Review the work tree against REF.")] = None,
    base: Annotated[str | None, typer.Option(help="Pull request mode: the base ref.")] = None,
    head: Annotated[str | None, typer.Option(help="Pull request mode: the head ref.")] = None,
    output: Annotated[str, typer.Option(
        "--format", help="rich, json or github (workflow annotations).")] = "rich",
    fail_on: Annotated[str | None, typer.Option(
        "--fail-on", help="Exit 1 when a finding is at least this severe (info, warning, "
        "error); otherwise a review never fails.")] = None,
    timeout: Annotated[float | None, typer.Option(
        min=0.1, help="Seconds before giving up (then exit 0: the tool never blocks).")] = None,
    post: Annotated[bool, typer.Option(
        "--post", help="Post to the pull request (GITHUB_TOKEN, GITHUB_REPOSITORY, "
        "GITHUB_API_URL; --pr or the event file).")] = False,
    pr: Annotated[int | None, typer.Option(help="Pull request number for --post.")] = None,
    budget: Annotated[int | None, typer.Option(help="Positions the model sees.")] = None,
    model: ModelOpt = None,
    focus: Annotated[str, typer.Option(help="Focus scorer.")] = "default",
    as_json: JsonOpt = False,
) -> None:
    """Review a change (staged, against a ref, or a pull request's base...head) and report
    findings; with --post, comment on the pull request."""
    output = "json" if as_json else output
    if output not in ("rich", "json", "github"):
        raise typer.BadParameter("choose rich, json or github", param_hint="--format")
    if fail_on is not None and fail_on not in SEVERITIES:
        raise typer.BadParameter(f"choose one of {', '.join(SEVERITIES)}",
                                 param_hint="--fail-on")
    with _user_errors():
        settings = _settings(repo, model=model)
        files = reviewable(_change(settings.root, staged, diff, base, head))
        if not files:
            err.print("mcagent review: nothing to review")
            return
        result = _timed_review(settings, files, budget, focus, timeout)
        if result is None:
            return
        secrets = _secrets()
        result.findings = [_sanitized(f, secrets) for f in result.findings]
        result.inline = [f for f in result.findings if f.line in next(
            d.commentable() for d in files if d.path == f.path)]
        _emit_review(result, output)
        if post:
            _post_review(settings.root, result, pr, head or "HEAD", secrets)
    worst = result.worst()
    if fail_on is not None and worst is not None and (
            SEVERITIES.index(worst) >= SEVERITIES.index(fail_on)):
        raise typer.Exit(1)


def _change(root: Path, staged: bool, ref: str | None, base: str | None, head: str | None
            ) -> list:
    """The diff the flags name (pre-push hooks name theirs in PRE_COMMIT_FROM/TO_REF)."""
    modes = sum([staged, ref is not None, base is not None or head is not None])
    if modes > 1:
        raise ConfigError("give one of --staged, --diff REF, or --base REF --head REF")
    if (base is None) != (head is None):
        raise ConfigError("pull request mode needs both --base and --head")
    if base is not None:
        return diffs.between(root, base, head)
    if ref is not None:
        return diffs.against(root, ref)
    hook_from, hook_to = os.environ.get("PRE_COMMIT_FROM_REF"), os.environ.get(
        "PRE_COMMIT_TO_REF")
    if not staged and hook_from and hook_to:
        return diffs.between(root, hook_from, hook_to)
    return diffs.staged(root)


def _timed_review(settings: Settings, files: list, budget: int | None, focus: str,
                  timeout: float | None) -> ReviewResult | None:
    """The review, or None (after saying why) when the model cannot load or time runs out:
    the tool itself never blocks a commit."""
    expired = finished = False

    def expire(*_: object) -> None:
        nonlocal expired
        if finished:  # landed between the review's end and the timer's reset: keep the review
            return
        expired = True
        raise ReviewTimeout

    previous = None
    if timeout is not None:
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            base_model = _load_model(settings)
            base_model.causal_lm()
        except (ModelNotFound, OSError) as e:
            err.print(f"mcagent review: the model could not load ({escape(str(e))}); "
                      "skipped")
            return None
        gist_model = default_gist_model(base_model)
        index_repository(settings.root, base_model, gist_model, settings.index)
        budget = budget or (2048 if base_model.device.type == "cpu" else 8192)
        with Store.open(db_path(settings.root), read_only=True, wait=settings.index.lock_wait,
                        on_wait=_waiting) as store:
            session = AskSession(store, base_model, settings.root.name,
                                 AskConfig(budget=budget, focus=focus))
        system = prompts.render("review_system", repository=settings.root.name)
        result = run_review(session, files, system, model_policy(ReviewConfig().max_tokens),
                            ReviewConfig(budget=budget))
        finished = True
        return result
    except (Exception, ReviewTimeout) as e:
        # The alarm may land inside native code (a DuckDB query) that turns it into an
        # error of its own ("Query interrupted"): after the alarm, any error is the timeout.
        if not (isinstance(e, ReviewTimeout) or expired):
            raise
        err.print(f"mcagent review: the time limit ({timeout:g} s) passed; skipped")
        return None
    finally:
        if timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


def _secrets() -> list[str]:
    """Values that must never leave in a review: the token and every environment value
    long enough to be one (the change under review is untrusted and may ask for them)."""
    return sorted({v for v in os.environ.values() if len(v) >= 8}, key=len, reverse=True)


def _sanitized(f: Finding, secrets: list[str]) -> Finding:
    return Finding(f.path, f.line, f.severity, sanitize(f.message, secrets),
                   sanitize(f.suggestion, secrets) if f.suggestion else None)


def _emit_review(result: ReviewResult, output: str) -> None:
    if output == "json":
        print(json.dumps(render.review_json(result), indent=2))
    elif output == "github":
        print("\n".join(render.github_annotations(result)))
    else:
        render.review_report(out, result)


def _post_review(root: Path, result: ReviewResult, pr: int | None, head: str,
                 secrets: list[str]) -> None:
    token = os.environ.get("GITHUB_TOKEN")
    repository = os.environ.get("GITHUB_REPOSITORY")
    if not token or not repository:
        raise ConfigError("--post needs GITHUB_TOKEN and GITHUB_REPOSITORY in the environment")
    pr = pr if pr is not None else _event_pr()
    config = GitHubConfig(api_url=os.environ.get("GITHUB_API_URL", "https://api.github.com"),
                          repository=repository, token=token)
    commentable = {f.path: f.commentable() for f in result.files}
    sha = diffs.commit_of(root, head)
    with GitHubClient(config) as client:
        report = post_review(client, pr, sha, result.findings, result.summary(), commentable,
                             [token, *secrets])
    err.print(f"posted to pull request #{pr}: {report.inline} inline, {report.in_summary} in "
              f"the summary comment" + (" (inline comments refused: moved to the summary)"
                                        if report.fell_back else ""))


def _event_pr() -> int:
    """The pull request number from the workflow's event file (GITHUB_EVENT_PATH)."""
    path = os.environ.get("GITHUB_EVENT_PATH")
    try:
        return int(json.loads(Path(path).read_text())["pull_request"]["number"])
    except (TypeError, OSError, ValueError, KeyError):
        raise ConfigError("--post needs --pr N outside a pull_request workflow") from None


train_app = typer.Typer(no_args_is_help=True, help="Train the learned parts for a base model.")
app.add_typer(train_app, name="train")


@train_app.command("gistnet")
def train_gistnet_command(
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Folder for checkpoints and the exported weights.")] = Path("gistnet-run"),
    lib: Annotated[Path | None, typer.Option(
        help="The interpreter's standard library (Lib/); default: this Python's.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps in all.")] = 1500,
    batch: Annotated[int, typer.Option(min=1, help="Level-1 examples per micro-batch.")] = 16,
    accumulate: Annotated[int, typer.Option(
        min=1, help="Micro-batches per optimiser step (large batches keep gists from "
                    "collapsing to one vector).")] = 4,
    level2_batch: Annotated[int, typer.Option(
        min=1, help="Level-2 examples per micro-batch (every 4th step is a level-2 step).")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = 1e-4,
    warmup: Annotated[int, typer.Option(min=0, help="Steps of linear warm-up.")] = 5,
    init: Annotated[str | None, typer.Option(
        help="Continue from exported GistNet weights (NAME.safetensors beside NAME.json; "
             "'shipped': the weights shipped for the base model) with a fresh optimiser, "
             "instead of a fresh net (a run that has a checkpoint in --out resumes it).")] = None,
    context_every: Annotated[int, typer.Option(
        min=0, help="Every n-th step trains many gists of levels 1-3 in one context against "
                    "the all-raw text (0: never, 1: every step).")] = 0,
    context_pool: Annotated[int, typer.Option(
        min=0, help="Context steps take their foreign gists of levels 2-3 from this many runs "
                    "of groups (0: a few per example), so a context holds a hundred or more, "
                    "as a working context does.")] = 0,
    eval_every: Annotated[int, typer.Option(
        min=1, help="Steps between checks on the held-out packages.")] = 50,
    block: Annotated[str, typer.Option(
        help="Encoder block: plain, or llama (the base model's layer shape, started from "
             "its first layers).")] = "plain",
    seed: int = 0,
    hours: Annotated[float | None, typer.Option(
        min=0.0, help="Stop (with a checkpoint) after this long; rerun to resume.")] = None,
    model: ModelOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(
        help="The frozen base model's dtype. auto: bfloat16 on a GPU, float32 on a CPU "
             "(bfloat16 is faster only on CPUs with native support, e.g. AMX; several "
             "times slower without).")] = "auto",
) -> None:
    """Train GistNet on the standard library with the base model frozen (resumable)."""
    from megacontext.train.gistnet import TrainConfig, train_gistnet

    with _user_errors():
        lib_dir, base = _training_inputs(lib, model, device, dtype)
        if block not in ("plain", "llama"):
            raise ConfigError(f"--block must be plain or llama, not {block!r}")
        start = None
        if init == "shipped":
            start = shipped_weights(base.id)
            if start is None:
                raise ConfigError(f"no GistNet weights ship for {base.id}: pass a file to --init")
        elif init is not None:
            start = Path(init).resolve()
        train = TrainConfig(lib=lib_dir.resolve(), out=out_dir.resolve(), steps=steps,
                            batch=batch, accumulate=accumulate, level2_batch=level2_batch,
                            lr=lr, warmup=warmup, seed=seed, init=start,
                            context_every=context_every, context_pool=context_pool,
                            eval_every=eval_every,
                            net={"block": block} if block != "plain" else {})

        def report(step: int, total: int, metrics: dict[str, float]) -> None:
            err.print(render.train_line(step, total, metrics), highlight=False)

        state = train_gistnet(train, base, report,
                              stop_after=hours * 3600 if hours is not None else None)
        out.print(f"GistNet at step {state.step}/{steps}: weights in {out_dir}")


@train_app.command("lensnet")
def train_lensnet_command(
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Folder for repositories, labels and checkpoints.")] = Path("lensnet-run"),
    lib: Annotated[Path | None, typer.Option(
        help="The interpreter's standard library (Lib/); default: this Python's.")] = None,
    repos: Annotated[int, typer.Option(min=1, help="Stdlib repositories to train on.")] = 14,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 3000,
    seed: int = 0,
    export: Annotated[Path | None, typer.Option(
        help="Also write the weights here (NAME.safetensors and NAME.json).")] = None,
    model: ModelOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(
        help="The frozen base model's dtype. auto: bfloat16 on a GPU, float32 on a CPU "
             "(bfloat16 is faster only on CPUs with native support, e.g. AMX; several "
             "times slower without).")] = "auto",
) -> None:
    """Train LensNet on counterfactual labels from the standard library (resumable: labels
    already made are kept)."""
    from megacontext.train.lensnet import LensTrainConfig, train_lensnet

    with _user_errors():
        lib_dir, base = _training_inputs(lib, model, device, dtype)
        train = LensTrainConfig(lib=lib_dir.resolve(), out=out_dir.resolve(), repos=repos,
                                steps=steps, seed=seed)

        def report(stage: str, done: int, total: int, metrics: dict[str, float]) -> None:
            if stage == "train" and done % 50 and done != total:
                return
            err.print(f"{stage} {done}/{total} " + " ".join(
                f"{k} {v:.4f}" for k, v in metrics.items()), highlight=False)

        manifest = train_lensnet(train, base, default_gist_model(base), report,
                                 export.resolve() if export is not None else None)
        out.print(f"LensNet trained: weights in {out_dir}; held-out recall " + ", ".join(
            f"{k} {v:.2f}" for k, v in manifest["evaluation"].items() if k.startswith("val")))


def _training_inputs(lib: Path | None, model: str | None, device: str, dtype: str
                     ) -> tuple[Path, BaseModel]:
    """The standard library to train on (this Python's by default) and the frozen base."""
    import sysconfig

    from megacontext.adapter import ModelConfig

    lib_dir = lib if lib is not None else Path(sysconfig.get_paths()["stdlib"])
    if not (lib_dir / "os.py").is_file():
        raise ConfigError(f"{lib_dir} is not a Python standard library (no os.py)")
    settings = _settings(Path("."), model=model)
    config = ModelConfig(name=settings.model.name, cache_dir=settings.model.cache_dir,
                         device=device, dtype=dtype)
    return lib_dir, _load_model(Settings(settings.root, config, settings.index))


def main() -> None:
    app()


def _settings(path: Path, **flags: object) -> Settings:
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory: pass the repository's root folder")
    return load_settings(path.resolve(), **flags)


def _load_model(settings: Settings) -> BaseModel:
    with err.status("Loading the base model (the first run converts it once, ≈30 s)…"):
        return load_base_model(settings.model)


def _waiting(message: str) -> None:
    err.print(f"[dim]waiting: {escape(message)}[/]", highlight=False)


def _gist_label(gist_id: str) -> str:
    return f"{gist_id} (baseline, untrained)" if gist_id.startswith("meanpool") else gist_id


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit code 1; Ctrl-C exits 130."""
    try:
        yield
    except (IngestError, MegaContextError, ConfigError, AgentError, GitHubError) as e:
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
