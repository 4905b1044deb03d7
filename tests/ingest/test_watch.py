"""The watcher's batching and path logic, without threads or a model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ingest.watch import Batcher, WatchConfig, Watcher, expand, relative, relevant
from tests.conftest import git


def test_batch_closes_after_a_quiet_period() -> None:
    b = Batcher(WatchConfig(quiet=0.2, max_wait=5.0))
    b.add(["a.py"], now=0.0)
    b.add(["b.py", "a.py"], now=0.1)
    assert b.due(now=0.25) is None, "not quiet long enough since the last event"
    batch = b.due(now=0.31)
    assert batch is not None and batch.paths == ["a.py", "b.py"] and batch.since == 0.0
    assert b.due(now=10.0) is None and b.pending == 0, "a batch is handed over once"


def test_batch_closes_at_max_wait_under_a_stream_of_events() -> None:
    b = Batcher(WatchConfig(quiet=0.2, max_wait=1.0))
    for i in range(12):
        b.add([f"f{i}.py"], now=i * 0.1)
        if i * 0.1 < 1.0:
            assert b.due(now=i * 0.1) is None
    batch = b.due(now=1.1)
    assert batch is not None and len(batch.paths) == 12


def test_batch_waits_while_git_holds_the_index_lock() -> None:
    b = Batcher(WatchConfig(quiet=0.1, max_wait=1.0, git_wait=30.0))
    b.add(["a.py"], now=0.0)
    assert b.due(now=5.0, git_busy=True) is None, "a checkout is still writing files"
    b.add(["b.py"], now=5.5)
    batch = b.due(now=5.7, git_busy=False)
    assert batch is not None and batch.paths == ["a.py", "b.py"]
    b.add(["c.py"], now=10.0)
    assert b.due(now=41.0, git_busy=True) is not None, "a stale lock does not block forever"


def test_relative_drops_outside_and_internal_paths(tmp_path: Path) -> None:
    assert relative(tmp_path, str(tmp_path / "pkg" / "a.py")) == "pkg/a.py"
    assert relative(tmp_path, str(tmp_path / ".git" / "index")) is None
    assert relative(tmp_path, str(tmp_path / ".mcagent" / "index.duckdb.wal")) is None
    assert relative(tmp_path, "/elsewhere/a.py") is None
    assert relative(tmp_path, str(tmp_path)) is None


def test_expand_turns_folders_into_their_files(tmp_path: Path) -> None:
    (tmp_path / "new" / "sub").mkdir(parents=True)
    (tmp_path / "new" / "x.py").write_text("x = 1\n")
    (tmp_path / "new" / "sub" / "y.py").write_text("y = 2\n")
    (tmp_path / "kept.py").write_text("k = 3\n")
    indexed = ["old/a.py", "old/deep/b.py", "kept.py", "gone.py"]
    got = expand(tmp_path, ["new", "old", "kept.py", "gone.py"], indexed)
    assert got == ["gone.py", "kept.py", "new/sub/y.py", "new/x.py", "old/a.py",
                   "old/deep/b.py"]


def test_relevant_leaves_ignored_and_transient_paths_alone(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.py").write_text("o = 1\n")
    (tmp_path / "a.py").write_text("a = 1\n")
    paths = ["a.py", "build/out.py", ".a.py.swp", "deleted.py"]
    assert relevant(tmp_path, paths, indexed=["deleted.py"]) == ["a.py", "deleted.py"]


def test_watcher_reports_a_real_change(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a = 1\n")
    with Watcher(tmp_path, WatchConfig(quiet=0.05, max_wait=1.0)) as w:
        time.sleep(0.2)
        (tmp_path / "a.py").write_text("a = 2\n")
        (tmp_path / "b.py").write_text("b = 2\n")
        (tmp_path / "a.py").read_text()  # reads are not changes
        found: set[str] = set()
        timer = threading.Timer(10, w.stop)  # a watcher that sees nothing fails, not hangs
        timer.start()
        for batch in w.batches():
            found.update(batch.paths)
            if {"a.py", "b.py"} <= found:
                w.stop()
        timer.cancel()
    assert {"a.py", "b.py"} <= found and not any(p.startswith(".") for p in found)
