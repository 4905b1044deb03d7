"""`mcagent watch` for real: a watcher process on a temporary git repository, the shipped
gist model, readers in other processes, and a SIGKILL in the middle of a batch."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from megacontext.store import Store, db_path
from tests.conftest import git

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


class WatchProcess:
    """`mcagent watch --json` in a child process; its events arrive on a queue."""

    def __init__(self, repo: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcagent", "watch", str(repo), "--json", "--quiet", "0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next(self, kind: str, timeout: float = 60.0) -> dict:
        """The next event of this kind (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind!r} event in {timeout} s; stderr: "
                                     f"{self._stderr()}") from None
            if event["event"] == kind:
                return event

    def quiet_for(self, seconds: float) -> list[dict]:
        time.sleep(seconds)
        found = []
        while not self.events.empty():
            found.append(self.events.get())
        return found

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read()[-2000:] if self.proc.stderr else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the watcher did not stop on SIGTERM") from None
            assert self.proc.returncode == 0, self._stderr()


def indexed(repo: Path) -> dict[str, str]:
    with Store.open(db_path(repo), read_only=True, wait=30) as store:
        return {p: r.status for p, r in store.files().items()}


def verify(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcagent", "status", str(repo), "--verify",
                           "--json"], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, WatchProcess]]:
    repo = tmp_path_factory.mktemp("watched")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (repo / "b.py").write_text("def b():\n    return 2\n")
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    w = WatchProcess(repo)
    ready = w.next("ready", timeout=120)
    assert ready["files"] == 3 and ready["caught_up"]["new"] == 3
    yield repo, w
    w.stop()


def test_modify_create_delete(watched: tuple[Path, WatchProcess]) -> None:
    repo, w = watched
    (repo / "b.py").write_text("def b():\n    return 3\n")
    assert w.next("update")["changed"] == 1
    (repo / "c.py").write_text("def c():\n    return 4\n")
    assert w.next("update")["new"] == 1
    (repo / "c.py").unlink()
    assert w.next("update")["deleted"] == 1
    assert "c.py" not in indexed(repo) and "b.py" in indexed(repo)


def test_rename_and_directory_move(watched: tuple[Path, WatchProcess]) -> None:
    repo, w = watched
    (repo / "b.py").rename(repo / "b2.py")
    event = w.next("update")
    assert (event["new"], event["deleted"]) == (1, 1)
    (repo / "pkg").rename(repo / "lib")
    event = w.next("update")
    assert (event["new"], event["deleted"]) == (1, 1)
    files = indexed(repo)
    assert "lib/a.py" in files and "pkg/a.py" not in files and "b2.py" in files


def test_atomic_save_is_one_change(watched: tuple[Path, WatchProcess]) -> None:
    repo, w = watched
    tmp = repo / ".b2.py.swp"  # what editors do: write a temporary file, rename it over
    tmp.write_text("def b():\n    return 'atomic'\n")
    os.replace(tmp, repo / "b2.py")
    event = w.next("update")
    assert event["changed"] == 1 and event["new"] == 0 and event["sample"] == ["b2.py"]
    assert ".b2.py.swp" not in indexed(repo)


def test_ignored_files_are_left_alone(watched: tuple[Path, WatchProcess]) -> None:
    repo, w = watched
    (repo / "build").mkdir()
    (repo / "build" / "out.py").write_text("generated = True\n")
    assert not [e for e in w.quiet_for(1.5) if e["event"] == "update"], "no update at all"
    assert "build/out.py" not in indexed(repo)


def test_branch_switch_is_one_batch(watched: tuple[Path, WatchProcess]) -> None:
    repo, w = watched
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "moves")
    base = git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    git(repo, "checkout", "-qb", "feature")
    (repo / "many").mkdir()
    for i in range(60):
        (repo / "many" / f"m{i}.py").write_text(f"def m{i}():\n    return {i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "many files")
    w.next("update", timeout=120)  # the files written above
    w.quiet_for(0.5)
    git(repo, "checkout", "-q", base)  # deletes 60 files under git's index lock
    event = w.next("update", timeout=120)
    assert event["deleted"] == 60, event
    assert not [e for e in w.quiet_for(1.0) if e["event"] == "update"], "one batch"
    git(repo, "checkout", "-q", "feature")
    event = w.next("update", timeout=120)
    assert event["new"] == 60, event


READER = """
import sys, time
from pathlib import Path
from megacontext.store import Store, db_path
repo, seconds = Path(sys.argv[1]), float(sys.argv[2])
reads, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    with Store.open(db_path(repo), read_only=True, wait=60) as store:
        problems = store.integrity()
        files = store.files()
        tokens = store.all_tokens()
    assert not problems, problems
    assert all(r.file_id in tokens for r in files.values() if r.status == "indexed")
    reads += 1
print(reads)
"""


def test_readers_in_other_processes_never_fail(watched: tuple[Path, WatchProcess]) -> None:
    repo, _ = watched
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(repo), "6"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for i in range(8):
        (repo / f"r{i}.py").write_text(f"def r{i}():\n    return {i}\n" * (i + 1))
        time.sleep(0.4)
    for r in readers:
        out, errors = r.communicate(timeout=120)
        assert r.returncode == 0, errors[-2000:]
        assert int(out) > 0
    deadline = time.monotonic() + 60
    while not all(f"r{i}.py" in indexed(repo) for i in range(8)):
        assert time.monotonic() < deadline, "the watcher indexed every new file"
        time.sleep(0.2)


def test_sigkill_mid_batch_then_restart_is_clean(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "seed.py").write_text("seed = 1\n")
    git(repo, "init", "-q")
    w = WatchProcess(repo)
    w.next("ready", timeout=120)
    body = "".join(f"def f{j}(x):\n    return x * {j} + len(str(x))\n\n" for j in range(60))
    for i in range(60):
        (repo / f"big{i}.py").write_text(body.replace("def f", f"def g{i}_"))
    time.sleep(1.5)  # the batch has closed and is being indexed (tens of thousands of tokens)
    assert not [e for e in w.quiet_for(0) if e["event"] == "update"], "killed mid-batch"
    w.proc.send_signal(signal.SIGKILL)
    w.proc.wait()
    again = WatchProcess(repo)  # the database opens, and the watcher catches up
    ready = again.next("ready", timeout=300)
    again.stop()
    assert again.next("stopped", timeout=5)["updates"] == 0
    assert ready["files"] == 61, ready
    result = verify(repo)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["problems"] == [] and not any(report["changes"].values())
