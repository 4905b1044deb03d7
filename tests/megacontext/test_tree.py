"""Tree: blocks within chunks, ≤32 children, one root per file, stable content hashes."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunk import chunk_file, module_path
from megacontext.adapter import BaseModel
from megacontext.tree import (
    FileRoot,
    FileTree,
    TreeConfig,
    _groups,
    build_dir_tree,
    build_file_tree,
    header_text,
)
from tests.conftest import FIXTURES, tiny_model

MODEL = tiny_model()


DEFAULT = TreeConfig()


def tree_of(path: str, text: str, model: BaseModel = MODEL, config: TreeConfig = DEFAULT
            ) -> tuple[FileTree, list]:
    chunks = chunk_file(path, text)
    encodings = model.encode([header_text(path)] + [c.text for c in chunks])
    return build_file_tree(chunks, encodings[1:], encodings[0], module_path(path), config), chunks


def check_tree(t: FileTree, config: TreeConfig = DEFAULT) -> None:
    blocks = np.flatnonzero(t.level == 1)
    sizes = t.tok_end[blocks] - t.tok_start[blocks]
    assert sizes.min() >= 1 and sizes.max() <= config.block_tokens, sizes.max()
    assert t.tok_start[blocks[0]] == 0 and t.tok_end[blocks[-1]] == len(t.tokens)
    assert np.array_equal(t.tok_start[blocks[1:]], t.tok_end[blocks[:-1]]), "blocks tile tokens"
    assert (t.parent == -1).sum() == 1 and t.parent[t.root] == -1, "one root, last"
    assert t.level[t.root] >= 2, "a file's root is a node, never a block"
    for i in np.flatnonzero(t.level > 1):
        kids = np.arange(t.child_lo[i], t.child_hi[i])
        assert 1 <= len(kids) <= config.fanout
        assert (t.parent[kids] == i).all() and (t.level[kids] == t.level[i] - 1).all()
        assert list(t.ordinal[kids]) == list(range(len(kids)))
        assert t.tok_start[i] == t.tok_start[kids[0]] and t.tok_end[i] == t.tok_end[kids[-1]]


def test_fixture_trees() -> None:
    for path in sorted(FIXTURES.iterdir()):
        t, _ = tree_of(path.name, path.read_text())
        check_tree(t)


def test_blocks_never_cross_chunks() -> None:
    text = (FIXTURES / "sample.py").read_text()
    t, chunks = tree_of("sample.py", text)
    header = len(MODEL.encode([header_text("sample.py")])[0].ids)
    bounds = set(np.cumsum([header] + [len(c.text.encode()) for c in chunks]).tolist())
    blocks = np.flatnonzero(t.level == 1)
    starts = set(t.tok_start[blocks].tolist())
    assert bounds - {len(t.tokens)} <= starts, "every chunk boundary is a block boundary"


def test_blocks_prefer_line_ends() -> None:
    text = "".join(f"value_{i} = {i}\n" for i in range(40))  # 13–14 bytes a line
    t, _ = tree_of("lines.py", text)
    decoded = [MODEL.tokenizer.decode(t.tokens[s:e].tolist())
               for s, e in zip(t.tok_start[t.level == 1], t.tok_end[t.level == 1], strict=True)]
    assert all(d.endswith("\n") for d in decoded[1:-1]), decoded[:4]


def test_big_file_has_three_levels_and_symbols() -> None:
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400))
    t, _ = tree_of("many.py", text)
    check_tree(t)
    assert t.level.max() >= 3
    assert t.symbol[t.root] == "many" and t.kind[t.root] == "file"
    block = np.flatnonzero(t.level == 1)[5]
    assert t.symbol[block].startswith("many.f")


def test_unchanged_function_keeps_hashes() -> None:
    base = (FIXTURES / "sample.py").read_text()
    edited = base.replace("return x * 2", "return x * 3")
    t1, _ = tree_of("sample.py", base)
    t2, _ = tree_of("sample.py", edited)
    h1 = {h for h, lv in zip(t1.hash, t1.level, strict=True) if lv == 1}
    h2 = {h for h, lv in zip(t2.hash, t2.level, strict=True) if lv == 1}
    assert len(h1 - h2) == 1, "exactly one block changed"
    assert t1.hash[t1.root] != t2.hash[t2.root]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=400))
def test_groups_property(strength: list[int]) -> None:
    config = TreeConfig()
    groups = _groups(strength, config)
    assert groups[0][0] == 0 and groups[-1][1] == len(strength)
    for (_a, b), (c, _) in itertools.pairwise(groups):
        assert b == c
    assert all(1 <= b - a <= config.fanout for a, b in groups)


def test_dir_tree() -> None:
    files = [FileRoot(f"pkg/m{i:03}.py", 2, bytes([i % 256]) * 16, 10) for i in range(70)]
    files += [FileRoot("setup.py", 2, b"s" * 16, 5), FileRoot("a/b/c/deep.py", 3, b"d" * 16, 7)]
    files.sort(key=lambda f: tuple(f.path.split("/")))
    tree = build_dir_tree(files)
    assert tree.symbol[-1] == "." and sum(tree.n_tokens[-1:]) == 70 * 10 + 5 + 7
    assert all(len(c) <= 32 for c in tree.children)
    seen = sorted(k for ch in tree.children for is_file, k in ch if is_file)
    assert seen == list(range(len(files))), "every file hangs under exactly one node"
    assert "a/b/c" not in tree.symbol and "a" not in tree.symbol, "single-child folders fold"
    for i, ch in enumerate(tree.children):
        levels = [files[k].level if f else tree.level[k] for f, k in ch]
        assert tree.level[i] == max(levels) + 1
