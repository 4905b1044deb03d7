"""Cut a file into chunks that follow its code: definitions, and the gaps between them.

A chunk is a definition (function, method, class, struct, impl, interface, …) with its symbol
path (`module.Class.method`), kind and line span, or a gap between definitions (imports,
top-level statements). Containers (classes, impls, namespaces, …) are split into their head,
their members and the statements between. Chunks start at line starts, pull in the comments
right above a definition, and absorb blank or near-empty leftovers (a closing brace).

Invariant: `"".join(c.text for c in chunk_file(path, text)) == text`. Files that do not parse
cleanly still chunk (tree-sitter recovers); languages without a grammar are cut into
Markdown sections or paragraph/line windows.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import tree_sitter as ts

from ingest.languages import (
    COMMENTS,
    CONTAINERS,
    SPECS,
    LanguageSpec,
    definition_kind,
    definition_name,
    language_of,
    parser_for,
)

TEXT_WINDOW_LINES = 40  # longest run of lines one text chunk holds
_TINY = 3  # pieces with at most this many non-blank characters join the previous chunk


@dataclass(frozen=True, slots=True)
class Chunk:
    """A contiguous piece of a file's text."""

    text: str
    kind: str  # function, method, class, …, "gap" between definitions, "section", "text"
    symbol: str  # dotted path: module, module.Class, module.Class.method
    line_start: int  # first line, 1-based
    line_end: int  # last line, 1-based, inclusive


def chunk_file(path: str, text: str, language: str | None = None) -> list[Chunk]:
    """Chunks of one file, in order; they concatenate to exactly `text`."""
    if not text:
        return []
    language = language or language_of(path)
    module = module_path(path)
    starts = _line_starts(text)
    if language in SPECS:
        cuts = _code_cuts(text, starts, SPECS[language], module)
    elif language in ("markdown", "restructuredtext"):
        cuts = _section_cuts(text, starts, module)
    else:
        cuts = _paragraph_cuts(text, starts, module)
    return _pieces(text, starts, cuts)


def module_path(path: str) -> str:
    """`pkg/mod.py` -> `pkg.mod`; `pkg/__init__.py` -> `pkg`; other files keep their stem."""
    p = PurePosixPath(path)
    parts = [*p.parent.parts, p.stem] if p.stem != "__init__" else list(p.parent.parts)
    return ".".join(parts) or p.stem


# A cut is (char offset at a line start, kind, symbol): the chunk that begins there.
_Cut = tuple[int, str, str]


def _code_cuts(text: str, char_starts: list[int], spec: LanguageSpec, module: str
               ) -> list[_Cut]:
    data = text.encode("utf-8")
    tree = parser_for(spec.name).parse(data)
    marks: list[tuple[int, int, str, str]] = [(0, 0, "gap", module)]
    _collect(tree.root_node.named_children, spec, module, ("gap", module), marks)
    byte_starts = _line_starts(data)
    snapped = []
    for byte, is_start, kind, symbol in marks:
        line = bisect.bisect_right(byte_starts, byte) - 1
        if not is_start and byte > byte_starts[line]:
            line += 1  # an end snaps forward: the rest of its last line stays with it
        if line < len(char_starts):
            snapped.append((char_starts[line], is_start, kind, symbol))
    # At one offset, a definition's start beats a preceding end; otherwise the last mark wins
    # (the outermost end, the innermost start).
    snapped.sort(key=lambda m: (m[0], m[1]))
    by_offset: dict[int, _Cut] = {}
    for offset, _, kind, symbol in snapped:
        by_offset[offset] = (offset, kind, symbol)
    return list(by_offset.values())


def _collect(
    children: list[ts.Node],
    spec: LanguageSpec,
    prefix: str,
    after: tuple[str, str],
    marks: list[tuple[int, int, str, str]],
) -> None:
    """Append (byte, is_start, kind, symbol) marks for the definitions among `children`."""
    for i, child in enumerate(children):
        found = _definition(child, spec)
        if found is None:
            continue
        node, name = found
        kind = definition_kind(node, spec)
        if kind == "function" and after[0] in CONTAINERS - {"namespace", "module"}:
            kind = "method"
        symbol = f"{prefix}.{name}"
        marks.append((_start_with_comments(children, i), 1, kind, symbol))
        body = node.child_by_field_name("body")
        if kind in CONTAINERS and body is not None:
            _collect(body.named_children, spec, symbol, (kind, symbol), marks)
        marks.append((child.end_byte, 0, *after))


def _definition(node: ts.Node, spec: LanguageSpec) -> tuple[ts.Node, str] | None:
    """The definition a top-level node is (or wraps), with its name; None for statements."""
    if node.type in spec.wrappers:
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        candidates = [inner] if inner is not None else node.named_children
        for c in candidates:
            found = _definition(c, spec)
            if found is not None:
                return found
        return None
    if node.type not in spec.definitions:
        return None
    name = definition_name(node, spec.name)
    return (node, name) if name else None


def _start_with_comments(children: list[ts.Node], i: int) -> int:
    """Start of child i, moved up over the comments directly above it (no blank line between)."""
    start, row = children[i].start_byte, children[i].start_point.row
    for prev in reversed(children[:i]):
        if prev.type not in COMMENTS or prev.end_point.row < row - 1:
            break
        if i > 0 and prev.end_point.row == prev.start_point.row and _shares_line(prev, children):
            break  # a trailing comment on the previous statement's line stays with it
        start, row = prev.start_byte, prev.start_point.row
    return start


def _shares_line(comment: ts.Node, siblings: list[ts.Node]) -> bool:
    row = comment.start_point.row
    return any(
        s.end_point.row == row and s.end_byte <= comment.start_byte and s.type not in COMMENTS
        for s in siblings
    )


_HEADING = re.compile(r"^(#{1,6} |\S.*\n[=\-~^]{3,}$)")


def _section_cuts(text: str, starts: list[int], module: str) -> list[_Cut]:
    """Markdown/reST: a chunk per heading's section, long sections cut in line windows."""
    cuts: list[_Cut] = [(0, "section", module)]
    fenced = False
    for i, s in enumerate(starts):
        line = text[s : starts[i + 1] if i + 1 < len(starts) else len(text)]
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and i > 0 and line.startswith("#") and _HEADING.match(line):
            cuts.append((s, "section", module))
    return _windowed(cuts, starts)


def _paragraph_cuts(text: str, starts: list[int], module: str) -> list[_Cut]:
    """Other text: paragraphs (split at blank lines), joined up to a window of lines."""
    cuts: list[_Cut] = [(0, "text", module)]
    first_line = 0
    for i in range(1, len(starts)):
        prev_blank = not text[starts[i - 1] : starts[i]].strip()
        if prev_blank and i - first_line >= TEXT_WINDOW_LINES // 2:
            cuts.append((starts[i], "text", module))
            first_line = i
    return _windowed(cuts, starts)


def _windowed(cuts: list[_Cut], starts: list[int]) -> list[_Cut]:
    """Split any cut spanning more than TEXT_WINDOW_LINES lines into windows."""
    out: list[_Cut] = []
    ends = [c[0] for c in cuts[1:]] + [None]
    for (offset, kind, symbol), end in zip(cuts, ends, strict=True):
        first = bisect.bisect_left(starts, offset)
        last = bisect.bisect_left(starts, end) if end is not None else len(starts)
        out.extend((starts[i], kind, symbol) for i in range(first, last, TEXT_WINDOW_LINES))
    return out


def _pieces(text: str, starts: list[int], cuts: list[_Cut]) -> list[Chunk]:
    """Turn cuts into chunks, folding blank or tiny pieces into their neighbour."""
    merged: list[list] = []  # [start, end, kind, symbol]
    ends = [c[0] for c in cuts[1:]] + [len(text)]
    for (start, kind, symbol), end in zip(cuts, ends, strict=True):
        if end <= start:
            continue
        tiny = len(text[start:end].strip()) <= _TINY
        if tiny and merged:
            merged[-1][1] = end
        elif merged and _is_tiny(text, merged[-1]):
            merged[-1] = [merged[-1][0], end, kind, symbol]  # a blank lead joins what follows
        else:
            merged.append([start, end, kind, symbol])
    return [
        Chunk(
            text[s:e],
            kind,
            symbol,
            bisect.bisect_right(starts, s),
            bisect.bisect_right(starts, e - 1),
        )
        for s, e, kind, symbol in merged
    ]


def _is_tiny(text: str, piece: list) -> bool:
    return len(text[piece[0] : piece[1]].strip()) <= _TINY


def _line_starts(text: str | bytes) -> list[int]:
    """Offsets where each line starts (of a str in characters, of bytes in bytes)."""
    newline = "\n" if isinstance(text, str) else b"\n"
    starts = [0]
    find = text.find
    i = find(newline)
    while i != -1:
        starts.append(i + 1)
        i = find(newline, i + 1)
    if starts[-1] == len(text) and len(starts) > 1:
        starts.pop()  # no empty line after a final newline
    return starts
