"""Store: migrations, schema guard, lock errors, gist round trips."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from megacontext.errors import NotIndexed, SchemaTooNew, StoreLocked
from megacontext.store import MIGRATIONS, SCHEMA_VERSION, Store
from tests.conftest import lock_held


def test_migrations_on_empty_database(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.duckdb") as store:
        assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        assert store.count("files") == 0 and store.count("index_runs") == 0


def test_migrations_upgrade_an_old_database_and_keep_its_data(tmp_path: Path) -> None:
    path = tmp_path / "db.duckdb"
    with Store.open(path, migrations=MIGRATIONS[:1]) as old:
        assert old.schema_version() == 1
        old.set_meta({"base_model": "m"})
        old.write_gists([b"k" * 16], np.ones((1, 4), np.float16), blocks=False)
    with Store.open(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.meta() == {"base_model": "m"}
        assert store.count("index_runs") == 0, "migration 2 created its table"
        np.testing.assert_array_equal(store.gist_vectors([b"k" * 16], 4)[b"k" * 16], 1)


def test_old_database_read_only_asks_for_index(tmp_path: Path) -> None:
    path = tmp_path / "db.duckdb"
    Store.open(path, migrations=MIGRATIONS[:1]).close()
    with pytest.raises(NotIndexed, match="older mcagent"):
        Store.open(path, read_only=True)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.duckdb"
    Store.open(path, migrations=[*MIGRATIONS, "CREATE TABLE future (x INTEGER);"]).close()
    with pytest.raises(SchemaTooNew, match="newer mcagent"):
        Store.open(path)


def test_missing_database_read_only(tmp_path: Path) -> None:
    with pytest.raises(NotIndexed, match="mcagent index"):
        Store.open(tmp_path / ".mcagent" / "index.duckdb", read_only=True)


def test_locked_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "db.duckdb"
    Store.open(path).close()
    with lock_held(path):
        for read_only in (False, True):
            with pytest.raises(StoreLocked, match="in use by another mcagent process"):
                Store.open(path, read_only=read_only)
    time.sleep(0.1)
    Store.open(path).close()  # usable again once the other process is gone


def test_gists_round_trip_and_collection(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.duckdb") as store:
        keys = [i.to_bytes(16, "big") for i in range(300)]  # more than the few-keys path
        vecs = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float16)
        store.write_gists(keys[:150], vecs[:150], blocks=True)
        store.write_gists(keys[150:], vecs[150:], blocks=False)
        assert store.existing_gist_keys(keys) == set(keys)
        assert store.existing_gist_keys(keys[:3]) == set(keys[:3])
        got = store.gist_vectors(keys[150:], 8)
        assert all(np.array_equal(got[k], v) for k, v in zip(keys[150:], vecs[150:],
                                                              strict=True))
        assert store.gist_vectors(keys[:2], 8, blocks=True).keys() == set(keys[:2])
        assert store.collect_gists(keys[:10]) == 0, "queued, not yet collected"
        assert store.collect_gists([], force=True) == 10, "no node references them"
        assert store.existing_gist_keys(keys[:10]) == set()


def test_transaction_rolls_back(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.duckdb") as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.set_meta({"a": "1"})
            raise RuntimeError("boom")
        assert store.meta() == {}
