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
from ingest.walk import (
    FileEntry,
    Skip,
    WalkConfig,
    WalkResult,
    decode,
    list_files,
    read_file,
    stat_paths,
)
from megacontext.adapter import BaseModel
from megacontext.errors import NothingToIndex, NotIndexed
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
SMALL_UPDATE = 8  # named paths up to this many are updated in one open of the index
INDEXED = "indexed"


@dataclass(frozen=True)
class IndexConfig:
    """How a repository is indexed."""

    walk: WalkConfig = field(default_factory=WalkConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    files_per_batch: int = 256  # files tokenized together (the tokenizer runs them in parallel)
    gists_per_batch: int = 1024  # groups compressed in one gist-model call
    lock_wait: float = 0.0  # seconds to wait while another process holds the index


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
                     config: IndexConfig = IndexConfig(), progress: Progress | None = None,
                     paths: list[str] | None = None) -> IndexReport:
    """Bring `.mcagent/index.duckdb` under root up to date with the files.

    `paths`, when given, are the only repository-relative paths that may have changed
    (a file watcher knows them): the walk looks at those alone, which keeps an update of one
    file from paying for a scan of the whole repository.
    """
    started = time.perf_counter()
    progress = progress or _no_progress
    if paths is not None and not db_path(root).exists():
        paths = None  # nothing indexed yet: the first run sees everything
    walk = list_files(root, config.walk) if paths is None else stat_paths(root, paths,
                                                                          config.walk)
    if not walk.files and not db_path(root).exists():
        raise NothingToIndex(_nothing_message(root, walk.skipped_by_reason()))
    created = not (Path(root) / DB_FOLDER).exists()
    try:
        report = _index(Path(root), walk, paths, model, gist_model, config, progress, started,
                        created)
    except BaseException:
        if created:
            shutil.rmtree(Path(root) / DB_FOLDER, ignore_errors=True)  # nothing half-written
        raise
    if created:
        (Path(root) / DB_FOLDER / ".gitignore").write_text("# created by mcagent\n*\n")
    report.created = created
    return report


def _index(root: Path, walk: WalkResult, paths: list[str] | None, model: BaseModel,
           gist_model: GistModel, config: IndexConfig, progress: Progress, started: float,
           created: bool) -> IndexReport:
    """Prepare with the index open read-only, then write with it open for writing: the
    file is held for writing only as long as the write takes (readers such as `ask` wait
    for that, not for the chunking and gisting). If another process wrote in between,
    prepare again. A new or older-schema index, and a watcher's few files (quicker to do
    than to open the file twice), are prepared and written in one open."""
    path = db_path(root)
    small = paths is not None and len(paths) <= SMALL_UPDATE
    while not (created or small):
        try:
            with Store.open(path, read_only=True, wait=config.lock_wait) as store:
                work = _prepare(root, walk, paths, store, model, gist_model, config, progress,
                                started)
                generation = store.generation()
        except NotIndexed:
            break  # an older schema: migrate while writing
        with Store.open(path, wait=config.lock_wait) as store:
            if store.generation() == generation:
                return _commit(store, work)
    with Store.open(path, wait=config.lock_wait) as store:
        return _commit(store, _prepare(root, walk, paths, store, model, gist_model, config,
                                       progress, started))


@dataclass
class _Prepared:
    """Everything a run writes, computed before the index is opened for writing."""

    plan: _Plan
    trees: dict[str, FileTree]
    keys: dict[str, list[bytes]] | None = None  # None: nothing changed
    dirs: _DirNodes | None = None
    bank: _GistBank | None = None
    unused: set[bytes] = field(default_factory=set)
    meta: dict[str, str] = field(default_factory=dict)


def _prepare(root: Path, walk: WalkResult, paths: list[str] | None, store: Store,
             model: BaseModel, gist_model: GistModel, config: IndexConfig, progress: Progress,
             started: float) -> _Prepared:
    """Plan, chunk, tokenize and gist: reads the index, writes nothing."""
    if paths is not None and _model_changed(store, model, gist_model):
        walk, paths = list_files(root, config.walk), None  # every file must be rebuilt
    plan = _plan(root, walk, paths, store, model, gist_model, config, progress)
    plan.root, plan.started = root, started
    trees = _build_trees(plan, model, config, progress)
    if not plan.indexed_after():
        raise NothingToIndex(_nothing_message(root, Counter(plan.statuses().values())))
    if not plan.rows and not plan.deleted:
        return _Prepared(plan, trees)  # nothing changed: nothing to rebuild
    bank, work = _GistBank(store, model, gist_model, config), _Gisting()
    keys = _file_keys(trees, bank, work)
    dirs = _dir_nodes(plan, trees, store, bank, config, work)
    replaced = set(store.node_gist_keys(plan.replaced_ids())) | set(dirs.old_keys)
    roots = {r.root_gist for r in plan.previous.values() if r.root_gist is not None}
    _gist_all(work, bank, replaced | roots, progress)  # keys in use now are known to exist
    meta = {"base_model": model.id, "gist_model": gist_model.id, "gist_dim": str(model.dim),
            "gist_model_description": gist_model.description}
    return _Prepared(plan, trees, keys, dirs, bank, replaced - set(work.keys), meta)


def _commit(store: Store, p: _Prepared) -> IndexReport:
    if p.keys is None or p.dirs is None or p.bank is None:
        return _record(store, p.plan, p.trees, 0)
    return _write(store, p.plan, p.trees, p.keys, p.dirs, p.bank, p.unused, p.meta)


def _write(store: Store, plan: _Plan, trees: dict[str, FileTree], keys: dict[str, list[bytes]],
           dirs: _DirNodes, bank: _GistBank, unused: set[bytes], meta: dict[str, str]
           ) -> IndexReport:
    """Replace the changed files' rows, tokens and nodes, add the new gists, rebuild the
    directory nodes and record the run: one transaction."""
    for p, t in trees.items():
        plan.rows[p] |= {"n_tokens": len(t.tokens), "root_id": plan.ids[p] << LOCAL_BITS | t.root,
                         "root_level": int(t.level[-1]), "root_hash": t.hash[-1],
                         "root_gist": keys[p][-1]}
    with store.transaction():
        store.delete_files(plan.replaced_ids(), [plan.ids[p] for p in plan.touched])
        store.write_files(pa.Table.from_pylist(list(plan.rows.values()), schema=_FILES_SCHEMA))
        store.write_tokens([plan.ids[p] for p in trees], [t.tokens for t in trees.values()])
        for p, t in trees.items():
            store.write_nodes(_node_table(plan.ids[p], t, keys[p]))
        computed = store.write_gists(*bank.new_items(blocks=True), blocks=True)
        computed += store.write_gists(*bank.new_items(blocks=False), blocks=False)
        store.replace_dir_nodes(dirs.table)
        store.set_parents(dirs.root_ids, dirs.root_parents, dirs.root_ordinals)
        store.collect_gists(list(unused))  # queued; deleted in batches once unreferenced
        store.set_meta(meta)
        return _record(store, plan, trees, computed)


def _record(store: Store, plan: _Plan, trees: dict[str, FileTree], computed: int
            ) -> IndexReport:
    """The run's report, also recorded in the index (inside the caller's transaction)."""
    report = _report(plan.root, store, plan, trees, computed)
    report.seconds = time.perf_counter() - plan.started
    store.record_run(report.seconds, report.new, report.changed, report.deleted,
                     report.unchanged, report.tokens_processed, report.gists_computed)
    return report


# ---------------------------------------------------------------- 1. plan


@dataclass
class _Plan:
    """Per path: what the last run recorded, what is there now, and what to do."""

    previous: dict[str, FileRecord]
    root: Path = Path(".")
    started: float = 0.0  # perf_counter at the start of the run
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


def _plan(root: Path, walk: WalkResult, paths: list[str] | None, store: Store,
          model: BaseModel, gist_model: GistModel, config: IndexConfig, progress: Progress
          ) -> _Plan:
    previous = store.files()
    rebuild = _model_changed(store, model, gist_model)
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
    looked_at = previous if paths is None else [p for p in paths if p in previous]
    plan.deleted = [p for p in looked_at if p not in seen]
    return plan


def _model_changed(store: Store, model: BaseModel, gist_model: GistModel) -> bool:
    meta = store.meta()
    return meta.get("base_model") != model.id or meta.get("gist_model") != gist_model.id


# Skip reasons decided from a file's bytes: the same bytes give the same decision. The others
# (size limit, path rules) may change with the settings, so such a file is looked at again.
_CONTENT_DECISIONS = frozenset({INDEXED, Skip.BINARY, Skip.UNDECODABLE, Skip.MINIFIED})


def _plan_file(root: Path, entry: FileEntry, plan: _Plan, rebuild: bool,
               walk_config: WalkConfig) -> None:
    old = plan.previous.get(entry.path)
    same_stat = old is not None and (old.size, old.mtime_ns) == (entry.size, entry.mtime_ns) \
        and old.status in _CONTENT_DECISIONS
    if same_stat and not (rebuild and old.status == INDEXED):
        plan.unchanged.append(entry.path)
        return
    data = read_file(root, entry, walk_config)
    digest = hashlib.blake2b(data, digest_size=16).digest()
    text, reason = decode(data, walk_config)
    row = _row(plan.ids[entry.path], entry.path, reason or INDEXED, entry, digest, text)
    if old is not None and old.hash == digest and old.status in _CONTENT_DECISIONS \
            and not (rebuild and old.status == INDEXED):
        plan.unchanged.append(entry.path)  # touched, not changed: remember the new mtime
        plan.touched.add(entry.path)
        plan.rows[entry.path] = row | {
            "n_tokens": old.n_tokens, "root_id": old.root_id, "root_level": old.root_level,
            "root_hash": old.root_hash, "root_gist": old.root_gist}
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
        "root_id": None, "root_level": None, "root_hash": None, "root_gist": None,
    }


# ---------------------------------------------------------------- 2. chunk, tokenize, tree


def _build_trees(plan: _Plan, model: BaseModel, config: IndexConfig, progress: Progress
                 ) -> dict[str, FileTree]:
    """Chunk and tokenize the files to (re)build into their trees."""
    trees = file_trees(plan.texts, model, config.tree, config.files_per_batch, progress)
    plan.texts.clear()  # the trees hold what is needed now
    return trees


def file_trees(texts: dict[str, str], model: BaseModel, tree: TreeConfig | None = None,
               files_per_batch: int = 256, progress: Progress | None = None
               ) -> dict[str, FileTree]:
    """Chunk and tokenize files (path -> text) into their trees, in batches: what `index`
    stores, and what training reads."""
    tree = tree if tree is not None else TreeConfig()
    paths = list(texts)
    trees: dict[str, FileTree] = {}
    for lo in range(0, len(paths), files_per_batch):
        batch = paths[lo : lo + files_per_batch]
        chunked = [chunk_file(p, texts[p]) for p in batch]
        pieces = [header_text(p) for p in batch] + [c.text for cs in chunked for c in cs]
        encodings = model.encode(pieces)
        headers, rest = encodings[: len(batch)], encodings[len(batch) :]
        at = 0
        for path, chunks, header in zip(batch, chunked, headers, strict=True):
            trees[path] = build_file_tree(chunks, rest[at : at + len(chunks)], header,
                                          module_path(path), tree)
            at += len(chunks)
            assert len(trees[path].level) < 1 << LOCAL_BITS, f"{path}: too many nodes"
        if progress is not None:
            progress("chunk+tokenize", min(lo + len(batch), len(paths)), len(paths))
    return trees


# ---------------------------------------------------------------- 3. gists


class _GistBank:
    """Gists by key: stored ones (fetched only where a new parent needs them) and new ones.

    Keys are content addresses, so which nodes need a new gist is known before any is
    computed: one query finds the keys that exist, a second fetches the stored children of
    the nodes that are missing, and the rest is computed bottom-up in batches.
    """

    def __init__(self, store: Store, model: BaseModel, gist_model: GistModel,
                 config: IndexConfig) -> None:
        self.store, self.model, self.gist_model, self.config = store, model, gist_model, config
        self.existing: set[bytes] = set()
        self.stored: dict[bytes, np.ndarray] = {}
        self.new: dict[bytes, np.ndarray] = {}
        self.block_keys: set[bytes] = set()

    def key(self, content_hash: bytes, level: int) -> bytes:
        """hash(content, level, gist model, base model): the address of a node's gist."""
        salt = f"{level}|{self.gist_model.id}|{self.model.id}".encode()
        return hashlib.blake2b(content_hash + salt, digest_size=16).digest()

    def prepare(self, work: _Gisting, old_keys: set[bytes]) -> list[int]:
        """Positions in `work` to compute: missing gists (first occurrence each), and the
        stored blocks that a missing parent needs (recomputed from tokens, not rewritten).
        Fetches the stored node gists the missing parents need. `old_keys` are keys the
        replaced nodes used: they exist, so only the others are looked up."""
        everything = set(work.keys).union(*work.child_keys)  # dirs point at stored file roots
        unsure = everything - old_keys
        self.existing = (everything & old_keys) | self.store.existing_gist_keys(list(unsure))
        todo, seen = [], set()
        for i, k in enumerate(work.keys):
            if k not in self.existing and k not in seen:
                seen.add(k)
                todo.append(i)
        needed = {c for i in todo for c in work.child_keys[i] if c in self.existing}
        for i, k in enumerate(work.keys):
            if work.levels[i] == 1 and k in needed and k not in seen:
                seen.add(k)
                todo.append(i)
        blocks = {work.keys[i] for i in todo if work.levels[i] == 1}
        self.block_keys = blocks
        self.stored = self.store.gist_vectors(list(needed - blocks), self.model.dim)
        return todo

    def compute(self, keys: list[bytes], groups: list, level: int, from_tokens: bool) -> None:
        """Gist each group of children (token ids at level 1, else child gist keys), in
        batches of similar sizes: a batch is padded to its largest group, so shorter groups
        together pad less (a fifth less work for a repository's blocks; padding never
        changes a gist)."""
        B = self.config.gists_per_batch
        order = np.argsort([len(g) for g in groups], kind="stable")
        for lo in range(0, len(keys), B):
            at = order[lo : lo + B].tolist()
            batch = [groups[i] for i in at]
            x, mask = self._tokens(batch) if from_tokens else self._gists(batch)
            levels = torch.full((len(batch),), level, dtype=torch.long)
            with torch.no_grad():
                out = self.gist_model(x, mask, levels).to(torch.float16).numpy()
            for i, v in zip(at, out, strict=True):
                k = keys[i]
                (self.stored if k in self.existing else self.new)[k] = v

    def _tokens(self, groups: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) token embeddings of each group, zero-padded, and the (B, K) mask."""
        mask = _mask([len(g) for g in groups])
        ids = np.zeros(mask.shape, np.int64)
        ids[mask] = np.concatenate(groups)
        mask_t = torch.from_numpy(mask)
        return self.model.embeddings[torch.from_numpy(ids)] * mask_t[..., None], mask_t

    def _gists(self, groups: list[list[bytes]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) child gists of each group, zero-padded, and the (B, K) mask."""
        mask = _mask([len(g) for g in groups])
        flat = np.stack([self.new[k] if k in self.new else self.stored[k]
                         for g in groups for k in g])
        x = torch.zeros(*mask.shape, self.model.dim)
        x[torch.from_numpy(mask)] = torch.from_numpy(flat.astype(np.float32))
        return x, torch.from_numpy(mask)

    def new_items(self, blocks: bool) -> tuple[list[bytes], np.ndarray]:
        """New gists of blocks (level 1) or of nodes (levels ≥ 2), to write."""
        keys = [k for k in self.new if (k in self.block_keys) == blocks]
        vecs = np.stack([self.new[k] for k in keys]) if keys else np.zeros((0, self.model.dim))
        return keys, vecs.astype(np.float16)


def _mask(lengths: list[int]) -> np.ndarray:
    """(B, K) bool: True for the real children of each padded group."""
    lengths_a = np.asarray(lengths)
    K = int(lengths_a.max())
    assert K <= MAX_CHILDREN, f"a group of {K} children"
    return np.arange(K)[None, :] < lengths_a[:, None]


@dataclass
class _Gisting:
    """Every node this run writes (file nodes of rebuilt files, then directory nodes), as
    parallel lists in bottom-up order per part."""

    keys: list[bytes] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    groups: list = field(default_factory=list)  # token ids (blocks) or child gist keys
    child_keys: list[list[bytes]] = field(default_factory=list)

    def add(self, key: bytes, level: int, group: object, child_keys: list[bytes]) -> None:
        self.keys.append(key)
        self.levels.append(level)
        self.groups.append(group)
        self.child_keys.append(child_keys)


def _gist_all(work: _Gisting, bank: _GistBank, old_keys: set[bytes], progress: Progress
              ) -> None:
    """Compute the missing gists level by level (children always come first)."""
    todo = bank.prepare(work, old_keys)
    levels = sorted({work.levels[i] for i in todo})
    for done, level in enumerate(levels, 1):
        at = [i for i in todo if work.levels[i] == level]
        bank.compute([work.keys[i] for i in at], [work.groups[i] for i in at], level,
                     from_tokens=level == 1 and not work.child_keys[at[0]])
        progress("gist", done, len(levels))


def _file_keys(trees: dict[str, FileTree], bank: _GistBank, work: _Gisting
               ) -> dict[str, list[bytes]]:
    """Gist keys of every node of the rebuilt files; queues each node in `work`."""
    keys = {}
    for p, t in trees.items():
        ks = [bank.key(h, int(lv)) for h, lv in zip(t.hash, t.level, strict=True)]
        for i, k in enumerate(ks):
            if t.child_lo[i] < 0:
                work.add(k, 1, t.tokens[t.tok_start[i] : t.tok_end[i]], [])
            else:
                work.add(k, int(t.level[i]), ks[t.child_lo[i] : t.child_hi[i]],
                         ks[t.child_lo[i] : t.child_hi[i]])
        keys[p] = ks
    return keys


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
    ("root_id", pa.int64()), ("root_level", pa.int8()), ("root_hash", pa.binary(16)),
    ("root_gist", pa.binary(16)),
])


# ---------------------------------------------------------------- 4. directories


@dataclass
class _DirNodes:
    table: pa.Table
    root_ids: np.ndarray  # file root node ids …
    root_parents: np.ndarray  # … the directory node each now hangs under …
    root_ordinals: np.ndarray  # … and its position among that node's children
    old_keys: list[bytes]  # gist keys of the previous directory nodes (collect if unused)


def _dir_nodes(plan: _Plan, trees: dict[str, FileTree], store: Store, bank: _GistBank,
               config: IndexConfig, work: _Gisting) -> _DirNodes:
    """Rebuild the directory nodes over every indexed file's root; queues them in `work`."""
    replaced = set(plan.replaced())
    roots = {p: (r.root_id, r.root_level, r.root_hash, r.root_gist, r.n_tokens)
             for p, r in plan.previous.items() if r.status == INDEXED and p not in replaced}
    for p, t in trees.items():
        roots[p] = (plan.ids[p] << LOCAL_BITS | t.root, int(t.level[-1]), t.hash[-1],
                    bank.key(t.hash[-1], int(t.level[-1])), len(t.tokens))
    paths = sorted(roots, key=lambda p: tuple(p.split("/")))
    files = [FileRoot(p, roots[p][1], roots[p][2], roots[p][4]) for p in paths]
    tree = build_dir_tree(files, config.tree)
    keys = [bank.key(h, lv) for h, lv in zip(tree.hash, tree.level, strict=True)]
    for i, children in enumerate(tree.children):
        child_keys = [roots[paths[k]][3] if is_file else keys[k] for is_file, k in children]
        work.add(keys[i], tree.level[i], child_keys, child_keys)
    old = store.nodes(DIR_FILE_ID).column("gist_key").to_pylist()
    return _dir_table(tree, keys, [roots[p][0] for p in paths], old)


def _dir_table(tree: DirTree, keys: list[bytes], root_ids: list[int], old_keys: list[bytes]
               ) -> _DirNodes:
    n = len(tree.level)
    parent = np.full(n, -1, np.int64)
    ordinal = np.zeros(n, np.int32)
    file_parent = np.full(len(root_ids), -1, np.int64)
    file_ordinal = np.zeros(len(root_ids), np.int32)
    for i, children in enumerate(tree.children):
        for pos, (is_file, k) in enumerate(children):
            if is_file:
                file_parent[k], file_ordinal[k] = i, pos  # node id i: DIR_FILE_ID is 0
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
    return _DirNodes(table, ids[has_parent], file_parent[has_parent], file_ordinal[has_parent],
                     old_keys)


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


def pending_changes(root: Path, store: Store, config: IndexConfig = IndexConfig(),
                    rehash: bool = False) -> Changes:
    """Compare the work tree with the index: stat first, bytes only where the stat differs
    (or, with `rehash`, the bytes of every file: a content hash that no longer matches is a
    change whatever the stat says)."""
    walk = list_files(root, config.walk)
    previous = store.files()
    changes = Changes()
    for entry in walk.files:
        old = previous.get(entry.path)
        if old is None:
            changes.new.append(entry.path)
        elif rehash or (old.size, old.mtime_ns) != (entry.size, entry.mtime_ns):
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
