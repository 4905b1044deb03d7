"""Diffs of a real git repository with a feature branch: the three review modes find the
right files, hunks and head-side lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import diff
from tests.conftest import git

BASE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture
def branched(tmp_path: Path) -> Path:
    """main: calc.py and notes.md; feature: calc.py's sub changed, util.py added."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text(BASE)
    (repo / "notes.md").write_text("# Notes\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "checkout", "-qb", "feature")
    (repo / "calc.py").write_text(BASE.replace("return a - b", "return b - a"))
    (repo / "util.py").write_text("def twice(x):\n    return 2 * x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "feature")
    git(repo, "checkout", "-q", "main")
    (repo / "notes.md").write_text("# Notes\n\nMain moved on.\n")
    git(repo, "commit", "-qam", "main moves")
    git(repo, "checkout", "-q", "feature")
    return repo


def test_pull_request_mode_diffs_head_against_the_merge_base(branched: Path) -> None:
    files = diff.between(branched, "main", "feature")
    assert {f.path: f.status for f in files} == {"calc.py": "modified", "util.py": "added"}
    calc = next(f for f in files if f.path == "calc.py")
    assert len(calc.hunks) == 1 and calc.hunks[0].added == [6]
    assert "-    return a - b" in calc.hunks[0].lines and "+    return b - a" in calc.hunks[0].lines
    assert calc.commentable() == {3, 4, 5, 6}, "context lines are commentable too"
    util = next(f for f in files if f.path == "util.py")
    assert util.hunks[0].added == [1, 2]
    assert "notes.md" not in {f.path for f in files}, "main's own changes are not the PR's"


def test_staged_mode_sees_only_the_index(branched: Path) -> None:
    (branched / "util.py").write_text("def twice(x):\n    return x + x\n")
    assert diff.staged(branched) == [], "nothing staged yet"
    git(branched, "add", "util.py")
    (branched / "calc.py").write_text(BASE + "\n# not staged\n")
    files = diff.staged(branched)
    assert [f.path for f in files] == ["util.py"]
    assert files[0].hunks[0].added == [2]


def test_work_tree_against_a_ref(branched: Path) -> None:
    (branched / "calc.py").write_text(
        BASE.replace("a + b", "a + b + 0").replace("a - b", "b - a") + "\n" * 8 + "X = 1\n")
    files = diff.against(branched, "main")
    by = {f.path: f for f in files}
    assert set(by) == {"calc.py", "util.py", "notes.md"}
    assert [h.added for h in by["calc.py"].hunks] == [[2, 6, *range(7, 16)]], "one hunk"
    assert by["notes.md"].status == "modified", "the ref's later notes read as removed"


def test_renames_deletions_and_bad_refs(branched: Path) -> None:
    git(branched, "mv", "util.py", "helpers.py")
    git(branched, "rm", "-q", "notes.md")
    files = {f.path or f.old_path: f for f in diff.staged(branched)}
    assert files["helpers.py"].status == "renamed" and files["helpers.py"].old_path == "util.py"
    assert files["notes.md"].status == "deleted" and files["notes.md"].path == ""
    with pytest.raises(diff.DiffError, match="unknown git ref 'nope'"):
        diff.against(branched, "nope")
    with pytest.raises(diff.DiffError, match="not a git ref"):
        diff.against(branched, "--output=/tmp/x")
    assert len(diff.commit_of(branched, "HEAD")) == 40


def test_parse_two_hunks_with_line_numbers() -> None:
    text = """diff --git a/m.py b/m.py
index 1..2 100644
--- a/m.py
+++ b/m.py
@@ -1,3 +1,3 @@
 a
-b
+B
 c
@@ -20,2 +20,4 @@ def f():
 x
+y
+z
 w
"""
    (f,) = diff.parse(text)
    assert (f.path, f.old_path, f.status) == ("m.py", "m.py", "modified")
    assert [(h.new_start, h.added, h.new_lines) for h in f.hunks] == [
        (1, [2], [1, 2, 3]), (20, [21, 22], [20, 21, 22, 23])]
    assert f.hunks[1].text().startswith("@@ m.py:20 @@\n x\n+y")
