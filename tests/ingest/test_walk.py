"""Walk: the files git sees, the skip rules and their reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.errors import NotADirectory, UnreadableFileError
from ingest.walk import FileEntry, Skip, WalkConfig, decode, list_files, read_file
from tests.conftest import git


def paths(root: Path) -> set[str]:
    return {f.path for f in list_files(root).files}


def test_git_repo_lists_tracked_and_untracked_but_not_ignored(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a = 1\n")
    (tmp_path / ".gitignore").write_text("*.log\nsecret_dir/\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "x")
    (tmp_path / "new.py").write_text("b = 2\n")  # untracked, not ignored
    (tmp_path / "run.log").write_text("noise\n")  # ignored
    (tmp_path / "secret_dir").mkdir()
    (tmp_path / "secret_dir" / "x.py").write_text("x\n")
    assert paths(tmp_path) == {".gitignore", "src/a.py", "new.py"}


def test_git_subfolder_lists_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "lib" / "pkg").mkdir(parents=True)
    (tmp_path / "lib" / "pkg" / "m.py").write_text("m = 1\n")
    (tmp_path / "top.py").write_text("t = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "x")
    assert paths(tmp_path / "lib") == {"pkg/m.py"}


def test_plain_directory_honours_nested_gitignore(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".gitignore").write_text("build_out/\n*.tmp\n")
    (tmp_path / "a" / ".gitignore").write_text("local.py\n")
    (tmp_path / "a" / "keep.py").write_text("k\n")
    (tmp_path / "a" / "local.py").write_text("l\n")
    (tmp_path / "x.tmp").write_text("t\n")
    (tmp_path / "build_out").mkdir()
    (tmp_path / "build_out" / "o.py").write_text("o\n")
    assert paths(tmp_path) == {".gitignore", "a/.gitignore", "a/keep.py"}


def test_skip_rules_and_reasons(tmp_path: Path) -> None:
    files = {
        "ok.py": "x = 1\n",
        "node_modules/lib/index.js": "module.exports = 1\n",
        ".venv/lib/site.py": "v\n",
        "venv/__init__.py": "a real package named venv\n",
        "pkg.egg-info/PKG-INFO": "meta\n",
        "pkg/__pycache__/mod.cpython-311.pyc": "bytecode\n",
        "dist/pkg-1.0.tar.gz": "archive\n",
        ".env": "TOKEN=1\n",
        ".env.local": "TOKEN=2\n",
        "keys/id_rsa": "-----BEGIN-----\n",
        "certs/server.pem": "-----BEGIN-----\n",
        "package-lock.json": "{}\n",
        "crates/core/Cargo.lock": "# lock\n",
        "app.js.map": "{}\n",
        "app.min.js": "var a=1;\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "big.txt").write_text("y" * 2_000)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("outside\n")
    (tmp_path / "link.txt").symlink_to(outside)
    (tmp_path / "inner_link.py").symlink_to(tmp_path / "ok.py")
    (tmp_path / ".git").mkdir()  # not a repository: only a folder that must never be listed
    (tmp_path / ".git" / "config").write_text("x\n")
    (tmp_path / ".mcagent").mkdir()
    (tmp_path / ".mcagent" / "index.duckdb").write_text("x\n")

    result = list_files(tmp_path, WalkConfig(max_file_bytes=1_000))
    assert {f.path for f in result.files} == {"ok.py", "venv/__init__.py", "inner_link.py"}
    assert result.skipped == {
        "node_modules/lib/index.js": Skip.VENDORED, ".venv/lib/site.py": Skip.VENDORED,
        ".venv/pyvenv.cfg": Skip.VENDORED, "pkg.egg-info/PKG-INFO": Skip.VENDORED,
        "pkg/__pycache__/mod.cpython-311.pyc": Skip.BUILD, "dist/pkg-1.0.tar.gz": Skip.BUILD,
        ".env": Skip.SECRET, ".env.local": Skip.SECRET, "keys/id_rsa": Skip.SECRET,
        "certs/server.pem": Skip.SECRET, "package-lock.json": Skip.LOCKFILE,
        "crates/core/Cargo.lock": Skip.LOCKFILE, "app.js.map": Skip.MINIFIED,
        "app.min.js": Skip.MINIFIED, "big.txt": Skip.TOO_LARGE, "link.txt": Skip.SYMLINK,
    }


def test_content_rules() -> None:
    assert decode(b"\x00\x01binary") == (None, Skip.BINARY)
    assert decode("caf\xe9".encode("latin-1")) == (None, Skip.UNDECODABLE)
    assert decode((("x" * 5_000) + "\n").encode())[1] == Skip.MINIFIED
    assert decode(("a" * 400 + "\n").encode() * 10)[1] == Skip.MINIFIED  # mean line > 300
    assert decode(b"def f():\n    return 1\n") == ("def f():\n    return 1\n", None)
    assert decode("\ufeffx = 1\n".encode()) == ("x = 1\n", None)  # a BOM is not text


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectory, match="is not a directory"):
        list_files(tmp_path / "missing")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(NotADirectory):
        list_files(tmp_path / "f.txt")


def test_unreadable_file_error(tmp_path: Path) -> None:
    entry = FileEntry("gone.py", 1, 0)
    with pytest.raises(UnreadableFileError, match=r"cannot read gone\.py"):
        read_file(tmp_path, entry)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_permission(tmp_path: Path) -> None:
    (tmp_path / "locked.py").write_text("x\n")
    (tmp_path / "locked.py").chmod(0)
    entry = list_files(tmp_path).files[0]
    with pytest.raises(UnreadableFileError, match="permission"):
        read_file(tmp_path, entry)


def test_timeline_order_keeps_folders_contiguous(tmp_path: Path) -> None:
    for rel in ("a.py", "a/b.py", "a-b.py", "a0.py", "a/c/d.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    order = [f.path for f in list_files(tmp_path).files]
    assert order == ["a/b.py", "a/c/d.py", "a-b.py", "a.py", "a0.py"]


def test_stat_paths_applies_the_same_rules(tmp_path: Path) -> None:
    from ingest.walk import stat_paths

    (tmp_path / ".gitignore").write_text("*.log\n")
    (tmp_path / "a.py").write_text("a\n")
    (tmp_path / "x.log").write_text("l\n")
    (tmp_path / ".env").write_text("S=1\n")
    for repo in (False, True):
        if repo:
            git(tmp_path, "init", "-q")
        result = stat_paths(tmp_path, ["a.py", "x.log", ".env", "gone.py"])
        assert [f.path for f in result.files] == ["a.py"], repo
        assert result.skipped == {".env": Skip.SECRET}, repo
