"""The CLI on the real default model: reports, JSON, and one-line errors with exit 1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcagent.cli import app
from megacontext.store import MIGRATIONS, Store, db_path
from tests.conftest import lock_held

pytestmark = pytest.mark.model
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_index_then_status(code_repo: Path) -> None:
    result = run("index", str(code_repo), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == 6 and report["new"] == 6 and report["tokens"] > 500
    assert report["nodes_by_level"]["1"] > 20
    status = run("status", str(code_repo), "--json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert data["base_model"].startswith("SmolLM2-135M-Instruct")
    assert data["gist_model"].startswith("gistnet-")  # the shipped, trained GistNet
    assert data["gist_model_description"].startswith("GistNet ")
    assert data["changes"] == {"new": [], "modified": [], "deleted": []}
    (code_repo / "main.py").write_text("print('changed')\n")
    text = run("status", str(code_repo))
    assert text.exit_code == 0 and "1 file(s) changed" in text.stdout and "main.py" in text.stdout
    # the base model is named once, on its own line; the last index to the second
    assert re.search(r"gist model +GistNet [0-9a-f]{8} \(\d+ steps\) ", text.stdout), text.stdout
    assert re.search(r"last index +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(", text.stdout)


def test_index_human_report(code_repo: Path) -> None:
    result = run("index", str(code_repo))
    assert result.exit_code == 0, result.output
    assert "6 new" in result.stdout and "python" in result.stdout and "tokens/s" in result.stdout


def one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    joined = " ".join(lines)
    assert joined.startswith("error:") and pattern in joined, result.output
    assert "Traceback" not in result.output


def test_error_not_a_directory(tmp_path: Path) -> None:
    one_line_error(run("index", str(tmp_path / "nope")), "is not a directory")
    one_line_error(run("status", str(tmp_path / "nope")), "is not a directory")


def test_error_empty_repository(tmp_path: Path) -> None:
    one_line_error(run("index", str(tmp_path)), "no files to index")
    assert not (tmp_path / ".mcagent").exists()


def test_error_status_without_index(tmp_path: Path) -> None:
    one_line_error(run("status", str(tmp_path)), "run `mcagent index` first")


def test_error_newer_schema(code_repo: Path) -> None:
    Store.open(db_path(code_repo), migrations=[*MIGRATIONS, "CREATE TABLE x (y INT);"]).close()
    one_line_error(run("index", str(code_repo)), "written by a newer mcagent")


def test_error_model_not_found(code_repo: Path, tmp_path: Path) -> None:
    one_line_error(run("index", str(code_repo), "--model", str(tmp_path / "missing")),
                   "not found")
    assert not (code_repo / ".mcagent").exists()


def test_error_locked(code_repo: Path) -> None:
    assert run("index", str(code_repo)).exit_code == 0
    with lock_held(db_path(code_repo)):  # held longer than we wait for it
        one_line_error(run("index", str(code_repo), "--wait", "0.5"),
                       "in use by another mcagent process")
        one_line_error(run("status", str(code_repo), "--wait", "0"),
                       "in use by another mcagent process")


def test_error_bad_config(code_repo: Path) -> None:
    (code_repo / ".mcagent.toml").write_text("colour = 'blue'\n")
    one_line_error(run("index", str(code_repo)), "unknown setting 'colour'")


def test_config_file_sets_max_file_bytes(code_repo: Path) -> None:
    (code_repo / ".mcagent.toml").write_text("max_file_bytes = 100\n")
    result = run("index", str(code_repo), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"].get("too-large", 0) >= 4


def test_ask_end_to_end_within_budget(code_repo: Path) -> None:
    """Indexes first (not indexed yet), then a real two-step session: one tool, then the
    answer (the last step may only answer); citations exist in the files; `show` replays
    it and `--continue` goes on with a follow-up."""
    result = run("ask", "What does top_level return?", "--repo", str(code_repo), "--budget",
                 "384", "--max-steps", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "answered" and data["session"] == 1
    actions = [t for t in data["transcript"] if t["kind"] == "action"]
    assert len(actions) == 2 and actions[0]["valid"] and actions[-1]["action"]["tool"] == "answer"
    assert data["transcript"][0] == {"kind": "question", "text": "Question: What does "
                                     "top_level return?"}
    for t in actions:
        assert t["tokens"]["context"] <= 384 and t["tokens"]["budget"] == 384
        assert t["telemetry"]["entries"] and {"score", "allocate", "act"} <= set(t["timings"])
    for c in data["citations"]:
        lines = (code_repo / c["path"]).read_text().splitlines()
        assert 1 <= c["start"] <= c["end"] <= len(lines), c

    shown = run("show", "--repo", str(code_repo))
    assert shown.exit_code == 0, shown.output
    assert "Session 1" in shown.stdout and "step 2" in shown.stdout and "focus:" in shown.stdout
    replay = json.loads(run("show", "1", "--repo", str(code_repo), "--json").stdout)
    assert [t["kind"] for t in replay["transcript"]] == ["question", "action", "action"]

    more = run("ask", "--continue", "And main.py?", "--repo", str(code_repo), "--budget", "384",
               "--max-steps", "1", "--json")
    assert more.exit_code == 0, more.output
    data = json.loads(more.stdout)
    assert data["session"] == 1
    assert [t["kind"] for t in data["transcript"]] == ["question", "action", "action",
                                                       "question", "action"]
    listed = run("show", "--list", "--repo", str(code_repo))
    assert listed.exit_code == 0 and "top_level" in listed.stdout


def test_show_without_sessions_is_one_line(code_repo: Path) -> None:
    result = run("show", "--repo", str(code_repo))
    assert result.exit_code == 1 and "run `mcagent ask` first" in result.output


def test_ask_rejects_an_empty_question(code_repo: Path) -> None:
    result = run("ask", "  ", "--repo", str(code_repo))
    assert result.exit_code == 2 and "empty" in result.output


def test_ask_shortens_a_long_question(code_repo: Path) -> None:
    question = "Explain the code. " * 200
    result = run("ask", question, "--repo", str(code_repo), "--budget", "384", "--max-steps",
                 "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["warnings"] and "kept the first 96" in data["warnings"][0]
    assert all(t["tokens"]["context"] <= 384 for t in data["transcript"] if "tokens" in t)


def test_a_training_line_names_context_steps_and_their_held_out_score() -> None:
    from mcagent.render import train_line

    step = {"level": 0, "loss": 3.2, "kl": 0.7, "nll_gist": 2.5, "nll_raw": 1.7}
    assert "context" in train_line(5, 10, step) and "level" not in train_line(5, 10, step)
    assert "level 2" in train_line(5, 10, {**step, "level": 2})
    held = {"l1_recovery": 0.5, "l2_recovery": 0.3, "ctx_recovery": -0.1}
    assert "in context -0.100" in train_line(5, 10, {**step, **held})
    start = train_line(0, 10, {"step": 0, **held})  # the check before the first step
    assert start.startswith("step 0/10  start") and "loss" not in start and "L1" in start
