"""The agent's tools: read-only views of the indexed files of one repository.

`search` (symbol names from the tree, then a regular expression over the files), `read` (a
line range), `list` (a folder's indexed entries) and `answer` (text plus `path:start-end`
citations, checked against the tree). Tools see only what the index holds: a path is taken
relative to the repository, and `..`, absolute paths, unindexed files and symlinks that
lead outside are refused. Nothing here runs a command or writes a file.

A request a tool cannot serve raises `ToolError`; the agent shows its message to the model
as the observation, so the model can try again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from megacontext.repo_tree import RepoTree

MAX_HITS = 10  # search results shown
MAX_READ_LINES = 60  # lines one read shows
MAX_LIST = 60  # entries one list shows
SNIPPET = 100  # characters of a search hit's line
CITATION = re.compile(r"^\s*(?P<path>[^:\s][^:]*):(?P<start>\d+)(?:-(?P<end>\d+))?\s*$")


class ToolError(Exception):
    """A request the tool cannot serve; its message becomes the observation."""


@dataclass(frozen=True)
class Citation:
    path: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.path}:{self.start}-{self.end}"


class Workspace:
    """The indexed files of one repository, as the tools see them."""

    def __init__(self, root: Path, repo: RepoTree) -> None:
        self.root = root.resolve()
        self.files = {path: fid for fid, path in repo.paths.items()}
        # The last line each file's nodes reach: the tree's own idea of the file's length.
        last = np.zeros(max(repo.paths, default=0) + 1, np.int64)
        np.maximum.at(last, repo.file_id, repo.line_end.astype(np.int64))
        self.lines_in = {path: int(last[fid]) for path, fid in self.files.items()}
        self.symbols = _definitions(repo)
        self.top_folders = sorted({p.split("/", 1)[0] for p in self.files if "/" in p})
        self._texts: dict[str, str] = {}

    # ------------------------------------------------------------ paths

    def resolve(self, path: str) -> str:
        """An indexed file's path as the index names it, or ToolError saying why not."""
        name = self._relative(path)
        if name not in self.files:
            hint = self._near(name)
            raise ToolError(f"{name} is not an indexed file" + (f"; did you mean {hint}?"
                                                                 if hint else ""))
        real = (self.root / name).resolve()
        if not real.is_relative_to(self.root):
            raise ToolError(f"{name} leads outside the repository (a symlink): refused")
        return name

    def _relative(self, path: str) -> str:
        text = path.strip().replace("\\", "/")
        if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
            raise ToolError(f"{path!r} is absolute: paths are relative to the repository root")
        parts = [p for p in PurePosixPath(text).parts if p != "."]
        if ".." in parts:
            raise ToolError(f"{path!r} goes up with '..': only the repository can be read")
        return "/".join(parts)

    def _near(self, name: str) -> str | None:
        base = name.rsplit("/", 1)[-1]
        same = sorted(p for p in self.files if p.rsplit("/", 1)[-1] == base)
        return same[0] if same else None

    def text(self, path: str) -> str:
        if path not in self._texts:
            try:
                self._texts[path] = (self.root / path).read_text(encoding="utf-8",
                                                                 errors="replace")
            except OSError as e:
                raise ToolError(f"{path} cannot be read now ({e.strerror})") from None
        return self._texts[path]

    # ------------------------------------------------------------ tools

    def search(self, query: str) -> tuple[str, list[Citation]]:
        """Definitions whose name matches, then lines matching the query as a regular
        expression (a literal where it is not one). Returns (text, spans shown)."""
        query = query.strip()
        if not query:
            raise ToolError("search needs a query: a symbol name or a regular expression")
        hits: list[tuple[Citation, str]] = []
        word = query.rsplit(".", 1)[-1].lower()
        exact = [d for d in self.symbols if d[0].rsplit(".", 1)[-1].lower() == word]
        partial = [d for d in self.symbols if word in d[0].lower() and d not in exact]
        for symbol, path, lo, hi in (exact + partial)[: MAX_HITS // 2]:
            hits.append((Citation(path, lo, hi), f"definition of {symbol}"))
        note = ""
        try:
            pattern = re.compile(query, 0 if query.lower() != query else re.IGNORECASE)
        except re.error:
            pattern = re.compile(re.escape(query), re.IGNORECASE)
            note = " (not a valid regular expression: searched as text)"
        seen = {(c.path, c.start) for c, _ in hits}
        for path in sorted(self.files):
            if len(hits) >= MAX_HITS:
                break
            text = self.text(path)
            for m in pattern.finditer(text):
                if m.end() == m.start():
                    continue
                line = text.count("\n", 0, m.start()) + 1
                if (path, line) not in seen:
                    seen.add((path, line))
                    lo = text.rfind("\n", 0, m.start()) + 1
                    hi = text.find("\n", m.start())
                    hits.append((Citation(path, line, line),
                                 text[lo : hi if hi >= 0 else len(text)].strip()[:SNIPPET]))
                if len(hits) >= MAX_HITS:
                    break
        if not hits:
            words = _keywords(query)
            if len(words) > 1:  # a sentence: search its names instead
                hits = self._by_keywords(words)
                note = f" (no match as written: definitions named like {', '.join(words)})"
        if not hits:
            return f"no match for {query!r}{note}", []
        lines = [f"{c}: {snippet}" for c, snippet in hits]
        return "\n".join([f"{len(hits)} results for {query!r}{note}:", *lines]), \
            [c for c, _ in hits]

    def _by_keywords(self, words: list[str]) -> list[tuple[Citation, str]]:
        """Definitions whose names hold the most of these words (shortest names first)."""
        scored = []
        for symbol, path, lo, hi in self.symbols:
            name = symbol.lower()
            score = sum(w in name for w in words)
            if score:
                scored.append((-score, len(symbol), path, lo, symbol, hi))
        scored.sort()
        return [(Citation(path, lo, hi), f"definition of {symbol}")
                for _, _, path, lo, symbol, hi in scored[:MAX_HITS]]

    def read(self, path: str, start: int, end: int) -> tuple[str, Citation]:
        """Lines start..end (1-based, inclusive; at most MAX_READ_LINES) with numbers."""
        name = self.resolve(path)
        lines = self.text(name).splitlines()
        if start < 1 or end < start:
            raise ToolError(f"read needs 1 <= start <= end, got {start}-{end}")
        if start > len(lines):
            raise ToolError(f"{name} has {len(lines)} lines; start {start} is past its end")
        end = min(end, len(lines), start + MAX_READ_LINES - 1)
        body = "\n".join(f"{n:>5}  {lines[n - 1]}" for n in range(start, end + 1))
        return f"{name}:{start}-{end} (of {len(lines)} lines)\n{body}", Citation(name, start, end)

    def list(self, folder: str) -> tuple[str, list[str]]:  # (text, files shown)
        """The indexed files and subfolders directly inside `folder` ('' or '.': the root)."""
        name = self._relative(folder).rstrip("/")
        prefix = f"{name}/" if name else ""
        entries: dict[str, int] = {}
        for path in self.files:
            if path.startswith(prefix):
                head, _, rest = path[len(prefix):].partition("/")
                key = f"{head}/" if rest else head
                entries[key] = entries.get(key, 0) + 1
        if not entries:
            if name in self.files:
                raise ToolError(f"{name} is a file: read it instead")
            raise ToolError(f"no indexed files under {name or '.'}")
        shown = sorted(entries)[:MAX_LIST]
        lines = [f"{k}  ({n} files)" if k.endswith("/") else k
                 for k in shown for n in [entries[k]]]
        more = f"\n… and {len(entries) - len(shown)} more" if len(entries) > len(shown) else ""
        files = [prefix + k for k in shown if not k.endswith("/")]
        return f"{name or '.'}/ ({len(entries)} entries):\n" + "\n".join(lines) + more, files

    def citation(self, text: str) -> Citation:
        """`path:start-end` (or `path:line`) checked against the tree, or ToolError."""
        m = CITATION.match(text)
        if not m:
            raise ToolError(f"{text!r} is not a citation of the form path:start-end")
        name = self.resolve(m["path"])
        start = int(m["start"])
        end = int(m["end"]) if m["end"] else start
        last = self.lines_in.get(name, 0)
        if not 1 <= start <= end <= last:
            raise ToolError(f"{text!r} is outside {name} (lines 1-{last})")
        return Citation(name, start, end)


_STOP = frozenset("""
a an and are as at be by can do does for from how i in is it its of on or the this that to
what when where which who why with about into there their they was were will would should
could code file function class method work works return returns value do done use used
""".split())  # noqa: SIM905 (a list of 50 words reads worse)


def names_in(text: str) -> list[str]:
    """The names a question mentions: dotted names first (`shutil.copyfile`), then their
    last parts and the other name-like words (a qualifier alone is too broad a query)."""
    dotted = re.findall(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", text)
    qualifiers = {p.lower() for d in dotted for p in d.split(".")[:-1]}
    last = [d.rsplit(".", 1)[1] for d in dotted]
    words = [w for w in _keywords(text) if w not in qualifiers]
    return list(dict.fromkeys([*dotted, *(p for p in last if len(p) > 2), *words]))


def _keywords(query: str) -> list[str]:
    """The name-like words of a sentence, lowercased, without common English words."""
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", query)
    return list(dict.fromkeys(w.lower() for w in words if w.lower() not in _STOP))


def _definitions(repo: RepoTree) -> list[tuple[str, str, int, int]]:
    """(symbol, path, first line, last line) of every named span the chunker saw."""
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    module: dict[str, str] = {}  # path -> its shortest symbol: the module, not a definition
    for n in np.flatnonzero(repo.line_start > 0).tolist():
        path = repo.paths.get(int(repo.file_id[n]))
        if path is not None and (path not in module or len(repo.symbol[n]) < len(module[path])):
            module[path] = repo.symbol[n]
    for n in np.flatnonzero(repo.line_start > 0).tolist():
        symbol = repo.symbol[n]
        path = repo.paths.get(int(repo.file_id[n]))
        if not symbol or path is None or symbol == module[path]:
            continue
        lo, hi = int(repo.line_start[n]), int(repo.line_end[n])
        was = seen.get((symbol, path))
        seen[(symbol, path)] = (min(lo, was[0]), max(hi, was[1])) if was else (lo, hi)
    return sorted(((s, p, lo, hi) for (s, p), (lo, hi) in seen.items()),
                  key=lambda x: (x[1], x[2]))
