"""The repository's MegaContext Tree loaded for focusing: dense arrays over every node.

Node `i` here is the i-th node of the store's tree in node-id order; `tree` is the shape the
Focus Allocator works on (children in timeline order), the other arrays say what each node
spans so entries can be assembled and cited.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megacontext.allocator import Tree
from megacontext.store import Store


@dataclass
class RepoTree:
    """Every node of an index, as arrays indexed 0..N−1."""

    node_id: np.ndarray  # (N,) int64 store ids
    tree: Tree
    level: np.ndarray  # (N,) int8
    file_id: np.ndarray  # (N,) int64, 0 for folders
    tok_start: np.ndarray  # (N,) int32, within the file's document
    tok_end: np.ndarray  # (N,) int32
    line_start: np.ndarray  # (N,) int32, 0 for folders and headers
    line_end: np.ndarray  # (N,) int32
    symbol: list[str]
    gist_key: list[bytes]
    paths: dict[int, str]  # file_id -> path

    @property
    def size(self) -> int:
        return len(self.node_id)

    def blocks(self) -> np.ndarray:
        """Indices of the blocks, in timeline order."""
        return np.flatnonzero(self.level == 1)


def load_repo_tree(store: Store) -> RepoTree:
    """Read every node and build the CSR child lists in timeline order."""
    t = store.tree_table()
    node_id = t.column("node_id").to_numpy()
    parent_ids = t.column("parent_id").fill_null(-1).to_numpy()
    sorter = np.argsort(node_id)
    parent = np.full(len(node_id), -1, np.int64)
    has = parent_ids >= 0
    parent[has] = sorter[np.searchsorted(node_id, parent_ids[has], sorter=sorter)]
    ordinal = t.column("ordinal").to_numpy()
    order = np.lexsort((ordinal, parent))  # children grouped by parent, in ordinal order
    order = order[parent[order] >= 0]
    counts = np.bincount(parent[order], minlength=len(node_id))
    child_ptr = np.concatenate([[0], np.cumsum(counts)])
    level = t.column("level").to_numpy().astype(np.int8)
    tok_start = t.column("tok_start").to_numpy()
    tok_end = t.column("tok_end").to_numpy()
    tokens = np.where(level == 1, tok_end - tok_start, 0).astype(np.int64)
    roots = np.flatnonzero(parent < 0)
    assert len(roots) == 1, f"{len(roots)} roots: the index is damaged, run `mcagent index`"
    return RepoTree(
        node_id=node_id,
        tree=Tree(parent, child_ptr, order.astype(np.int64), tokens, int(roots[0])),
        level=level, file_id=t.column("file_id").to_numpy(), tok_start=tok_start,
        tok_end=tok_end, line_start=t.column("line_start").fill_null(0).to_numpy(),
        line_end=t.column("line_end").fill_null(0).to_numpy(),
        symbol=t.column("symbol").to_pylist(), gist_key=t.column("gist_key").to_pylist(),
        paths=store.paths(),
    )
