"""The MegaContext store: the index, one DuckDB file at `.mcagent/index.duckdb`, and the
agent's session log beside it (`SessionStore`, `.mcagent/sessions.duckdb`). All SQL lives here.

Data model
- `files`: every path the last index run saw, indexed (`status = 'indexed'`) or skipped
  (`status` = the skip reason), with its size, mtime and content hash, so the next run
  reprocesses only what changed. `file_id` is stable across runs for a path.
- `tokens`: the token ids (int32, little-endian) of each indexed file's document (header +
  text), one blob per file; node token spans index into it.
- `nodes`: the MegaContext Tree. `node_id = file_id << 20 | local index` for file nodes,
  `file_id = 0` for directory nodes (rewritten each run; there are few). Spans are
  relative to the file; `hash` is the content hash; `gist_key` names the node's gist.
- `block_gists` (level 1) and `gists` (levels ≥ 2): content-addressed vectors (float16,
  little-endian, width D), keyed by hash(content hash, level, gist model id, base model id):
  unchanged content keeps its gist byte for byte, and identical blocks anywhere share one
  row. Blocks are ~97% of all gists and an update never needs to read them back (a changed
  file's blocks are recomputed from its tokens when a parent needs them), so they live
  apart and the update path only reads the small `gists` table: DuckDB scans a whole vector
  column to fetch a few rows, and that scan must stay small.
- `meta`: base model id, gist model id, width; `index_runs`: one row per index run.
- `gist_garbage`: keys that lost a referencing node. Collecting means scanning every node,
  so it waits until enough have piled up (`GARBAGE_BATCH`); until then a reverted edit
  finds its old gists still there.
- `migrations`: the numbered migrations applied; a newer file than this code is refused.

Writes go in bulk through Arrow (row-by-row inserts are about 1,000× slower); an index run
is one transaction. DuckDB lets one process write; a second one fails to open the file,
which we report as `StoreLocked`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from megacontext.errors import NotIndexed, SchemaTooNew, StoreCorrupt, StoreLocked

DB_FOLDER = ".mcagent"
DB_NAME = "index.duckdb"
DIR_FILE_ID = 0
LOCAL_BITS = 20  # node_id = file_id << LOCAL_BITS | local index
_FEW_KEYS = 256  # key sets up to this size are looked up through the index
GARBAGE_BATCH = 4096  # collect unreferenced gists once this many candidates wait

MIGRATIONS: list[str] = [
    # 1: the tree
    """
    CREATE TABLE meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL);
    CREATE TABLE files (
        file_id BIGINT NOT NULL, path VARCHAR NOT NULL, status VARCHAR NOT NULL,
        language VARCHAR, size BIGINT, mtime_ns BIGINT, hash BLOB,
        n_tokens INTEGER, n_lines INTEGER,
        root_id BIGINT, root_level TINYINT, root_hash BLOB, root_gist BLOB);
    CREATE TABLE tokens (file_id BIGINT NOT NULL, ids BLOB NOT NULL);
    CREATE TABLE nodes (
        node_id BIGINT NOT NULL, file_id BIGINT NOT NULL, parent_id BIGINT,
        level TINYINT NOT NULL, ordinal INTEGER NOT NULL,
        tok_start INTEGER NOT NULL, tok_end INTEGER NOT NULL,
        line_start INTEGER, line_end INTEGER, symbol VARCHAR, kind VARCHAR,
        hash BLOB NOT NULL, gist_key BLOB NOT NULL);
    CREATE TABLE block_gists (gist_key BLOB NOT NULL,
                              vec BLOB NOT NULL USING COMPRESSION uncompressed);
    CREATE TABLE gists (gist_key BLOB NOT NULL, vec BLOB NOT NULL USING COMPRESSION uncompressed);
    CREATE INDEX block_gists_key ON block_gists (gist_key);
    CREATE INDEX gists_key ON gists (gist_key);
    """,
    # 2: a record of each index run, for `status`; gists waiting to be collected
    """
    CREATE TABLE index_runs (
        finished_at TIMESTAMP NOT NULL, seconds DOUBLE NOT NULL,
        files_new INTEGER NOT NULL, files_changed INTEGER NOT NULL,
        files_deleted INTEGER NOT NULL, files_unchanged INTEGER NOT NULL,
        tokens_processed BIGINT NOT NULL, gists_computed INTEGER NOT NULL);
    CREATE TABLE gist_garbage (gist_key BLOB NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class FileRecord(NamedTuple):
    """What the store remembers of one path (a tuple: thousands are built per run)."""

    file_id: int
    path: str
    status: str
    language: str | None
    size: int
    mtime_ns: int
    hash: bytes | None
    n_tokens: int
    root_id: int | None
    root_level: int | None
    root_hash: bytes | None
    root_gist: bytes | None


def db_path(root: Path) -> Path:
    return Path(root) / DB_FOLDER / DB_NAME


class Store:
    """An open index database."""

    NOUN = "index"  # what error messages call the file
    REMEDY = "delete {path.parent} to rebuild it"

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path, read_only: bool = False, migrations: list[str] = MIGRATIONS,
             wait: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Store:
        """Open (and, when writable, create or migrate) the database at `path`. While another
        process holds it, retry with backoff for up to `wait` seconds (telling `on_wait` who
        holds it, once) before giving up with StoreLocked."""
        deadline = time.monotonic() + wait
        delay = 0.02
        while True:
            try:
                return cls._open(path, read_only, migrations)
            except StoreLocked as e:
                if time.monotonic() + delay > deadline:
                    raise
                if on_wait is not None:
                    on_wait(str(e))
                    on_wait = None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @classmethod
    def _open(cls, path: Path, read_only: bool, migrations: list[str]) -> Store:
        path = Path(path)
        if read_only and not path.exists():
            raise NotIndexed(f"no index at {path.parent.parent}: run `mcagent index` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path), read_only=read_only, config={"threads": 1})
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreLocked(
                    f"the {cls.NOUN} {path} is in use by another mcagent process "
                    f"({_lock_holder(str(e))}); wait for it to finish or stop it"
                ) from None
            raise StoreCorrupt(f"cannot open the {cls.NOUN} {path}: {str(e).splitlines()[0]}; "
                               f"{cls.REMEDY.format(path=path)}") from None
        except duckdb.Error as e:
            raise StoreCorrupt(f"cannot open the {cls.NOUN} {path}: {str(e).splitlines()[0]}; "
                               f"{cls.REMEDY.format(path=path)}") from None
        store = cls(con, path)
        store._check_schema(read_only, migrations)
        return store

    def _check_schema(self, read_only: bool, migrations: list[str]) -> None:
        version = self.schema_version()
        if version > len(migrations):
            self.close()
            raise SchemaTooNew(
                f"the {self.NOUN} {self.path} was written by a newer mcagent (schema {version}, "
                f"this one knows {len(migrations)}): upgrade mcagent, or delete "
                f"{self.path.parent} to rebuild the index"
            )
        if version < len(migrations):
            if read_only:
                self.close()
                raise NotIndexed(f"the index {self.path} is from an older mcagent: run "
                                 "`mcagent index` to upgrade it")
            self._migrate(version, migrations)

    def schema_version(self) -> int:
        try:
            rows = self.con.execute("SELECT coalesce(max(version), 0) FROM migrations").fetchall()
        except duckdb.CatalogException:
            return 0  # a new, empty database
        return int(rows[0][0])

    def _migrate(self, version: int, migrations: list[str]) -> None:
        with self.transaction():
            self.con.execute("CREATE TABLE IF NOT EXISTS migrations "
                             "(version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)")
            for number in range(version + 1, len(migrations) + 1):
                self.con.execute(migrations[number - 1])
                self.con.execute("INSERT INTO migrations VALUES (?, now())", [number])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # ------------------------------------------------------------ meta

    def meta(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        keys = list(values)
        self.con.execute("DELETE FROM meta WHERE key IN (SELECT unnest(?))", [keys])
        self.con.execute("INSERT INTO meta SELECT unnest(?), unnest(?)",
                         [keys, [values[k] for k in keys]])

    # ------------------------------------------------------------ files

    def files(self) -> dict[str, FileRecord]:
        rows = self.con.execute(
            "SELECT file_id, path, status, language, size, mtime_ns, hash, "
            "coalesce(n_tokens, 0), root_id, "
            "root_level, root_hash, root_gist FROM files"
        ).fetchall()
        return {r[1]: FileRecord._make(r) for r in rows}

    def delete_files(self, file_ids: list[int], row_only_ids: list[int] = ()) -> None:
        """Remove files with their tokens and nodes (their gists stay until collected), and
        the rows alone of `row_only_ids` (files about to be rewritten with a new mtime)."""
        for ids, tables in ((file_ids, ("files", "tokens", "nodes")), (row_only_ids, ("files",))):
            if not ids:
                continue
            gone = pa.table({"file_id": pa.array(list(ids), pa.int64())})
            with self._registered("gone", gone):
                for table in tables:
                    self.con.execute(
                        f"DELETE FROM {table} WHERE file_id IN (SELECT file_id FROM gone)")

    def write_files(self, table: pa.Table) -> None:
        self._insert("files", table)

    def write_tokens(self, file_ids: list[int], token_arrays: list[np.ndarray]) -> None:
        if not file_ids:
            return
        blobs = pa.array([a.astype("<i4").tobytes() for a in token_arrays], pa.binary())
        self._insert("tokens", pa.table({"file_id": pa.array(file_ids, pa.int64()),
                                         "ids": blobs}))

    def all_tokens(self) -> dict[int, np.ndarray]:
        """Token ids of every indexed file, by file_id (one scan)."""
        rows = self.con.execute("SELECT file_id, ids FROM tokens").fetchall()
        return {f: np.frombuffer(b, "<i4") for f, b in rows}

    def file_tokens(self, file_id: int) -> np.ndarray:
        rows = self.con.execute("SELECT ids FROM tokens WHERE file_id = ?", [file_id]).fetchall()
        return np.frombuffer(rows[0][0], "<i4") if rows else np.zeros(0, np.int32)

    # ------------------------------------------------------------ nodes

    def write_nodes(self, table: pa.Table) -> None:
        self._insert("nodes", table)

    def replace_dir_nodes(self, table: pa.Table) -> None:
        self.con.execute("DELETE FROM nodes WHERE file_id = ?", [DIR_FILE_ID])
        self._insert("nodes", table)

    def set_parents(self, node_ids: np.ndarray, parent_ids: np.ndarray, ordinals: np.ndarray
                    ) -> None:
        """Point file roots at their (rebuilt) directory nodes and positions there."""
        links = pa.table({"node_id": pa.array(node_ids, pa.int64()),
                          "parent_id": pa.array(parent_ids, pa.int64()),
                          "ordinal": pa.array(ordinals, pa.int32())})
        with self._registered("links", links):
            self.con.execute(
                "UPDATE nodes SET parent_id = links.parent_id, ordinal = links.ordinal "
                "FROM links WHERE nodes.node_id = links.node_id "
                "AND (nodes.parent_id IS DISTINCT FROM links.parent_id "
                "OR nodes.ordinal <> links.ordinal)")

    def tree_table(self) -> pa.Table:
        """What focusing needs of every node, ordered by node id."""
        return self.con.sql(
            "SELECT node_id, parent_id, ordinal, level, file_id, tok_start, tok_end, "
            "line_start, line_end, symbol, kind, gist_key FROM nodes ORDER BY node_id"
        ).to_arrow_table()

    def paths(self) -> dict[int, str]:
        """file_id -> path of the indexed files."""
        return dict(self.con.execute(
            "SELECT file_id, path FROM files WHERE status = 'indexed'").fetchall())


    def nodes(self, file_id: int | None = None) -> pa.Table:
        """Every node (or one file's), ordered by node id."""
        where = "" if file_id is None else f"WHERE file_id = {int(file_id)}"
        return self.con.sql(f"SELECT * FROM nodes {where} ORDER BY node_id").to_arrow_table()

    def node_gist_keys(self, file_ids: list[int]) -> list[bytes]:
        if not file_ids:
            return []
        ids = pa.table({"file_id": pa.array(file_ids, pa.int64())})
        with self._registered("wanted", ids):
            rows = self.con.execute("SELECT DISTINCT gist_key FROM nodes "
                                    "WHERE file_id IN (SELECT file_id FROM wanted)").fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------ gists

    def existing_gist_keys(self, keys: list[bytes]) -> set[bytes]:
        """The keys (of any level) that have a stored gist."""
        rows = self._by_keys("SELECT gist_key FROM block_gists WHERE gist_key IN {keys} "
                             "UNION ALL SELECT gist_key FROM gists WHERE gist_key IN {keys}", keys)
        return {r[0] for r in rows}

    def gist_vectors(self, keys: list[bytes], dim: int, blocks: bool = False
                     ) -> dict[bytes, np.ndarray]:
        """float16 vectors of the given node keys (or block keys) that exist."""
        table = "block_gists" if blocks else "gists"
        rows = self._by_keys(f"SELECT gist_key, vec FROM {table} WHERE gist_key IN {{keys}}",
                             keys)
        return {k: np.frombuffer(v, "<f2", count=dim) for k, v in rows}

    def _by_keys(self, sql: str, keys: list[bytes]) -> list[tuple]:
        """Run `sql` with `{keys}` bound to a key set: a few keys go as parameters (DuckDB
        looks them up in the key index), many through a registered table (a hash join)."""
        keys = list(set(keys))
        if not keys:
            return []
        if len(keys) <= _FEW_KEYS:
            marks = "(" + ", ".join("?" * len(keys)) + ")"
            return self.con.execute(sql.format(keys=marks), keys * sql.count("{keys}")
                                    ).fetchall()
        with self._registered("wanted", _keys_table(keys)):
            return self.con.execute(sql.format(keys="(SELECT gist_key FROM wanted)")).fetchall()

    def gists_by_node(self, dim: int, blocks: bool) -> tuple[np.ndarray, np.ndarray]:
        """Every node's stored gist, blocks' or higher nodes': (node ids, (n, dim) float16),
        read in one scan (a few keys at a time cost ~0.1 ms each, a scan ~1 µs a row)."""
        table = "block_gists" if blocks else "gists"
        level = "= 1" if blocks else "> 1"
        rows = self.con.sql(f"SELECT n.node_id, g.vec FROM nodes n JOIN {table} g "
                            f"ON n.gist_key = g.gist_key WHERE n.level {level}").to_arrow_table()
        return rows.column("node_id").to_numpy(), _fp16_rows(rows.column("vec"), dim)

    def write_gists(self, keys: list[bytes], vectors: np.ndarray, blocks: bool) -> int:
        """Insert vectors (N, D) float16 under keys that are not stored (the caller checked
        with `existing_gist_keys`: one process writes at a time); returns how many."""
        if not keys:
            return 0
        n, dim = vectors.shape
        assert n == len(keys), f"{n} vectors for {len(keys)} keys"
        flat = np.ascontiguousarray(vectors, dtype="<f2")
        vec = pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * dim), n,
                                                   [None, pa.py_buffer(flat.tobytes())])
        table = pa.table({"gist_key": _keys_table(keys)["gist_key"], "vec": vec})
        self._insert("block_gists" if blocks else "gists", table)
        return n

    def collect_gists(self, candidates: list[bytes], force: bool = False) -> int:
        """Queue gists that may have lost their last node; once `GARBAGE_BATCH` wait (or when
        forced), delete those that no node references. Returns how many were deleted."""
        if candidates:
            self._insert("gist_garbage", _keys_table(list(set(candidates))))
        if not force and self.count("gist_garbage") < GARBAGE_BATCH:
            return 0
        before = self.count("gists") + self.count("block_gists")
        self.con.execute("CREATE TEMP TABLE unused AS SELECT DISTINCT gist_key FROM gist_garbage "
                         "WHERE gist_key NOT IN (SELECT n.gist_key FROM nodes n "
                         "JOIN gist_garbage g ON n.gist_key = g.gist_key)")
        try:
            for table in ("block_gists", "gists"):
                self.con.execute(f"DELETE FROM {table} "
                                 "WHERE gist_key IN (SELECT gist_key FROM unused)")
            self.con.execute("DELETE FROM gist_garbage")
        finally:
            self.con.execute("DROP TABLE unused")
        return before - self.count("gists") - self.count("block_gists")

    # ------------------------------------------------------------ reports

    def record_run(self, seconds: float, new: int, changed: int, deleted: int,
                   unchanged: int, tokens: int, gists: int) -> None:
        self.con.execute("INSERT INTO index_runs VALUES (now(), ?, ?, ?, ?, ?, ?, ?)",
                         [seconds, new, changed, deleted, unchanged, tokens, gists])

    def generation(self) -> int:
        """Grows with every committed index run: equal numbers, the same index."""
        return self.count("index_runs")

    def last_run(self) -> dict[str, object] | None:
        cur = self.con.execute("SELECT * FROM index_runs ORDER BY finished_at DESC LIMIT 1")
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def count(self, table: str) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def summary(self) -> dict[str, object]:
        """Counts for `status` and the index report."""
        by_language: dict[str, int] = {}
        skipped: dict[str, int] = {}
        tokens = 0
        for status, language, n, n_tokens in self.con.execute(
            "SELECT status, language, count(*), coalesce(sum(n_tokens), 0) FROM files "
            "GROUP BY ALL ORDER BY count(*) DESC, status, language"
        ).fetchall():
            if status == "indexed":
                by_language[language] = by_language.get(language, 0) + n
                tokens += n_tokens
            else:
                skipped[status] = skipped.get(status, 0) + n
        levels = self.con.execute(
            "SELECT level, count(*) FROM nodes GROUP BY level ORDER BY level").fetchall()
        gists = self.con.execute("SELECT (SELECT count(*) FROM gists) + "
                                 "(SELECT count(*) FROM block_gists)").fetchall()[0][0]
        return {
            "files": sum(by_language.values()), "files_by_language": by_language,
            "skipped": skipped, "tokens": int(tokens),
            "nodes_by_level": {int(k): v for k, v in levels}, "gists": int(gists),
        }

    def integrity(self) -> list[str]:
        """What is inconsistent inside the index (empty when nothing is), one line each."""
        checks = [
            ("indexed files without their tokens",
             "SELECT f.path FROM files f LEFT JOIN tokens t USING (file_id) "
             "WHERE f.status = 'indexed' AND (t.ids IS NULL OR octet_length(t.ids) "
             "<> 4 * f.n_tokens)"),
            ("indexed files without their root node",
             "SELECT f.path FROM files f LEFT JOIN nodes n ON n.node_id = f.root_id "
             "WHERE f.status = 'indexed' AND n.node_id IS NULL"),
            ("nodes of files that are not indexed",
             "SELECT DISTINCT coalesce(f.path, 'file ' || n.file_id) FROM nodes n "
             "LEFT JOIN files f USING (file_id) WHERE n.file_id > 0 "
             "AND (f.status IS NULL OR f.status <> 'indexed')"),
            ("nodes whose parent is missing",
             "SELECT 'node ' || n.node_id FROM nodes n LEFT JOIN nodes p "
             "ON p.node_id = n.parent_id WHERE n.parent_id IS NOT NULL AND p.node_id IS NULL"),
            ("nodes without a gist",
             "SELECT 'node ' || n.node_id FROM nodes n WHERE NOT EXISTS "
             "(SELECT 1 FROM block_gists g WHERE g.gist_key = n.gist_key) AND NOT EXISTS "
             "(SELECT 1 FROM gists g WHERE g.gist_key = n.gist_key)"),
            ("nodes without a parent (there must be exactly one root)",
             "SELECT count(*) FROM nodes WHERE parent_id IS NULL HAVING count(*) <> 1"),
        ]
        problems = []
        for what, sql in checks:
            found = [r[0] for r in self.con.execute(sql + " LIMIT 6").fetchall()]
            if found:
                more = ", …" if len(found) > 5 else ""
                problems.append(f"{what}: {', '.join(map(str, found[:5]))}{more}")
        return problems

    # ------------------------------------------------------------ helpers

    def _insert(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        with self._registered("incoming", rows):
            columns = ", ".join(rows.column_names)
            self.con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming")

    @contextlib.contextmanager
    def _registered(self, name: str, table: pa.Table) -> Iterator[None]:
        self.con.register(name, table)
        try:
            yield
        finally:
            self.con.unregister(name)


# ---------------------------------------------------------------- agent sessions

SESSION_DB = "sessions.duckdb"
SESSION_MIGRATIONS: list[str] = [
    # 1: sessions and their turns
    """
    CREATE TABLE sessions (
        session_id INTEGER NOT NULL, started_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
        repository VARCHAR NOT NULL, question VARCHAR NOT NULL, settings VARCHAR NOT NULL,
        status VARCHAR NOT NULL, answer VARCHAR);
    CREATE TABLE turns (
        session_id INTEGER NOT NULL, turn INTEGER NOT NULL, kind VARCHAR NOT NULL,
        text VARCHAR NOT NULL, observation VARCHAR, record VARCHAR NOT NULL);
    """,
]


def sessions_path(root: Path) -> Path:
    return Path(root) / DB_FOLDER / SESSION_DB


class SessionStore(Store):
    """The agent's sessions, in their own file beside the index: a watcher writing the index
    never blocks a session's log, and rebuilding the index keeps the sessions. Records are
    JSON text; each is written as it happens, so a killed session keeps its steps."""

    NOUN = "session log"
    REMEDY = "move {path} away to start a new log"

    @classmethod
    def open_log(cls, root: Path, wait: float = 0.0) -> SessionStore:
        return cls.open(sessions_path(root), migrations=SESSION_MIGRATIONS, wait=wait)

    def new_session(self, repository: str, question: str, settings: str) -> int:
        with self.transaction():
            (last,) = self.con.execute(
                "SELECT coalesce(max(session_id), 0) FROM sessions").fetchone()
            self.con.execute("INSERT INTO sessions VALUES (?, now(), now(), ?, ?, ?, ?, NULL)",
                             [last + 1, repository, question, settings, "running"])
        return int(last + 1)

    def add_turn(self, session_id: int, kind: str, text: str, observation: str | None,
                 record: str) -> int:
        with self.transaction():
            (turn,) = self.con.execute("SELECT count(*) FROM turns WHERE session_id = ?",
                                       [session_id]).fetchone()
            self.con.execute("INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?)",
                             [session_id, turn, kind, text, observation, record])
            self.con.execute("UPDATE sessions SET updated_at = now() WHERE session_id = ?",
                             [session_id])
        return int(turn)

    def finish(self, session_id: int, status: str, answer: str | None) -> None:
        self.con.execute("UPDATE sessions SET status = ?, answer = ?, updated_at = now() "
                         "WHERE session_id = ?", [status, answer, session_id])

    def last_session(self) -> int | None:
        row = self.con.execute("SELECT session_id FROM sessions "
                               "ORDER BY updated_at DESC, session_id DESC LIMIT 1").fetchone()
        return int(row[0]) if row else None

    def session(self, session_id: int) -> dict[str, object] | None:
        cur = self.con.execute("SELECT * FROM sessions WHERE session_id = ?", [session_id])
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
        return dict(zip(names, row, strict=True)) if row else None

    def turns(self, session_id: int) -> list[dict[str, object]]:
        cur = self.con.execute("SELECT turn, kind, text, observation, record FROM turns "
                               "WHERE session_id = ? ORDER BY turn", [session_id])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def sessions(self, limit: int = 20) -> list[dict[str, object]]:
        cur = self.con.execute(
            "SELECT s.session_id, s.started_at, s.question, s.status, "
            "(SELECT count(*) FROM turns t WHERE t.session_id = s.session_id "
            " AND t.kind = 'action') AS steps FROM sessions s "
            "ORDER BY s.session_id DESC LIMIT ?", [limit])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _fp16_rows(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A column of float16 vectors stored as blobs -> (n, dim) array over the same memory."""
    values = column.combine_chunks()
    n = len(values)
    if n == 0:
        return np.zeros((0, dim), np.float16)
    width = 8 if pa.types.is_large_binary(values.type) else 4
    offsets = np.frombuffer(values.buffers()[1], f"<i{width}")
    offsets = offsets[values.offset : values.offset + n + 1]
    assert bool((np.diff(offsets) == 2 * dim).all()), f"stored gists are not {dim}-wide"
    data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return data.view("<f2").reshape(n, dim)


def _keys_table(keys: list[bytes]) -> pa.Table:
    return pa.table({"gist_key": pa.array(keys, pa.binary(16))})


def _lock_holder(message: str) -> str:
    """The 'PID n' part of DuckDB's lock error, when it names one."""
    marker = "PID "
    if marker in message:
        pid = message.split(marker, 1)[1].split(")")[0].split()[0]
        return f"PID {pid}"
    return "another process"
