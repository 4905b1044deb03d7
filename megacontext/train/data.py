"""Training and evaluation text: the same trees `index` builds, laid end to end.

The data rule: GistNet and LensNet train only on the Python standard library's own source
(`Lib/` without its tests), minus a fixed list of held-out packages kept for evaluation.
Third-party packages are never trained on; benchmarks evaluate on them.

A `Corpus` is one token stream (every file's header and text, files in path order) with the
spans gists stand in for: level-1 blocks and level-2 groups of blocks, exactly as the tree
cuts them, and which groups make up each file (the file's root and, over files in path
order, directories are the levels above). A span's prefix may reach back into the previous
file, as it would in a working context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megacontext.adapter import BaseModel

# Stdlib packages never trained on: evaluation reads them (with third-party packages).
HOLDOUT_PACKAGES = ("asyncio", "email", "json", "xml", "http", "concurrent", "tomllib",
                    "zoneinfo", "wsgiref")
# Folders that are not the standard library's own source (tests, installed packages).
EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                            "__pycache__", "test_support"})
MAX_FILE_BYTES = 400_000
CORPUS_FORMAT = 2  # bump when `Corpus` gains fields, so cached corpora are rebuilt


def stdlib_files(lib: Path, split: str) -> list[str]:
    """Relative paths of the `.py` files of a `Lib/` folder in one split ("train" or
    "holdout"), sorted."""
    assert split in ("train", "holdout"), split
    out = []
    for path in lib.rglob("*.py"):
        rel = path.relative_to(lib)
        if EXCLUDED_PARTS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        held = rel.parts[0].removesuffix(".py") in HOLDOUT_PACKAGES
        if held == (split == "holdout"):
            out.append(rel.as_posix())
    return sorted(out)


def package_files(root: Path, packages: list[str]) -> list[str]:
    """Relative paths of the `.py` files of installed packages under `root` (e.g.
    site-packages), tests excluded, sorted."""
    out = []
    for name in packages:
        for path in (root / name).rglob("*.py"):
            rel = path.relative_to(root)
            if EXCLUDED_PARTS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
                continue
            if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                out.append(rel.as_posix())
    return sorted(out)


@dataclass
class Corpus:
    """One token stream and the spans of its level-1 and level-2 nodes."""

    stream: np.ndarray  # (T,) int32
    blocks: np.ndarray  # (N1, 2) int64 [start, end) in the stream
    groups: np.ndarray  # (N2, 2) int64 [start, end) of each level-2 node
    group_children: np.ndarray  # (N2 + 1,) int64: group g's blocks are rows lo..hi of
    group_blocks: np.ndarray  # (M, 2) int64 block spans, grouped
    files: int
    file_groups: np.ndarray | None = None  # (files + 1,) int64: file f's groups are rows lo..hi

    def children(self, g: int) -> np.ndarray:
        return self.group_blocks[self.group_children[g] : self.group_children[g + 1]]

    def file_of(self, g: int) -> int:
        """The file group `g` belongs to (needs `file_groups`)."""
        assert self.file_groups is not None, "this corpus was built without file structure"
        return int(np.searchsorted(self.file_groups, g, side="right")) - 1

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, stream=self.stream, blocks=self.blocks, groups=self.groups,
                 group_children=self.group_children, group_blocks=self.group_blocks,
                 files=np.asarray(self.files),
                 **({} if self.file_groups is None else {"file_groups": self.file_groups}))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Corpus:
        with np.load(path) as z:
            return cls(z["stream"], z["blocks"], z["groups"], z["group_children"],
                       z["group_blocks"], int(z["files"]),
                       z["file_groups"] if "file_groups" in z.files else None)


def build_corpus(root: Path, paths: list[str], model: BaseModel,
                 progress: Callable[[str, int, int], None] | None = None) -> Corpus:
    """Tree every file the way `index` does and lay the trees end to end."""
    # Imported here: training on a corpus built earlier needs no parser (or DuckDB).
    from megacontext.indexer import file_trees

    texts = {}
    for p in paths:
        try:
            texts[p] = (root / p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    trees = file_trees(texts, model, progress=progress)
    streams, blocks, groups, bounds, group_blocks, file_groups = [], [], [], [0], [], [0]
    offset = 0
    for path in sorted(trees):
        t = trees[path]
        streams.append(t.tokens)
        lvl1 = np.flatnonzero(t.level == 1)
        blocks.append(np.stack([t.tok_start[lvl1], t.tok_end[lvl1]], 1) + offset)
        for g in np.flatnonzero(t.level == 2):
            kids = np.arange(t.child_lo[g], t.child_hi[g])
            if not (t.level[kids] == 1).all():
                continue
            groups.append((t.tok_start[g] + offset, t.tok_end[g] + offset))
            group_blocks.append(np.stack([t.tok_start[kids], t.tok_end[kids]], 1) + offset)
            bounds.append(bounds[-1] + len(kids))
        file_groups.append(len(groups))
        offset += len(t.tokens)
    return Corpus(
        stream=np.concatenate(streams).astype(np.int32),
        blocks=np.concatenate(blocks).astype(np.int64),
        groups=np.asarray(groups, np.int64).reshape(-1, 2),
        group_children=np.asarray(bounds, np.int64),
        group_blocks=np.concatenate(group_blocks).astype(np.int64).reshape(-1, 2),
        files=len(trees),
        file_groups=np.asarray(file_groups, np.int64),
    )


def cached_corpus(root: Path, paths: list[str], model: BaseModel, cache: Path,
                  progress: Callable[[str, int, int], None] | None = None) -> Corpus:
    """`build_corpus`, remembered on disk by (model, file list, file sizes)."""
    h = hashlib.blake2b(f"{CORPUS_FORMAT}|{model.id}".encode(), digest_size=8)
    for p in paths:
        h.update(p.encode())
        h.update(str((root / p).stat().st_size).encode())
    path = cache / f"corpus-{h.hexdigest()}.npz"
    if path.is_file():
        return Corpus.load(path)
    corpus = build_corpus(root, paths, model, progress)
    cache.mkdir(parents=True, exist_ok=True)
    corpus.save(path)
    return corpus
