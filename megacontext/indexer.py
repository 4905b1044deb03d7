"""Index a repository into its MegaContext: walk → plan → chunk → tokenize → tree → gist → store.

Incremental: a file whose size and mtime match the last run is not read; one whose bytes
hash the same is not reprocessed; a changed file is re-chunked, and its unchanged blocks keep
their gists (they are content-addressed). Everything is computed before the database is
written, and the write is one transaction: a failure leaves the previous index as it was.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ingest.chunk import chunk_file, module_path
from ingest.languages import language_of
from ingest.walk import FileEntry, WalkConfig, decode, list_files, read_file
from megacontext.adapter import BaseModel
from megacontext.errors import NothingToIndex
from megacontext.gist import MAX_CHILDREN, GistModel
from megacontext.store import DB_FOLDER, DIR_FILE_ID, LOCAL_BITS, FileRecord, Store, db_path
from megacontext.tree import (
    DirTree,
    FileRoot,
    FileTree,
    TreeConfig,
    build_dir_tree,
    build_file_tree,
    header_text,
)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
INDEXED = "indexed"


@dataclass(frozen=True)
class IndexConfig:
    """How a repository is indexed."""

    walk: WalkConfig = WalkConfig()
    tree: TreeConfig = TreeConfig()
    files_per_batch: int = 256  # files tokenized together (the tokenizer runs them in parallel)
    gists_per_batch: int = 1024  # groups compressed in one gist-model call


@dataclass
class IndexReport:
    """What one index run did and what the index now holds."""

    root: str
    files: int = 0  # indexed files now in the index
    files_by_language: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    tokens: int = 0  # tokens now in the index
    nodes_by_level: dict[int, int] = field(default_factory=dict)
    new: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    processed_paths: list[str] = field(default_factory=list)
    tokens_processed: int = 0
    gists_computed: int = 0
    seconds: float = 0.0
    created: bool = False  # this run created the .mcagent folder

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_processed / self.seconds if self.seconds > 0 else 0.0


def index_repository(root: Path, model: BaseModel, gist_model: GistModel,
                     config: IndexConfig = IndexConfig(), progress: Progress | None = None
                     ) -> IndexReport:
    """Bring `.mcagent/index.duckdb` under root up to date with the files."""
    started = time.perf_counter()
    progress = progress or _no_progress
    walk = list_files(root, config.walk)
    if not walk.files and not db_path(root).exists():
        raise NothingToIndex(_nothing_message(root, walk.skipped_by_reason()))
    created = not (Path(root) / DB_FOLDER).exists()
    try:
        with Store.open(db_path(root)) as store:
            report = _index(Path(root), walk, store, model, gist_model, config, progress)
            report.seconds = time.perf_counter() - started
            store.record_run(report.seconds, report.new, report.changed, report.deleted,
                             report.unchanged, report.tokens_processed, report.gists_computed)
    except BaseException:
        if created:
            shutil.rmtree(Path(root) / DB_FOLDER, ignore_errors=True)  # nothing half-written
        raise
    if created:
        (Path(root) / DB_FOLDER / ".gitignore").write_text("# created by mcagent\n*\n")
    report.created = created
    return report


def _index(root: Path, walk, store: Store, model: BaseModel, gist_model: GistModel,
           config: IndexConfig, progress: Progress) -> IndexReport:
    plan = _plan(root, walk, store, model, gist_model, config, progress)
    trees = _build_trees(plan, model, config, progress)
    if not plan.indexed_after():
        raise NothingToIndex(_nothing_message(root, Counter(plan.statuses().values())))
    bank = _GistBank(store, model, gist_model, config)
    file_rows, node_tables = _file_nodes(plan, trees, bank, progress)
    dirs = _dir_nodes(plan, trees, store, bank, config)
    stale = store.node_gist_keys(plan.replaced_ids())
    with store.transaction():
        store.delete_files(plan.replaced_ids(), [plan.ids[p] for p in plan.touched])
        store.write_files(file_rows)
        store.write_tokens([plan.ids[p] for p in trees], [t.tokens for t in trees.values()])
        for table in node_tables:
            store.write_nodes(table)
        computed = store.write_gists(*bank.new_items())
        store.replace_dir_nodes(dirs.table)
        store.set_parents(dirs.root_ids, dirs.root_parents)
        store.collect_gists(stale + dirs.old_keys)
        store.set_meta({"base_model": model.id, "gist_model": gist_model.id,
                        "gist_dim": str(model.dim)})
    return _report(root, store, plan, trees, computed)


# ---------------------------------------------------------------- 1. plan


@dataclass
class _Plan:
    """Per path: what the last run recorded, what is there now, and what to do."""

    previous: dict[str, FileRecord]
    ids: dict[str, int] = field(default_factory=dict)  # path -> file_id (stable)
    rows: dict[str, dict] = field(default_factory=dict)  # files-table rows to (re)write
    texts: dict[str, str] = field(default_factory=dict)  # files to (re)build
    unchanged: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # same bytes, new mtime: row rewritten only
    deleted: list[str] = field(default_factory=list)
    new: int = 0
    changed: int = 0

    def replaced(self) -> list[str]:
        """Paths whose nodes this run rebuilds or removes."""
        return [p for p in self.rows if p not in self.touched] + self.deleted

    def replaced_ids(self) -> list[int]:
        return [self.ids[p] if p in self.ids else self.previous[p].file_id
                for p in self.replaced()]

    def statuses(self) -> dict[str, str]:
        out = {p: r.status for p, r in self.previous.items() if p not in self.deleted}
        out.update({p: row["status"] for p, row in self.rows.items()})
        return out

    def indexed_after(self) -> list[str]:
        return [p for p, s in self.statuses().items() if s == INDEXED]


def _plan(root: Path, walk, store: Store, model: BaseModel, gist_model: GistModel,
          config: IndexConfig, progress: Progress) -> _Plan:
    previous = store.files()
    meta = store.meta()
    rebuild = meta.get("base_model") != model.id or meta.get("gist_model") != gist_model.id
    plan = _Plan(previous)
    next_id = max((r.file_id for r in previous.values()), default=DIR_FILE_ID) + 1
    for path in [*walk.files, *walk.skipped]:
        key = path.path if isinstance(path, FileEntry) else path
        if key in previous:
            plan.ids[key] = previous[key].file_id
        else:
            plan.ids[key], next_id = next_id, next_id + 1
    for path, reason in walk.skipped.items():
        old = previous.get(path)
        if old is None or old.status != reason:
            plan.rows[path] = _row(plan.ids[path], path, reason)
    total = len(walk.files)
    for done, entry in enumerate(walk.files, 1):
        _plan_file(root, entry, plan, rebuild, config.walk)
        if done % 64 == 0 or done == total:
            progress("scan", done, total)
    seen = {e.path for e in walk.files} | set(walk.skipped)
    plan.deleted = [p for p in previous if p not in seen]
    return plan


def _plan_file(root: Path, entry: FileEntry, plan: _Plan, rebuild: bool,
               walk_config: WalkConfig) -> None:
    old = plan.previous.get(entry.path)
    same_stat = old is not None and (old.size, old.mtime_ns) == (entry.size, entry.mtime_ns)
    if same_stat and not (rebuild and old.status == INDEXED):
        plan.unchanged.append(entry.path)
        return
    data = read_file(root, entry, walk_config)
    digest = hashlib.blake2b(data, digest_size=16).digest()
    text, reason = decode(data, walk_config)
    row = _row(plan.ids[entry.path], entry.path, reason or INDEXED, entry, digest, text)
    if old is not None and old.hash == digest and not (rebuild and old.status == INDEXED):
        plan.unchanged.append(entry.path)  # touched, not changed: remember the new mtime
        plan.touched.add(entry.path)
        plan.rows[entry.path] = row | {"n_tokens": old.n_tokens, "root_id": old.root_id}
        return
    plan.rows[entry.path] = row
    if old is None:
        plan.new += 1
    else:
        plan.changed += 1
    if text is not None:
        plan.texts[entry.path] = text


def _row(file_id: int, path: str, status: str, entry: FileEntry | None = None,
         digest: bytes | None = None, text: str | None = None) -> dict:
    return {
        "file_id": file_id, "path": path, "status": status, "language": language_of(path),
        "size": entry.size if entry else None, "mtime_ns": entry.mtime_ns if entry else None,
        "hash": digest, "n_tokens": 0,
        "n_lines": text.count("\n") + (not text.endswith("\n")) if text else 0,
        "root_id": None,
    }


# ---------------------------------------------------------------- 2. chunk, tokenize, tree


def _build_trees(plan: _Plan, model: BaseModel, config: IndexConfig, progress: Progress
                 ) -> dict[str, FileTree]:
    """Chunk and tokenize the files to (re)build, in batches, into their trees."""
    paths = list(plan.texts)
    trees: dict[str, FileTree] = {}
    for lo in range(0, len(paths), config.files_per_batch):
        batch = paths[lo : lo + config.files_per_batch]
        chunked = [chunk_file(p, plan.texts[p]) for p in batch]
        pieces = [header_text(p) for p in batch] + [c.text for cs in chunked for c in cs]
        encodings = model.encode(pieces)
        headers, rest = encodings[: len(batch)], encodings[len(batch) :]
        at = 0
        for path, chunks, header in zip(batch, chunked, headers, strict=True):
            trees[path] = build_file_tree(chunks, rest[at : at + len(chunks)], header,
                                          module_path(path), config.tree)
            at += len(chunks)
            assert len(trees[path].level) < 1 << LOCAL_BITS, f"{path}: too many nodes"
        progress("chunk+tokenize", min(lo + len(batch), len(paths)), len(paths))
    for path in paths:
        del plan.texts[path]  # the trees hold what is needed now
    return trees


# ---------------------------------------------------------------- 3. gists


class _GistBank:
    """Gists by key: those computed this run, and those already stored (fetched on demand)."""

    def __init__(self, store: Store, model: BaseModel, gist_model: GistModel,
                 config: IndexConfig) -> None:
        self.store, self.model, self.gist_model, self.config = store, model, gist_model, config
        self.new: dict[bytes, np.ndarray] = {}
        self.known: set[bytes] = set()

    def key(self, content_hash: bytes, level: int) -> bytes:
        salt = f"{level}|{self.gist_model.id}|{self.model.id}".encode()
        return hashlib.blake2b(content_hash + salt, digest_size=16).digest()

    def learn_existing(self, keys: list[bytes]) -> None:
        self.known |= self.store.existing_gist_keys(list(set(keys) - self.known))

    def missing(self, keys: list[bytes]) -> list[int]:
        """Positions of keys that have no gist yet (first occurrence only)."""
        seen, out = set(), []
        for i, k in enumerate(keys):
            if k not in self.known and k not in self.new and k not in seen:
                seen.add(k)
                out.append(i)
        return out

    def vectors(self, keys: list[bytes]) -> np.ndarray:
        """(N, D) float16 vectors of keys computed this run or stored."""
        fetch = [k for k in set(keys) if k not in self.new]
        stored = self.store.gist_vectors(fetch, self.model.dim)
        return np.stack([self.new[k] if k in self.new else stored[k] for k in keys])

    def compute(self, keys: list[bytes], children: list, level: int, from_tokens: bool) -> None:
        """Gist each group of children (token ids at level 1, else child gist keys)."""
        B = self.config.gists_per_batch
        for lo in range(0, len(keys), B):
            groups = children[lo : lo + B]
            x, mask = self._tokens(groups) if from_tokens else self._gists(groups)
            levels = torch.full((len(groups),), level, dtype=torch.long)
            with torch.no_grad():
                out = self.gist_model(x, mask, levels).to(torch.float16).numpy()
            for k, v in zip(keys[lo : lo + B], out, strict=True):
                self.new[k] = v

    def _tokens(self, groups: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) token embeddings of each group, zero-padded, and the (B, K) mask."""
        lengths = np.array([len(g) for g in groups])
        mask = np.arange(lengths.max())[None, :] < lengths[:, None]
        assert mask.shape[1] <= MAX_CHILDREN, f"a block of {mask.shape[1]} tokens"
        ids = np.zeros(mask.shape, np.int64)
        ids[mask] = np.concatenate(groups)
        mask_t = torch.from_numpy(mask)
        return self.model.embeddings[torch.from_numpy(ids)] * mask_t[..., None], mask_t

    def _gists(self, groups: list[list[bytes]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) child gists of each group, zero-padded, and the (B, K) mask."""
        flat = [k for g in groups for k in g]
        vectors = torch.from_numpy(self.vectors(flat).astype(np.float32))
        lengths = np.array([len(g) for g in groups])
        mask = np.arange(lengths.max())[None, :] < lengths[:, None]
        assert mask.shape[1] <= MAX_CHILDREN, f"a group of {mask.shape[1]} children"
        x = torch.zeros(*mask.shape, self.model.dim)
        x[torch.from_numpy(mask)] = vectors
        return x, torch.from_numpy(mask)

    def new_items(self) -> tuple[list[bytes], np.ndarray]:
        keys = list(self.new)
        vecs = np.stack([self.new[k] for k in keys]) if keys else np.zeros((0, self.model.dim))
        return keys, vecs.astype(np.float16)


def _file_nodes(plan: _Plan, trees: dict[str, FileTree], bank: _GistBank,
                progress: Progress) -> tuple[pa.Table, list[pa.Table]]:
    """Gist every node of the rebuilt files, bottom-up, and lay out their table rows."""
    keys = {p: [bank.key(h, int(lv)) for h, lv in zip(t.hash, t.level, strict=True)]
            for p, t in trees.items()}
    bank.learn_existing([k for ks in keys.values() for k in ks])
    top = max((int(t.level.max()) for t in trees.values()), default=0)
    for level in range(1, top + 1):
        level_keys, groups = [], []
        for p, t in trees.items():
            for i in np.flatnonzero(t.level == level):
                level_keys.append(keys[p][i])
                groups.append(t.tokens[t.tok_start[i] : t.tok_end[i]] if level == 1 else
                              keys[p][t.child_lo[i] : t.child_hi[i]])
        todo = bank.missing(level_keys)
        bank.compute([level_keys[i] for i in todo], [groups[i] for i in todo], level,
                     from_tokens=level == 1)
        progress("gist", level, top)
    for p, t in trees.items():
        plan.rows[p]["n_tokens"] = len(t.tokens)
        plan.rows[p]["root_id"] = plan.ids[p] << LOCAL_BITS | t.root
    tables = [_node_table(plan.ids[p], t, keys[p]) for p, t in trees.items()]
    return pa.Table.from_pylist(list(plan.rows.values()), schema=_FILES_SCHEMA), tables


def _node_table(file_id: int, t: FileTree, keys: list[bytes]) -> pa.Table:
    base = file_id << LOCAL_BITS
    n = len(t.level)
    parent = np.where(t.parent >= 0, base + t.parent.astype(np.int64), -1)
    return pa.table({
        "node_id": pa.array(base + np.arange(n, dtype=np.int64)),
        "file_id": pa.array(np.full(n, file_id, np.int64)),
        "parent_id": pa.array(parent, mask=parent < 0),
        "level": pa.array(t.level), "ordinal": pa.array(t.ordinal),
        "tok_start": pa.array(t.tok_start), "tok_end": pa.array(t.tok_end),
        "line_start": pa.array(t.line_start), "line_end": pa.array(t.line_end),
        "symbol": pa.array(t.symbol, pa.string()), "kind": pa.array(t.kind, pa.string()),
        "hash": pa.array(t.hash, pa.binary(16)), "gist_key": pa.array(keys, pa.binary(16)),
    })


_FILES_SCHEMA = pa.schema([
    ("file_id", pa.int64()), ("path", pa.string()), ("status", pa.string()),
    ("language", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
    ("hash", pa.binary(16)), ("n_tokens", pa.int32()), ("n_lines", pa.int32()),
    ("root_id", pa.int64()),
])


# ---------------------------------------------------------------- 4. directories


@dataclass
class _DirNodes:
    table: pa.Table
    root_ids: np.ndarray  # file root node ids …
    root_parents: np.ndarray  # … and the directory node each now hangs under
    old_keys: list[bytes]  # gist keys of the previous directory nodes (collect if unused)


def _dir_nodes(plan: _Plan, trees: dict[str, FileTree], store: Store, bank: _GistBank,
               config: IndexConfig) -> _DirNodes:
    """Rebuild the directory nodes over every indexed file's root; gist the new ones."""
    replaced = set(plan.replaced())
    roots = {r["path"]: (r["root_id"], int(r["level"]), r["hash"], r["gist_key"], r["n_tokens"])
             for r in store.file_roots().to_pylist() if r["path"] not in replaced}
    for p, t in trees.items():
        roots[p] = (plan.ids[p] << LOCAL_BITS | t.root, int(t.level[-1]), t.hash[-1],
                    bank.key(t.hash[-1], int(t.level[-1])), len(t.tokens))
    paths = sorted(roots, key=lambda p: tuple(p.split("/")))
    files = [FileRoot(p, roots[p][1], roots[p][2], roots[p][4]) for p in paths]
    tree = build_dir_tree(files, config.tree)
    keys = [bank.key(h, lv) for h, lv in zip(tree.hash, tree.level, strict=True)]
    child_keys = [[roots[paths[k]][3] if f else keys[k] for f, k in ch] for ch in tree.children]
    bank.learn_existing(keys)
    for level in sorted(set(tree.level)):
        todo = [i for i in bank.missing(keys) if tree.level[i] == level]
        bank.compute([keys[i] for i in todo], [child_keys[i] for i in todo], level, False)
    old = store.nodes(DIR_FILE_ID).column("gist_key").to_pylist()
    return _dir_table(tree, keys, [roots[p][0] for p in paths], old)


def _dir_table(tree: DirTree, keys: list[bytes], root_ids: list[int], old_keys: list[bytes]
               ) -> _DirNodes:
    n = len(tree.level)
    parent = np.full(n, -1, np.int64)
    ordinal = np.zeros(n, np.int32)
    file_parent = np.full(len(root_ids), -1, np.int64)
    for i, children in enumerate(tree.children):
        for pos, (is_file, k) in enumerate(children):
            if is_file:
                file_parent[k] = i  # DIR_FILE_ID << LOCAL_BITS | i == i
            else:
                parent[k], ordinal[k] = i, pos
    table = pa.table({
        "node_id": pa.array(np.arange(n, dtype=np.int64)),
        "file_id": pa.array(np.full(n, DIR_FILE_ID, np.int64)),
        "parent_id": pa.array(parent, mask=parent < 0),
        "level": pa.array(np.asarray(tree.level, np.int8)), "ordinal": pa.array(ordinal),
        "tok_start": pa.array(np.zeros(n, np.int32)),
        "tok_end": pa.array(np.asarray(tree.n_tokens, np.int32)),
        "line_start": pa.nulls(n, pa.int32()), "line_end": pa.nulls(n, pa.int32()),
        "symbol": pa.array(tree.symbol, pa.string()), "kind": pa.array(["dir"] * n),
        "hash": pa.array(tree.hash, pa.binary(16)), "gist_key": pa.array(keys, pa.binary(16)),
    })
    ids = np.asarray(root_ids, np.int64)
    has_parent = file_parent >= 0
    return _DirNodes(table, ids[has_parent], file_parent[has_parent], old_keys)


# ---------------------------------------------------------------- pending changes


@dataclass
class Changes:
    """Files that differ from the index: what the next `index` run would process."""

    new: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.new) + len(self.modified) + len(self.deleted)


def pending_changes(root: Path, store: Store, config: IndexConfig = IndexConfig()) -> Changes:
    """Compare the work tree with the index: stat first, bytes only where the stat differs."""
    walk = list_files(root, config.walk)
    previous = store.files()
    changes = Changes()
    for entry in walk.files:
        old = previous.get(entry.path)
        if old is None:
            changes.new.append(entry.path)
        elif (old.size, old.mtime_ns) != (entry.size, entry.mtime_ns):
            data = read_file(root, entry, config.walk)
            if hashlib.blake2b(data, digest_size=16).digest() != old.hash:
                changes.modified.append(entry.path)
    for path, reason in walk.skipped.items():
        old = previous.get(path)
        if old is None:
            changes.new.append(path)
        elif old.status != reason:
            changes.modified.append(path)
    seen = {e.path for e in walk.files} | set(walk.skipped)
    changes.deleted = sorted(p for p in previous if p not in seen)
    return changes


# ---------------------------------------------------------------- 5. report


def _report(root: Path, store: Store, plan: _Plan, trees: dict[str, FileTree],
            computed: int) -> IndexReport:
    summary = store.summary()
    return IndexReport(
        root=str(root), files=summary["files"], files_by_language=summary["files_by_language"],
        skipped=summary["skipped"], tokens=summary["tokens"],
        nodes_by_level=summary["nodes_by_level"], new=plan.new, changed=plan.changed,
        deleted=len(plan.deleted), unchanged=len(plan.unchanged),
        processed_paths=sorted(trees), tokens_processed=sum(len(t.tokens) for t in
                                                            trees.values()),
        gists_computed=computed,
    )


def _nothing_message(root: Path, skipped: Counter) -> str:
    detail = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
    suffix = f" ({detail} skipped)" if detail else ""
    return f"no files to index in {root}{suffix}: point mcagent at a folder with source files"


def _no_progress(stage: str, done: int, total: int) -> None:
    del stage, done, total
