"""The files of a repository as git sees them, and the rules that skip some of them.

`list_files` answers from paths and `stat` alone (cheap enough to run before every `ask`);
`read_file` applies the rules that need the bytes (binary, encoding, minified). Every skip has
a reason so the index summary can count them. `.git/` and `.mcagent/` are never listed.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import git
import pathspec

from ingest.errors import NotADirectory, UnreadableFileError

# Folders that hold other people's code, skipped wherever they appear.
VENDORED_DIRS = frozenset({
    "node_modules", "bower_components", "vendor", "third_party", ".venv", "site-packages",
    ".eggs",
})
# Folders of build output, tool caches and editor state, skipped wherever they appear.
BUILD_DIRS = frozenset({
    "dist", "build", "target", "__pycache__", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".idea", ".vscode",
    ".gradle", ".next", ".nuxt", ".cache",
})
# Names that are virtual environments only when they hold one (the stdlib has a `venv` package).
MAYBE_VENV_DIRS = frozenset({"venv", "env", "virtualenv"})
NEVER_DIRS = frozenset({".git", ".mcagent", ".hg", ".svn"})
_NEVER = "never"  # not a skip: these paths are not part of the repository's content

SECRET_PATTERNS = (
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".pgpass", ".pypirc",
    "credentials", "credentials.*", "*credentials.json", "secrets.json", "secrets.yaml",
    "secrets.yml", "service-account*.json", ".htpasswd",
)
GENERATED_PATTERNS = ("*.min.js", "*.min.css", "*.map")
# Package managers' pinned dependency lists: generated, and no help in answering questions.
LOCKFILE_NAMES = frozenset({
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb",
    "poetry.lock", "Cargo.lock", "uv.lock", "Pipfile.lock", "pdm.lock", "composer.lock",
    "Gemfile.lock", "go.sum", "flake.lock", "mix.lock", "pubspec.lock", "Package.resolved",
})


@dataclass(frozen=True)
class WalkConfig:
    """What `list_files` and `read_file` keep."""

    max_file_bytes: int = 1_000_000  # larger files are skipped as "too-large"
    max_line_chars: int = 4_000  # a longer line marks a file minified/generated
    max_mean_line_chars: int = 300  # so does a mean line length above this (files > 1 KB)
    sniff_bytes: int = 8_192  # a NUL byte in this prefix marks a file binary


class Skip:
    """Reasons a file is not indexed (the strings are what summaries show)."""

    VENDORED = "vendored"
    BUILD = "build-or-cache"
    SECRET = "secret"
    SYMLINK = "symlink-outside"
    TOO_LARGE = "too-large"
    BINARY = "binary"
    UNDECODABLE = "not-utf8"
    MINIFIED = "minified"
    LOCKFILE = "lockfile"
    MISSING = "missing"  # listed by git but gone from the work tree: not counted


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One candidate file: its repository-relative POSIX path and its stat."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class WalkResult:
    """Candidate files in timeline order, and files skipped from their path or stat alone."""

    files: list[FileEntry]
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    def skipped_by_reason(self) -> Counter[str]:
        return Counter(self.skipped.values())


def list_files(root: Path, config: WalkConfig = WalkConfig()) -> WalkResult:
    """List the repository's files as git sees them, tracked plus untracked-not-ignored.

    Works in a plain directory too, honouring its `.gitignore` files.
    """
    root = _checked_root(root)
    paths = _git_paths(root)
    if paths is None:
        paths = _plain_paths(root)
    return _classify(root, paths, config)


def stat_paths(root: Path, paths: list[str], config: WalkConfig = WalkConfig()) -> WalkResult:
    """The given repository-relative paths under the rules of `list_files`, for a caller that
    knows what changed (a file watcher): paths git ignores and paths that no longer exist are
    left out of the result (a caller treats the missing ones as deleted)."""
    root = _checked_root(root)
    ignored = _ignored_among(root, paths)
    return _classify(root, [p for p in paths if p not in ignored], config)


def _checked_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NotADirectory(f"{root} is not a directory: pass the repository's root folder")
    return root.resolve()


def _classify(root: Path, paths: list[str], config: WalkConfig) -> WalkResult:
    result = WalkResult(files=[])
    venvs = _venv_dirs(root, paths)
    for rel in sorted(set(paths), key=timeline_key):
        reason = _path_rule(rel, venvs)
        entry = None
        if reason is None:
            reason, entry = _stat_rule(root, rel, config)
        if entry is not None:
            result.files.append(entry)
        elif reason not in (_NEVER, Skip.MISSING):
            result.skipped[rel] = reason
    return result


def timeline_key(path: str) -> tuple[str, ...]:
    """Order of files on the timeline: by path components, so each folder stays contiguous."""
    return tuple(path.split("/"))


def read_file(root: Path, entry: FileEntry, config: WalkConfig = WalkConfig()) -> bytes:
    """Read a file's bytes; raises UnreadableFileError with what to do."""
    try:
        return (Path(root) / entry.path).read_bytes()
    except OSError as e:
        raise UnreadableFileError(
            f"cannot read {entry.path}: {e.strerror or e}; fix its permissions or add it to "
            ".gitignore"
        ) from e


def decode(data: bytes, config: WalkConfig = WalkConfig()) -> tuple[str | None, str | None]:
    """Text of a file, or None and the reason to skip it (binary, not UTF-8, minified)."""
    if b"\x00" in data[: config.sniff_bytes]:
        return None, Skip.BINARY
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, Skip.UNDECODABLE
    if text.startswith("\ufeff"):
        text = text[1:]
    if _looks_minified(text, config):
        return None, Skip.MINIFIED
    return text, None


def _looks_minified(text: str, config: WalkConfig) -> bool:
    if len(text) <= 1_000:
        return False
    lines = text.count("\n") + 1
    if len(text) / lines > config.max_mean_line_chars:
        return True
    return max(map(len, text.splitlines())) > config.max_line_chars


def _git_paths(root: Path) -> list[str] | None:
    """Tracked plus untracked-not-ignored files under root, or None outside a git work tree."""
    try:
        repo = git.Repo(root, search_parent_directories=True)
        if repo.bare:
            return None
        # Run in root itself, so paths come out relative to it (root may be a subfolder).
        out = git.Git(str(root)).ls_files("-z", "--cached", "--others", "--exclude-standard",
                                          "--", ".")
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError):
        return None
    except (git.GitCommandNotFound, subprocess.SubprocessError, OSError):
        return None  # no git binary: fall back to the plain walk with .gitignore rules
    # ls-files prints paths relative to the directory it ran in, which is root.
    return [p for p in out.split("\0") if p]


def _ignored_among(root: Path, paths: list[str]) -> set[str]:
    """The paths that git's ignore rules (or the .gitignore files outside git) exclude."""
    try:
        git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return {p for p in paths if _plain_ignored(root, p)}
    try:
        proc = subprocess.run(["git", "check-ignore", "-z", "--stdin"], cwd=root,
                              input="\0".join(paths).encode(), capture_output=True)
    except OSError:  # no git binary
        return {p for p in paths if _plain_ignored(root, p)}
    if proc.returncode not in (0, 1):  # 1: none of them is ignored
        return set()
    return {p for p in proc.stdout.decode().split("\0") if p}


def _plain_ignored(root: Path, rel: str) -> bool:
    """Whether the .gitignore files on the way from root to rel exclude it."""
    parts = rel.split("/")
    specs = []
    for depth in range(len(parts)):
        base = "/".join(parts[:depth])
        gitignore = root / base / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
            specs.append((base, pathspec.GitIgnoreSpec.from_lines(lines)))
        if depth and (parts[depth - 1] in NEVER_DIRS or _ignored(specs, base + "/")):
            return True
    return _ignored(specs, rel)


def _plain_paths(root: Path) -> list[str]:
    """Every file under root that the .gitignore files (at any depth) do not ignore."""
    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        gitignore = Path(dirpath) / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
            specs.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))
        kept = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d in NEVER_DIRS or _ignored(specs, rel + "/"):
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not _ignored(specs, rel):
                paths.append(rel)
    return paths


def _ignored(specs: list[tuple[str, pathspec.GitIgnoreSpec]], rel: str) -> bool:
    for base, spec in specs:
        if base and not rel.startswith(base + "/"):
            continue
        if spec.match_file(rel[len(base) + 1 :] if base else rel):
            return True
    return False


def _venv_dirs(root: Path, paths: list[str]) -> frozenset[str]:
    """Folders named like a virtual environment that really hold one (a `pyvenv.cfg`)."""
    found, checked = set(), set()
    for rel in paths:
        parts = rel.split("/")
        for i, part in enumerate(parts[:-1]):
            if part in MAYBE_VENV_DIRS:
                folder = "/".join(parts[: i + 1])
                if folder not in checked:
                    checked.add(folder)
                    if (root / folder / "pyvenv.cfg").is_file():
                        found.add(folder)
    return frozenset(found)


_SECRET_RE = re.compile("|".join(fnmatch.translate(p) for p in SECRET_PATTERNS))
_GENERATED_RE = re.compile("|".join(fnmatch.translate(p) for p in GENERATED_PATTERNS))


def _path_rule(rel: str, venvs: frozenset[str] = frozenset()) -> str | None:
    parts = rel.split("/")
    folders = parts[:-1]
    if not NEVER_DIRS.isdisjoint(folders):
        return _NEVER
    if not VENDORED_DIRS.isdisjoint(folders) or any(p.endswith(".egg-info") for p in folders):
        return Skip.VENDORED
    if venvs and any("/".join(parts[: i + 1]) in venvs for i in range(len(folders))):
        return Skip.VENDORED
    if not BUILD_DIRS.isdisjoint(folders):
        return Skip.BUILD
    if _SECRET_RE.match(parts[-1]):
        return Skip.SECRET
    if parts[-1] in LOCKFILE_NAMES:
        return Skip.LOCKFILE
    if _GENERATED_RE.match(parts[-1]):
        return Skip.MINIFIED
    return None


def _stat_rule(root: Path, rel: str, config: WalkConfig) -> tuple[str | None, FileEntry | None]:
    path = f"{root}/{rel}"
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not Path(os.path.realpath(path)).is_relative_to(root):
                return Skip.SYMLINK, None
            st = os.stat(path)
    except OSError:
        return Skip.MISSING, None  # tracked but deleted from the work tree, or a dangling link
    if not stat.S_ISREG(st.st_mode):
        return Skip.MISSING, None  # a submodule or a special file
    if st.st_size > config.max_file_bytes:
        return Skip.TOO_LARGE, None
    return None, FileEntry(rel, st.st_size, st.st_mtime_ns)
