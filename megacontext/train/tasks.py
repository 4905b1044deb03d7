"""Focus tasks mined from real code: what LensNet learns from and what benchmarks measure.

- **needle**: a function's docstring summary is the question; the function itself is the
  gold, and the target is its signature and first lines. The docstring is removed from
  the repository, so the question cannot be answered by finding its own words.
- **call** (cross-file): the lines before a call are the question, the call line is the
  target, and the gold is the callee's definition, which lives in another file.

Mining is pure (text in, tasks and edited texts out) and seeded. Several needles of one
repository are mined at once: every picked docstring is removed, so one index serves all
of them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

MIN_SUMMARY_WORDS = 5
TARGET_LINES = 3  # signature plus the first lines of the body
CONTEXT_LINES = 8  # a call task's question: the lines before the call


@dataclass(frozen=True)
class Task:
    kind: str  # "needle" | "call"
    path: str  # the file the gold lives in
    name: str  # the function
    question: str
    target: str  # the text whose NLL the frozen model scores
    lines: tuple[int, int]  # the gold function's lines, in the edited text (1-based)
    site: str = ""  # call tasks: where the call is (path:line)

    def prompt(self) -> str:
        """What comes before the target when the frozen model scores it."""
        if self.kind == "needle":
            return f"\n# {self.question}\n"
        return "\n" + self.question


def summary(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    doc = ast.get_docstring(node)
    if not doc:
        return None
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(first.split())


def _functions(text: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _needle_candidate(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    s = summary(node)
    return (s is not None and len(node.body) >= 3 and not node.name.startswith("__")
            and len(s.split()) >= MIN_SUMMARY_WORDS)


def mine_needles(texts: dict[str, str], count: int, seed: int
                 ) -> tuple[list[Task], dict[str, str]]:
    """Pick up to `count` needle functions; returns the tasks and the edited texts of the
    files whose docstrings were removed (other files are unchanged)."""
    found = [(path, node) for path in sorted(texts) for node in _functions(texts[path])
             if _needle_candidate(node)]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(found), size=min(count, len(found)), replace=False).tolist())
    by_file: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for i in picked:
        by_file.setdefault(found[i][0], []).append(found[i][1])
    tasks, edited = [], {}
    for path, nodes in by_file.items():
        lines = texts[path].splitlines(keepends=True)
        removed = [(n.body[0].lineno, n.body[0].end_lineno) for n in nodes]
        drop = {line for lo, hi in removed for line in range(lo, hi + 1)}
        kept = [line for i, line in enumerate(lines, 1) if i not in drop]
        edited[path] = "".join(kept)

        def shifted(line: int, drop: set[int] = drop) -> int:
            return line - sum(1 for d in drop if d < line)

        for n in nodes:
            start, end = shifted(n.lineno), shifted(n.end_lineno + 1) - 1
            first = shifted(n.body[1].lineno)
            target_lines = kept[start - 1 : start - 1 + (first - start) + TARGET_LINES - 1]
            tasks.append(Task("needle", path, n.name, summary(n) or "", "".join(target_lines),
                              (start, end)))
    return tasks, edited


def mine_calls(texts: dict[str, str], count: int, seed: int) -> list[Task]:
    """Calls to a function defined (once, by that name) in another file of the repository."""
    defined: dict[str, list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
    parsed: dict[str, ast.Module] = {}
    for path in sorted(texts):
        try:
            parsed[path] = ast.parse(texts[path])
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(parsed[path]):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.setdefault(node.name, []).append((path, node))
    found = []
    for path, tree in parsed.items():
        lines = texts[path].splitlines(keepends=True)
        seen: set[int] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(
                f, ast.Attribute) else None
            if name is None or name.startswith("__"):
                continue
            defs = defined.get(name, [])
            if len(defs) != 1 or defs[0][0] == path or node.lineno <= CONTEXT_LINES:
                continue
            if node.lineno in seen or node.lineno != node.end_lineno:
                continue
            seen.add(node.lineno)
            where, d = defs[0]
            question = "".join(lines[node.lineno - 1 - CONTEXT_LINES : node.lineno - 1])
            found.append(Task("call", where, name, question, lines[node.lineno - 1],
                              (d.lineno, d.end_lineno), f"{path}:{node.lineno}"))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(found), size=min(count, len(found)), replace=False)
    return [found[i] for i in sorted(picked.tolist())]
