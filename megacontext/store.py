"""The MegaContext store: one DuckDB file at `.mcagent/index.duckdb`. All SQL lives here.

Data model
- `files`: every path the last index run saw, indexed (`status = 'indexed'`) or skipped
  (`status` = the skip reason), with its size, mtime and content hash, so the next run
  reprocesses only what changed. `file_id` is stable across runs for a path.
- `tokens`: the token ids (int32, little-endian) of each indexed file's document (header +
  text), one blob per file; node token spans index into it.
- `nodes`: the MegaContext Tree. `node_id = file_id << 20 | local index` for file nodes,
  `file_id = 0` for directory nodes (rewritten each run; there are few). Spans are
  relative to the file; `hash` is the content hash; `gist_key` names the node's gist.
- `gists`: content-addressed vectors (float16, little-endian, width D), keyed by
  hash(content hash, level, gist model id, base model id): unchanged content keeps its gist
  byte for byte, and identical blocks anywhere share one row.
- `meta`: base model id, gist model id, width; `index_runs`: one row per index run.
- `migrations`: the numbered migrations applied; a newer file than this code is refused.

Writes go in bulk through Arrow (row-by-row inserts are about 1,000× slower); an index run
is one transaction. DuckDB lets one process write; a second one fails to open the file,
which we report as `StoreLocked`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from megacontext.errors import NotIndexed, SchemaTooNew, StoreCorrupt, StoreLocked

DB_FOLDER = ".mcagent"
DB_NAME = "index.duckdb"
DIR_FILE_ID = 0
LOCAL_BITS = 20  # node_id = file_id << LOCAL_BITS | local index

MIGRATIONS: list[str] = [
    # 1: the tree
    """
    CREATE TABLE meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL);
    CREATE TABLE files (
        file_id BIGINT NOT NULL, path VARCHAR NOT NULL, status VARCHAR NOT NULL,
        language VARCHAR, size BIGINT, mtime_ns BIGINT, hash BLOB,
        n_tokens INTEGER, n_lines INTEGER, root_id BIGINT);
    CREATE TABLE tokens (file_id BIGINT NOT NULL, ids BLOB NOT NULL);
    CREATE TABLE nodes (
        node_id BIGINT NOT NULL, file_id BIGINT NOT NULL, parent_id BIGINT,
        level TINYINT NOT NULL, ordinal INTEGER NOT NULL,
        tok_start INTEGER NOT NULL, tok_end INTEGER NOT NULL,
        line_start INTEGER, line_end INTEGER, symbol VARCHAR, kind VARCHAR,
        hash BLOB NOT NULL, gist_key BLOB NOT NULL);
    CREATE TABLE gists (gist_key BLOB NOT NULL, vec BLOB NOT NULL);
    """,
    # 2: a record of each index run, for `status`
    """
    CREATE TABLE index_runs (
        finished_at TIMESTAMP NOT NULL, seconds DOUBLE NOT NULL,
        files_new INTEGER NOT NULL, files_changed INTEGER NOT NULL,
        files_deleted INTEGER NOT NULL, files_unchanged INTEGER NOT NULL,
        tokens_processed BIGINT NOT NULL, gists_computed INTEGER NOT NULL);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """What the store remembers of one path."""

    file_id: int
    path: str
    status: str
    language: str | None
    size: int
    mtime_ns: int
    hash: bytes | None
    n_tokens: int
    root_id: int | None


def db_path(root: Path) -> Path:
    return Path(root) / DB_FOLDER / DB_NAME


class Store:
    """An open index database."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path, read_only: bool = False, migrations: list[str] = MIGRATIONS
             ) -> Store:
        """Open (and, when writable, create or migrate) the database at `path`."""
        path = Path(path)
        if read_only and not path.exists():
            raise NotIndexed(f"no index at {path.parent.parent}: run `mcagent index` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreLocked(
                    f"the index {path} is in use by another mcagent process "
                    f"({_lock_holder(str(e))}); wait for it to finish or stop it"
                ) from None
            raise StoreCorrupt(f"cannot open the index {path}: {str(e).splitlines()[0]}; "
                               f"delete {path.parent} to rebuild it") from None
        except duckdb.Error as e:
            raise StoreCorrupt(f"cannot open the index {path}: {str(e).splitlines()[0]}; "
                               f"delete {path.parent} to rebuild it") from None
        store = cls(con, path)
        store._check_schema(read_only, migrations)
        return store

    def _check_schema(self, read_only: bool, migrations: list[str]) -> None:
        version = self.schema_version()
        if version > len(migrations):
            self.close()
            raise SchemaTooNew(
                f"the index {self.path} was written by a newer mcagent (schema {version}, "
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
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'migrations'"
        ).fetchall()[0][0]
        if not exists:
            return 0
        return int(self.con.execute("SELECT coalesce(max(version), 0) FROM migrations")
                   .fetchall()[0][0])

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
        for key, value in values.items():
            self.con.execute("DELETE FROM meta WHERE key = ?", [key])
            self.con.execute("INSERT INTO meta VALUES (?, ?)", [key, value])

    # ------------------------------------------------------------ files

    def files(self) -> dict[str, FileRecord]:
        rows = self.con.execute(
            "SELECT file_id, path, status, language, size, mtime_ns, hash, n_tokens, root_id "
            "FROM files"
        ).fetchall()
        return {r[1]: FileRecord(*r[:7], r[7] or 0, r[8]) for r in rows}

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

    def file_tokens(self, file_id: int) -> np.ndarray:
        rows = self.con.execute("SELECT ids FROM tokens WHERE file_id = ?", [file_id]).fetchall()
        return np.frombuffer(rows[0][0], "<i4") if rows else np.zeros(0, np.int32)

    # ------------------------------------------------------------ nodes

    def write_nodes(self, table: pa.Table) -> None:
        self._insert("nodes", table)

    def replace_dir_nodes(self, table: pa.Table) -> None:
        self.con.execute("DELETE FROM nodes WHERE file_id = ?", [DIR_FILE_ID])
        self._insert("nodes", table)

    def set_parents(self, node_ids: np.ndarray, parent_ids: np.ndarray) -> None:
        """Point file roots at their (rebuilt) directory nodes."""
        links = pa.table({"node_id": pa.array(node_ids, pa.int64()),
                          "parent_id": pa.array(parent_ids, pa.int64())})
        with self._registered("links", links):
            self.con.execute(
                "UPDATE nodes SET parent_id = links.parent_id FROM links "
                "WHERE nodes.node_id = links.node_id "
                "AND nodes.parent_id IS DISTINCT FROM links.parent_id")

    def file_roots(self) -> pa.Table:
        """path, file_id, root_id, level, hash, gist_key, n_tokens of every indexed file."""
        return self.con.sql(
            "SELECT f.path, f.file_id, f.root_id, n.level, n.hash, n.gist_key, f.n_tokens "
            "FROM files f JOIN nodes n ON n.node_id = f.root_id WHERE f.status = 'indexed'"
        ).to_arrow_table()

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
        if not keys:
            return set()
        with self._registered("wanted", _keys_table(keys)):
            rows = self.con.execute(
                "SELECT gist_key FROM gists WHERE gist_key IN (SELECT gist_key FROM wanted)"
            ).fetchall()
        return {r[0] for r in rows}

    def gist_vectors(self, keys: list[bytes], dim: int) -> dict[bytes, np.ndarray]:
        """float16 vectors of the given keys that exist."""
        if not keys:
            return {}
        with self._registered("wanted", _keys_table(keys)):
            rows = self.con.execute(
                "SELECT gist_key, vec FROM gists WHERE gist_key IN (SELECT gist_key FROM wanted)"
            ).fetchall()
        return {k: np.frombuffer(v, "<f2", count=dim) for k, v in rows}

    def write_gists(self, keys: list[bytes], vectors: np.ndarray) -> int:
        """Insert vectors (N, D) float16 under keys not yet stored; returns how many were new."""
        if not keys:
            return 0
        n, dim = vectors.shape
        assert n == len(keys), f"{n} vectors for {len(keys)} keys"
        flat = np.ascontiguousarray(vectors, dtype="<f2")
        vec = pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * dim), n,
                                                   [None, pa.py_buffer(flat.tobytes())])
        table = pa.table({"gist_key": _keys_table(keys)["gist_key"], "vec": vec})
        before = self.count("gists")
        with self._registered("incoming", table):
            self.con.execute("INSERT INTO gists SELECT gist_key, vec FROM incoming "
                             "WHERE gist_key NOT IN (SELECT gist_key FROM gists)")
        return self.count("gists") - before

    def collect_gists(self, candidates: list[bytes]) -> int:
        """Delete the candidate gists that no node references any more."""
        if not candidates:
            return 0
        before = self.count("gists")
        with self._registered("maybe", _keys_table(candidates)):
            self.con.execute(
                "DELETE FROM gists WHERE gist_key IN (SELECT gist_key FROM maybe) "
                "AND gist_key NOT IN (SELECT n.gist_key FROM nodes n "
                "JOIN maybe m ON n.gist_key = m.gist_key)")
        return before - self.count("gists")

    # ------------------------------------------------------------ reports

    def record_run(self, seconds: float, new: int, changed: int, deleted: int,
                   unchanged: int, tokens: int, gists: int) -> None:
        self.con.execute("INSERT INTO index_runs VALUES (now(), ?, ?, ?, ?, ?, ?, ?)",
                         [seconds, new, changed, deleted, unchanged, tokens, gists])

    def last_run(self) -> dict[str, object] | None:
        cur = self.con.execute("SELECT * FROM index_runs ORDER BY finished_at DESC LIMIT 1")
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def count(self, table: str) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def summary(self) -> dict[str, object]:
        """Counts for `status` and the index report."""
        by_language = dict(self.con.execute(
            "SELECT language, count(*) FROM files WHERE status = 'indexed' "
            "GROUP BY language ORDER BY count(*) DESC, language").fetchall())
        skipped = dict(self.con.execute(
            "SELECT status, count(*) FROM files WHERE status <> 'indexed' "
            "GROUP BY status ORDER BY count(*) DESC, status").fetchall())
        levels = dict(self.con.execute(
            "SELECT level, count(*) FROM nodes GROUP BY level ORDER BY level").fetchall())
        tokens = self.con.execute(
            "SELECT coalesce(sum(n_tokens), 0) FROM files WHERE status = 'indexed'"
        ).fetchall()[0][0]
        return {
            "files": sum(by_language.values()), "files_by_language": by_language,
            "skipped": skipped, "tokens": int(tokens),
            "nodes_by_level": {int(k): v for k, v in levels.items()},
            "gists": self.count("gists"),
        }

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


def _keys_table(keys: list[bytes]) -> pa.Table:
    return pa.table({"gist_key": pa.array(keys, pa.binary(16))})


def _lock_holder(message: str) -> str:
    """The 'PID n' part of DuckDB's lock error, when it names one."""
    marker = "PID "
    if marker in message:
        pid = message.split(marker, 1)[1].split(")")[0].split()[0]
        return f"PID {pid}"
    return "another process"
