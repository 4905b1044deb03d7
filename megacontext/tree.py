"""The MegaContext Tree of a repository (DESIGN.md §1), built from chunks and their tokens.

Each file is a document: a one-line header (its path) then its text. Its tokens are cut into
**blocks** (level 1) of at most 32 tokens that never cross a chunk boundary and prefer to
end at a line end. A level-k node gathers at most 32 consecutive level-(k−1) nodes of the
same file, preferring cuts between top-level definitions, up to one root per file. The root
is a node even over a single block, so every file root is level ≥ 2 and an update never
reads block gists back. Above files, directory nodes gather at most 32 children up to one
repository root.

Every node carries its level, parent, ordinal, token span and line span (relative to its
file), symbol path, kind and a content hash: the hash of a block is the hash of its tokens,
of a node the hash of its children's hashes, so an unchanged function keeps its hashes (and
therefore its gists) wherever its file changes around it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ingest.chunk import Chunk
from megacontext.adapter import Encoding

HEADER_TEMPLATE = "### {path}\n"  # the one-line header that opens each file's document


@dataclass(frozen=True)
class TreeConfig:
    """Shape of the tree."""

    block_tokens: int = 32  # most tokens in one block (level 1)
    fanout: int = 32  # most children of one node
    min_line_cut: int = 8  # a line-aligned block cut keeps at least this many tokens
    min_group_cut: int = 16  # a definition-aligned group cut keeps at least this many children


@dataclass
class FileTree:
    """The nodes of one file in bottom-up order (all blocks, then level 2, …; root last)."""

    tokens: np.ndarray  # (T,) int32: header then text
    level: np.ndarray  # (N,) int8
    parent: np.ndarray  # (N,) int32 local index, -1 for the root
    ordinal: np.ndarray  # (N,) int32 position among siblings
    child_lo: np.ndarray  # (N,) int32 first child (local index); -1 for blocks
    child_hi: np.ndarray  # (N,) int32 one past the last child
    tok_start: np.ndarray  # (N,) int32
    tok_end: np.ndarray  # (N,) int32
    line_start: np.ndarray  # (N,) int32, 1-based; 0 is the header line
    line_end: np.ndarray  # (N,) int32, inclusive
    symbol: list[str]
    kind: list[str]
    hash: list[bytes]  # 16-byte content hashes

    @property
    def root(self) -> int:
        return len(self.level) - 1


def header_text(path: str) -> str:
    return HEADER_TEMPLATE.format(path=path)


def build_file_tree(
    chunks: list[Chunk], encodings: list[Encoding], header: Encoding, module: str,
    config: TreeConfig = TreeConfig(),
) -> FileTree:
    """Blocks from each chunk's tokens, then nodes level by level up to one root."""
    assert len(chunks) == len(encodings), "one encoding per chunk"
    header_chunk = Chunk("", "header", module, 0, 0)
    b = _Blocks()
    offset = 0
    for unit, (chunk, enc) in enumerate(zip([header_chunk, *chunks], [header, *encodings],
                                            strict=True)):
        _cut_blocks(chunk, enc, offset, unit, config, b)
        offset += len(enc.ids)
    tokens = np.concatenate([header.ids, *(e.ids for e in encodings)]).astype(np.int32)
    return _assemble(tokens, b, chunks, module.count(".") + 1, config)


@dataclass
class _Blocks:
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    line_start: list[int] = field(default_factory=list)
    line_end: list[int] = field(default_factory=list)
    symbol: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    unit: list[int] = field(default_factory=list)  # index of the chunk the block comes from


def _cut_blocks(chunk: Chunk, enc: Encoding, offset: int, unit: int, config: TreeConfig,
                out: _Blocks) -> None:
    """Cut one chunk's tokens into blocks, preferring cuts where a new line starts."""
    n = len(enc.ids)
    if n == 0:
        return
    line_starts = np.flatnonzero(np.frombuffer(chunk.text.encode("utf-32-le"), np.uint32) == 10)
    starts = np.concatenate([[0], line_starts + 1])
    tok_line = np.searchsorted(starts, enc.offsets[:, 0], side="right") - 1
    last_line = np.searchsorted(starts, np.maximum(enc.offsets[:, 1] - 1, 0), side="right") - 1
    B, lo = config.block_tokens, config.min_line_cut
    s = 0
    while s < n:
        e = n
        if n - s > B:
            window = tok_line[s + lo : s + B + 1] != tok_line[s + lo - 1 : s + B]
            hits = np.flatnonzero(window)
            e = s + lo + int(hits[-1]) if len(hits) else s + B
        out.start.append(offset + s)
        out.end.append(offset + e)
        out.line_start.append(chunk.line_start + int(tok_line[s]))
        out.line_end.append(chunk.line_start + int(last_line[e - 1]))
        out.symbol.append(chunk.symbol)
        out.kind.append(chunk.kind)
        out.unit.append(unit)
        s = e


def _assemble(tokens: np.ndarray, b: _Blocks, chunks: list[Chunk], module_depth: int,
              config: TreeConfig) -> FileTree:
    n = len(b.start)
    tok_start, tok_end = np.asarray(b.start, np.int32), np.asarray(b.end, np.int32)
    hashes = [_digest(tokens[s:e].tobytes(), b"\x01") for s, e in zip(b.start, b.end,
                                                                      strict=True)]
    # Boundary strength before each block: 2 between top-level definitions, 1 between
    # chunks, 0 inside a chunk. Grouping cuts at the strongest boundary it can.
    top = [s.split(".")[: module_depth + 1] for s in b.symbol]
    strength = [0] + [
        2 if top[i] != top[i - 1] else (1 if b.unit[i] != b.unit[i - 1] else 0)
        for i in range(1, n)
    ]
    def_kinds = {c.symbol: c.kind for c in chunks if c.kind not in ("gap", "text", "section")}
    nodes = _Nodes(
        level=[1] * n, child_lo=[-1] * n, child_hi=[-1] * n, tok_start=list(tok_start),
        tok_end=list(tok_end), line_start=list(b.line_start), line_end=list(b.line_end),
        symbol=list(b.symbol), kind=list(b.kind), hash=hashes, strength=strength,
    )
    lo, hi, level = 0, n, 1
    while hi - lo > 1 or level == 1:  # a file's root is a node (level ≥ 2), never a block
        level += 1
        for g_lo, g_hi in _groups(nodes.strength[lo:hi], config):
            nodes.add_group(lo + g_lo, lo + g_hi, level, def_kinds)
        lo, hi = hi, len(nodes.level)
    return nodes.finish(tokens)


def _groups(strength: list[int], config: TreeConfig) -> list[tuple[int, int]]:
    """Cut n nodes into runs of at most `fanout`, each cut at the strongest nearby boundary."""
    n, F, lo = len(strength), config.fanout, config.min_group_cut
    out, s = [], 0
    while n - s > F:
        window = strength[s + lo : s + F + 1]
        best = max(window)
        t = s + lo + (len(window) - 1 - window[::-1].index(best))  # the last strongest
        out.append((s, t))
        s = t
    out.append((s, n))
    return out


@dataclass
class _Nodes:
    level: list[int]
    child_lo: list[int]
    child_hi: list[int]
    tok_start: list[int]
    tok_end: list[int]
    line_start: list[int]
    line_end: list[int]
    symbol: list[str]
    kind: list[str]
    hash: list[bytes]
    strength: list[int]

    def add_group(self, lo: int, hi: int, level: int, def_kinds: dict[str, str]) -> None:
        symbol = _common_symbol(self.symbol[lo:hi])
        kinds = set(self.kind[lo:hi])
        kind = kinds.pop() if len(kinds) == 1 else def_kinds.get(symbol, "group")
        self.level.append(level)
        self.child_lo.append(lo)
        self.child_hi.append(hi)
        self.tok_start.append(self.tok_start[lo])
        self.tok_end.append(self.tok_end[hi - 1])
        self.line_start.append(min(self.line_start[lo:hi]))
        self.line_end.append(max(self.line_end[lo:hi]))
        self.symbol.append(symbol)
        self.kind.append(kind)
        self.hash.append(_digest(b"".join(self.hash[lo:hi]), bytes([level])))
        self.strength.append(self.strength[lo])

    def finish(self, tokens: np.ndarray) -> FileTree:
        n = len(self.level)
        parent = np.full(n, -1, np.int32)
        ordinal = np.zeros(n, np.int32)
        for i in range(n):
            if self.child_lo[i] >= 0:
                parent[self.child_lo[i] : self.child_hi[i]] = i
                ordinal[self.child_lo[i] : self.child_hi[i]] = np.arange(
                    self.child_hi[i] - self.child_lo[i])
        kind = list(self.kind)
        kind[-1] = "file"
        return FileTree(
            tokens=tokens, level=np.asarray(self.level, np.int8), parent=parent,
            ordinal=ordinal, child_lo=np.asarray(self.child_lo, np.int32),
            child_hi=np.asarray(self.child_hi, np.int32),
            tok_start=np.asarray(self.tok_start, np.int32),
            tok_end=np.asarray(self.tok_end, np.int32),
            line_start=np.asarray(self.line_start, np.int32),
            line_end=np.asarray(self.line_end, np.int32),
            symbol=self.symbol, kind=kind, hash=self.hash,
        )


def _common_symbol(symbols: list[str]) -> str:
    first = symbols[0].split(".")
    n = len(first)
    for s in symbols[1:]:
        parts = s.split(".")
        n = min(n, len(parts))
        for i in range(n):
            if parts[i] != first[i]:
                n = i
                break
    return ".".join(first[:n])


def _digest(data: bytes, salt: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16, person=salt.ljust(16, b"\0")).digest()


# ---------------------------------------------------------------- directory nodes


@dataclass(frozen=True, slots=True)
class FileRoot:
    """What the directory tree needs of one indexed file."""

    path: str
    level: int  # level of the file's root node
    hash: bytes
    n_tokens: int


@dataclass
class DirTree:
    """Directory nodes over file roots, children before parents; the repository root last.

    A child reference is (is_file, index): a file index into the `FileRoot` list, or a node
    index into this tree.
    """

    level: list[int] = field(default_factory=list)
    symbol: list[str] = field(default_factory=list)  # the folder's path ("." for the root)
    children: list[list[tuple[bool, int]]] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    hash: list[bytes] = field(default_factory=list)


def build_dir_tree(files: list[FileRoot], config: TreeConfig = TreeConfig()) -> DirTree:
    """Directory nodes of ≤`fanout` children over files in timeline order."""
    tree = DirTree()
    parts = [f.path.split("/") for f in files]
    refs = _dir_refs(tree, files, parts, 0, len(files), depth=0, config=config)
    if len(refs) != 1 or refs[0][0]:
        _add_dir_nodes(tree, files, refs, ".", config, force_one=True)
    return tree


def _dir_refs(tree: DirTree, files: list[FileRoot], parts: list[list[str]], lo: int, hi: int,
              depth: int, config: TreeConfig) -> list[tuple[bool, int]]:
    """References to the children of one folder (files and subfolders), in order; the
    folder's files are files[lo:hi], all sharing parts[:depth]."""
    refs: list[tuple[bool, int]] = []
    i = lo
    while i < hi:
        if len(parts[i]) == depth + 1:
            refs.append((True, i))
            i += 1
            continue
        name = parts[i][depth]
        j = i
        while j < hi and len(parts[j]) > depth + 1 and parts[j][depth] == name:
            j += 1
        sub = _dir_refs(tree, files, parts, i, j, depth + 1, config)
        folder = "/".join(parts[i][: depth + 1])
        refs.extend(_add_dir_nodes(tree, files, sub, folder, config, force_one=False))
        i = j
    return refs


def _add_dir_nodes(tree: DirTree, files: list[FileRoot], refs: list[tuple[bool, int]],
                   folder: str, config: TreeConfig, force_one: bool) -> list[tuple[bool, int]]:
    """Gather refs under nodes of ≤fanout children until one remains (a folder of one child
    is skipped unless it is the repository root)."""
    if len(refs) == 1 and not force_one:
        return refs
    while True:
        groups = [refs[k : k + config.fanout] for k in range(0, len(refs), config.fanout)]
        refs = [(False, _add_dir_node(tree, files, g, folder)) for g in groups]
        if len(refs) == 1:
            return refs


def _add_dir_node(tree: DirTree, files: list[FileRoot], group: list[tuple[bool, int]],
                  folder: str) -> int:
    levels, hashes, tokens = [], [], 0
    for is_file, k in group:
        if is_file:
            levels.append(files[k].level)
            hashes.append(files[k].hash)
            tokens += files[k].n_tokens
        else:
            levels.append(tree.level[k])
            hashes.append(tree.hash[k])
            tokens += tree.n_tokens[k]
    level = max(levels) + 1
    tree.level.append(level)
    tree.symbol.append(folder)
    tree.children.append(group)
    tree.n_tokens.append(tokens)
    tree.hash.append(_digest(b"".join(hashes), b"dir" + bytes([level])))
    return len(tree.level) - 1
