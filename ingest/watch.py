"""Watch a repository and hand its changes, in batches, to the index's incremental update.

**Batching.** File-system events (watchdog) are coalesced into a set of repository-relative
paths. A batch is handed over once the tree has been quiet for `quiet` seconds, or
`max_wait` after its first event if changes keep coming — but never while git holds
`.git/index.lock`: a checkout, pull or rebase rewrites many files under that lock, so a
branch switch touching hundreds of files becomes one batch. Events inside `.git/` and
`.mcagent/` (the index's own writes) are dropped, and so are opens, reads and folder
mtime changes. A folder that appears, disappears or moves stands for the files under it
(`expand`): what is on disk below it now, and what the index held below it before.

**Concurrency.** DuckDB lets one process hold the database file for writing, and while it
does no other process can open it, not even read-only. So nobody holds it for long:

- the watcher opens the index only to apply a batch — one transaction — and closes it; between
  batches it holds nothing, and a batch is what `index` does for those paths (the same
  incremental update; there is no second implementation);
- readers (`ask`, `status`) open it read-only, read what they need into memory, close it, and
  then think (an answer's prefill and decoding happen with the file closed);
- both sides wait for the other with retries and backoff (`Store.open(wait=…)`) instead of
  failing on the lock.

A reader's reads all happen inside one open, during which no writer can commit, and a batch
is one transaction: a reader sees the index before a batch or after it, never half of one.

**Crash safety.** A batch is one DuckDB transaction behind its write-ahead log: killing the
watcher (even SIGKILL) loses only the batch in flight, and the file opens afterwards. On
start the watcher first catches up with whatever changed while it was down (a full
incremental index: content hashes decide what changed).

This module knows files and events only; the caller applies the batches.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ingest.walk import WalkConfig, stat_paths

SKIPPED_FOLDERS = (".git", ".mcagent")
GIT_LOCK = ".git/index.lock"


@dataclass(frozen=True)
class WatchConfig:
    """When a batch of changes is handed over."""

    quiet: float = 0.15  # seconds without events that close a batch
    max_wait: float = 2.0  # a batch closes this long after its first event, events or not
    git_wait: float = 60.0  # longest wait for git to release .git/index.lock


class Batch(NamedTuple):
    """Changed paths (repository-relative, sorted) and when the first of them changed."""

    paths: list[str]
    since: float  # time.monotonic() of the batch's first event


@dataclass
class Batcher:
    """Coalesces changed paths and says when they are due (pure: time is passed in)."""

    config: WatchConfig = field(default_factory=WatchConfig)
    paths: set[str] = field(default_factory=set)
    first: float | None = None  # when the pending batch's first event came
    last: float | None = None  # when its latest event came

    def add(self, paths: Collection[str], now: float) -> None:
        if not paths:
            return
        self.paths.update(paths)
        self.first = now if self.first is None else self.first
        self.last = now

    def due(self, now: float, git_busy: bool = False) -> Batch | None:
        """The batch if it should be applied now (and forget it), else None."""
        if not self.paths or self.first is None or self.last is None:
            return None
        quiet = now - self.last >= self.config.quiet
        late = now - self.first >= self.config.max_wait
        if git_busy and now - self.first < self.config.git_wait:
            return None  # git is rewriting the tree: wait for the whole operation
        if not (quiet or late):
            return None
        batch = Batch(sorted(self.paths), self.first)
        self.paths, self.first, self.last = set(), None, None
        return batch

    @property
    def pending(self) -> int:
        return len(self.paths)

    def wait_time(self, now: float) -> float:
        """How long until the batch may be due (for the event loop's timeout)."""
        if self.first is None or self.last is None:
            return 0.5
        return max(0.05, min(self.last + self.config.quiet, self.first + self.config.max_wait)
                   - now)


def relative(root: Path, path: str | bytes) -> str | None:
    """A watched path as a repository-relative posix path, or None when it is outside the
    repository or inside a skipped folder."""
    text = os.fsdecode(path)
    try:
        rel = Path(text).relative_to(root).as_posix()
    except ValueError:
        return None
    if rel in ("", ".") or rel.split("/", 1)[0] in SKIPPED_FOLDERS:
        return None
    return rel


def expand(root: Path, paths: Collection[str], indexed: Collection[str]) -> list[str]:
    """Paths to look at for a batch: files as they are, and for a folder (or a path that is
    gone and may have been one) the files below it on disk and in the index."""
    below: dict[str, list[str]] = {}
    for p in indexed:
        parts = p.split("/")
        for i in range(1, len(parts)):
            below.setdefault("/".join(parts[:i]), []).append(p)
    out: set[str] = set()
    for rel in paths:
        full = root / rel
        if full.is_dir() and not full.is_symlink():
            out.update(_files_under(root, full))
        elif rel not in below:  # a file (a folder that is gone has only files below it)
            out.add(rel)
        out.update(below.get(rel, ()))
    return sorted(out)


def relevant(root: Path, paths: list[str], indexed: Collection[str],
             config: WalkConfig | None = None) -> list[str]:
    """The paths an update must look at: those the walk's rules take in (to index or to
    record as skipped) and those the index holds. Ignored paths nobody indexed, and files
    that came and went (an editor's temporary file), are left alone."""
    walk = stat_paths(root, paths, config or WalkConfig())
    keep = {e.path for e in walk.files} | set(walk.skipped) | (set(paths) & set(indexed))
    return [p for p in paths if p in keep]


def _files_under(root: Path, folder: Path) -> Iterator[str]:
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in SKIPPED_FOLDERS]
        base = Path(here).relative_to(root)
        for name in files:
            yield (base / name).as_posix()


class Watcher:
    """Runs a watchdog observer on `root`; `batches()` yields lists of changed paths.

    Use as a context manager; `stop()` (from any thread or a signal handler) ends `batches`.
    """

    def __init__(self, root: Path, config: WatchConfig = WatchConfig()) -> None:
        self.root = Path(root).resolve()
        self.config = config
        self.batcher = Batcher(config)
        self._events: queue.Queue[list[str]] = queue.Queue()
        self._stopped = threading.Event()
        self._observer = None

    def __enter__(self) -> Watcher:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                watcher._on_event(event.event_type, event.is_directory, event.src_path,
                                  getattr(event, "dest_path", ""))

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def stop(self) -> None:
        self._stopped.set()
        self._events.put([])  # wake the loop

    def _on_event(self, kind: str, is_directory: bool, src: str | bytes, dest: str | bytes
                  ) -> None:
        if kind in ("opened", "closed_no_write") or (is_directory and kind == "modified"):
            return  # reads and folder mtimes change nothing we index
        found = [r for r in (relative(self.root, src),
                             relative(self.root, dest) if dest else None) if r is not None]
        if found:
            self._events.put(found)

    def git_busy(self) -> bool:
        return (self.root / GIT_LOCK).exists()

    def batches(self) -> Iterator[Batch]:
        """Yield each batch of changed paths until stopped."""
        while not self._stopped.is_set():
            try:
                paths = self._events.get(timeout=self.batcher.wait_time(time.monotonic()))
                self.batcher.add(paths, time.monotonic())
                while True:  # drain what has piled up
                    self.batcher.add(self._events.get_nowait(), time.monotonic())
            except queue.Empty:
                pass
            if self._stopped.is_set():
                return
            batch = self.batcher.due(time.monotonic(), self.git_busy())
            if batch:
                yield batch

    @property
    def pending(self) -> int:
        return self.batcher.pending + self._events.qsize()
