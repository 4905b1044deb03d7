"""What a change touches, as git reports it: files and hunks with head-side line numbers.

Three ways to name a change, one per review mode:

- `staged`: the index against HEAD (what `git commit` would record; a pre-commit hook);
- `against(ref)`: the work tree against a ref (what changed since it);
- `between(base, head)`: a pull request, `base...head` (head against the merge base).

Hunks keep their text (the review's tail) and the head-side lines they show, context lines
included: those are the lines a pull-request review may comment on.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ingest.errors import IngestError

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
CONTEXT_LINES = 3


class DiffError(IngestError):
    """git could not produce the diff (not a repository, unknown ref, no git)."""


@dataclass
class Hunk:
    path: str
    old_start: int
    new_start: int
    lines: list[str] = field(default_factory=list)  # with their " ", "+", "-" marks
    new_lines: list[int] = field(default_factory=list)  # head-side numbers shown ("+"/" ")
    added: list[int] = field(default_factory=list)  # head-side numbers of "+" lines

    def header(self) -> str:
        return f"@@ {self.path}:{self.new_start} @@"

    def text(self) -> str:
        return self.header() + "\n" + "\n".join(self.lines)


@dataclass
class FileDiff:
    path: str  # head-side path ("" for a deleted file: `old_path` says which)
    old_path: str
    status: str  # "added" | "deleted" | "modified" | "renamed"
    hunks: list[Hunk] = field(default_factory=list)
    binary: bool = False

    def commentable(self) -> set[int]:
        return {n for h in self.hunks for n in h.new_lines}


def staged(root: Path) -> list[FileDiff]:
    return parse(_git(root, "diff", "--cached"))


def against(root: Path, ref: str) -> list[FileDiff]:
    _check_ref(root, ref)
    return parse(_git(root, "diff", ref))


def between(root: Path, base: str, head: str) -> list[FileDiff]:
    _check_ref(root, base)
    _check_ref(root, head)
    return parse(_git(root, "diff", f"{base}...{head}"))


def parse(text: str) -> list[FileDiff]:
    """Files and hunks of a unified diff (`git diff` output, default options)."""
    files: list[FileDiff] = []
    hunk: Hunk | None = None
    new = old = 0
    for line in text.splitlines():
        if line.startswith("diff --git "):
            files.append(FileDiff("", "", "modified"))
            hunk = None
        elif not files:
            continue
        elif hunk is None:
            _file_header(files[-1], line)
            m = HUNK.match(line)
            if m:
                hunk, old, new = _new_hunk(files[-1], m)
        elif m := HUNK.match(line):
            hunk, old, new = _new_hunk(files[-1], m)
        elif line.startswith(("+", "-", " ")):
            hunk.lines.append(line)
            if line[0] != "-":
                hunk.new_lines.append(new)
                if line[0] == "+":
                    hunk.added.append(new)
                new += 1
            if line[0] != "+":
                old += 1
    return files


def _new_hunk(f: FileDiff, m: re.Match) -> tuple[Hunk, int, int]:
    hunk = Hunk(f.path or f.old_path, int(m.group(1)), int(m.group(3)))
    f.hunks.append(hunk)
    return hunk, hunk.old_start, hunk.new_start


def _file_header(f: FileDiff, line: str) -> None:
    if line.startswith("--- "):
        f.old_path = _strip(line[4:], "a/")
    elif line.startswith("+++ "):
        f.path = _strip(line[4:], "b/")
        if f.path == "":
            f.status = "deleted"
    elif line.startswith("new file mode"):
        f.status = "added"
    elif line.startswith("deleted file mode"):
        f.status = "deleted"
    elif line.startswith("rename from "):
        f.old_path, f.status = line[len("rename from "):], "renamed"
    elif line.startswith("rename to "):
        f.path = line[len("rename to "):]
    elif line.startswith("Binary files "):
        f.binary = True


def _strip(name: str, prefix: str) -> str:
    name = name.split("\t", 1)[0]
    if name == "/dev/null":
        return ""
    return name[len(prefix):] if name.startswith(prefix) else name


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", "-c", "core.quotePath=false", *args, "--no-color",
                               "--no-ext-diff", f"--unified={CONTEXT_LINES}", "-M"],
                              cwd=root, capture_output=True, text=True, errors="replace")
    except OSError:
        raise DiffError("git is not installed: a review needs git") from None
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise DiffError(f"git diff failed in {root}: {message}")
    return proc.stdout


def _check_ref(root: Path, ref: str) -> None:
    if ref.startswith("-"):
        raise DiffError(f"{ref!r} is not a git ref")
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DiffError(f"unknown git ref {ref!r}: fetch it or name an existing branch or "
                        "commit")


def commit_of(root: Path, ref: str) -> str:
    """The commit a ref names (a review is posted against its head commit)."""
    _check_ref(root, ref)
    proc = subprocess.run(["git", "rev-parse", f"{ref}^{{commit}}"], cwd=root,
                          capture_output=True, text=True)
    return proc.stdout.strip()
