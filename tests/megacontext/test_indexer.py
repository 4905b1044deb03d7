"""Indexer: counts, coverage, incremental updates, errors — on a tiny byte-level model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.errors import UnreadableFileError
from megacontext.errors import NothingToIndex, StoreLocked
from megacontext.gist import MeanPoolGist
from megacontext.indexer import index_repository, pending_changes
from megacontext.store import DB_FOLDER, LOCAL_BITS, Store, db_path
from megacontext.tree import header_text
from tests.conftest import lock_held, tiny_model

MODEL = tiny_model()
GIST = MeanPoolGist(MODEL.token_norm)


def index(repo: Path, gist=GIST, model=MODEL):
    return index_repository(repo, model, gist)


def snapshot(repo: Path) -> dict:
    """Every node as (path or folder, level, local index) -> (hash, gist key, gist bytes)."""
    with Store.open(db_path(repo), read_only=True) as store:
        paths = {r.file_id: p for p, r in store.files().items()}
        nodes = store.nodes().to_pylist()
        vectors = {}
        for blocks in (True, False):
            vectors |= store.gist_vectors([n["gist_key"] for n in nodes], MODEL.dim, blocks)
    out = {}
    for n in nodes:
        where = paths[n["file_id"]] if n["file_id"] else "dir:" + n["symbol"]
        local = n["node_id"] & ((1 << LOCAL_BITS) - 1) if n["file_id"] else n["level"]
        key = (where, n["level"], local, n["ordinal"] if not n["file_id"] else 0)
        out[key] = (n["hash"], n["gist_key"], vectors[n["gist_key"]].tobytes())
    return out


def test_index_counts_and_coverage(code_repo: Path) -> None:
    (code_repo / "logo.png").write_bytes(b"\x89PNG\x00\x00binary")
    (code_repo / ".env").write_text("TOKEN=secret\n")
    report = index(code_repo)
    assert report.created and (code_repo / DB_FOLDER / ".gitignore").read_text().endswith("*\n")
    assert report.files == 6 and report.new == 7  # .env is skipped by path, not read
    assert report.files_by_language == {"python": 2, "go": 1, "markdown": 1, "rust": 1,
                                        "typescript": 1}
    assert report.skipped == {"binary": 1, "secret": 1}
    with Store.open(db_path(code_repo), read_only=True) as store:
        files = store.files()
        for path, rec in files.items():
            if rec.status != "indexed":
                continue
            tokens = store.file_tokens(rec.file_id)
            text = MODEL.tokenizer.decode(tokens.tolist())
            assert text == header_text(path) + (code_repo / path).read_text(), path
            assert rec.n_tokens == len(tokens)
        nodes = store.nodes().to_pylist()
        assert sum(1 for n in nodes if n["parent_id"] is None) == 1, "one repository root"
        ids = {n["node_id"] for n in nodes}
        assert all(n["parent_id"] in ids for n in nodes if n["parent_id"] is not None)
        siblings: dict[int, list[int]] = {}
        for n in nodes:
            if n["parent_id"] is not None:
                siblings.setdefault(n["parent_id"], []).append(n["ordinal"])
        assert all(sorted(o) == list(range(len(o))) for o in siblings.values()), "ordinals"
        assert report.tokens == sum(r.n_tokens for r in files.values())
        levels = {}
        for n in nodes:
            levels[n["level"]] = levels.get(n["level"], 0) + 1
        assert report.nodes_by_level == levels


def test_second_run_reprocesses_nothing(code_repo: Path) -> None:
    index(code_repo)
    before = snapshot(code_repo)
    again = index(code_repo)
    assert (again.new, again.changed, again.deleted, again.processed_paths) == (0, 0, 0, [])
    assert again.gists_computed == 0
    assert snapshot(code_repo) == before


def test_editing_one_function_reprocesses_one_file(code_repo: Path) -> None:
    index(code_repo)
    before = snapshot(code_repo)
    path = code_repo / "pkg" / "sample.py"
    path.write_text(path.read_text().replace("return x * 2", "return x * 4"))
    report = index(code_repo)
    assert report.processed_paths == ["pkg/sample.py"] and report.changed == 1
    after = snapshot(code_repo)
    changed = {k for k in before if k in after and before[k] != after[k]}
    assert all(k[0] in ("pkg/sample.py",) or k[0].startswith("dir:") for k in changed), changed
    same_file = [k for k in before if k[0] == "pkg/sample.py" and k[1] == 1]
    kept = [k for k in same_file if before[k] == after.get(k)]
    assert len(kept) == len(same_file) - 1, "only the edited block's gist changed"


def test_incremental_equals_cold(code_repo: Path, tmp_path: Path) -> None:
    index(code_repo)
    (code_repo / "pkg" / "sample.go").write_text("package sample\n\nfunc Only() {}\n")
    (code_repo / "main.py").unlink()
    (code_repo / "pkg" / "extra.py").write_text("def extra():\n    return 'new'\n")
    report = index(code_repo)
    assert (report.new, report.changed, report.deleted) == (1, 1, 1)
    cold = tmp_path / "cold"
    shutil.copytree(code_repo, cold, ignore=shutil.ignore_patterns(DB_FOLDER))
    index(cold)
    assert snapshot(code_repo) == snapshot(cold)


def test_touch_is_not_a_change(code_repo: Path) -> None:
    index(code_repo)
    path = code_repo / "main.py"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with Store.open(db_path(code_repo), read_only=True) as store:
        assert pending_changes(code_repo, store).total == 0
    report = index(code_repo)
    assert report.processed_paths == [] and report.unchanged == 6 and report.changed == 0
    with Store.open(db_path(code_repo), read_only=True) as store:
        assert store.files()["main.py"].mtime_ns == path.stat().st_mtime_ns, "mtime stored"
        root = store.files()["main.py"].root_id
        assert root in {n["node_id"] for n in store.nodes().to_pylist()}, "nodes kept"


def test_pending_changes(code_repo: Path) -> None:
    index(code_repo)
    (code_repo / "main.py").write_text("print('changed')\n")
    (code_repo / "README.md").unlink()
    (code_repo / "new.py").write_text("x = 1\n")
    with Store.open(db_path(code_repo), read_only=True) as store:
        changes = pending_changes(code_repo, store)
    assert (changes.new, changes.modified, changes.deleted) == (
        ["new.py"], ["main.py"], ["README.md"])


def test_new_gist_model_rebuilds_every_gist(code_repo: Path) -> None:
    index(code_repo)

    class Other(MeanPoolGist):
        id = "meanpool-baseline-v2"

    report = index(code_repo, gist=Other(MODEL.token_norm))
    assert report.changed == 6 and report.gists_computed > 0
    with Store.open(db_path(code_repo), read_only=True) as store:
        assert store.meta()["gist_model"] == "meanpool-baseline-v2"


def test_deleted_file_gists_are_collected(code_repo: Path) -> None:
    index(code_repo)
    (code_repo / "pkg" / "sample.rs").unlink()
    index(code_repo)
    with Store.open(db_path(code_repo)) as store:
        assert "pkg/sample.rs" not in store.files()
        assert store.collect_gists([], force=True) > 0
        referenced = {n["gist_key"] for n in store.nodes().to_pylist()}
        assert store.existing_gist_keys(list(referenced)) == referenced


def test_empty_repository(tmp_path: Path) -> None:
    with pytest.raises(NothingToIndex, match="no files to index"):
        index(tmp_path)
    assert not (tmp_path / DB_FOLDER).exists()
    (tmp_path / "blob.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(NothingToIndex, match="1 binary skipped"):
        index(tmp_path)
    assert not (tmp_path / DB_FOLDER).exists(), "nothing half-written"


def test_unreadable_file_writes_nothing(code_repo: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    import ingest.walk

    real = ingest.walk.Path.read_bytes

    def deny(self: Path) -> bytes:
        if self.name == "main.py":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(ingest.walk.Path, "read_bytes", deny)
    with pytest.raises(UnreadableFileError, match=r"cannot read main\.py: Permission denied"):
        index(code_repo)
    assert not (code_repo / DB_FOLDER).exists(), "a failed first index leaves nothing"
    monkeypatch.undo()
    index(code_repo)
    before = snapshot(code_repo)
    (code_repo / "main.py").write_text("print('v2')\n")
    (code_repo / "pkg" / "extra.py").write_text("y = 2\n")
    monkeypatch.setattr(ingest.walk.Path, "read_bytes", deny)
    with pytest.raises(UnreadableFileError):
        index(code_repo)
    assert snapshot(code_repo) == before, "a failed update leaves the index as it was"


def test_locked_index_writes_nothing(code_repo: Path) -> None:
    index(code_repo)
    with lock_held(db_path(code_repo)):
        (code_repo / "main.py").write_text("print('v2')\n")
        with pytest.raises(StoreLocked):
            index(code_repo)
    assert index(code_repo).processed_paths == ["main.py"]


def test_meanpool_gist_ignores_padding_and_has_token_norm() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 32, 16, generator=g)
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[0, :5], mask[1, :32], mask[2, :1] = True, True, True
    out = GIST(x, mask, torch.ones(3, dtype=torch.long))
    noisy = x.clone()
    noisy[~mask] = 1e3
    torch.testing.assert_close(GIST(noisy, mask, torch.ones(3, dtype=torch.long)), out)
    torch.testing.assert_close(out[:1], GIST(x[:1, :5], mask[:1, :5], torch.ones(1)))
    np.testing.assert_allclose(out.norm(dim=1).numpy(), MODEL.token_norm, rtol=1e-5)


def test_named_paths_update(code_repo: Path) -> None:
    """A watcher names what changed: only those paths are looked at, with the same rules."""
    index(code_repo)
    (code_repo / "main.py").write_text("print('v2')\n")
    (code_repo / "README.md").unlink()
    (code_repo / "notes.log").write_text("ignored\n")
    (code_repo / ".gitignore").write_text("*.log\n")
    (code_repo / "pkg" / "sample.go").write_text("package sample\n")  # changed, not named
    report = index_repository(code_repo, MODEL, GIST,
                              paths=["main.py", "README.md", "notes.log"])
    assert report.processed_paths == ["main.py"] and report.deleted == 1
    with Store.open(db_path(code_repo), read_only=True) as store:
        files = store.files()
    assert "README.md" not in files and "notes.log" not in files
    full = index(code_repo)
    assert full.processed_paths == [".gitignore", "pkg/sample.go"], "a full run catches up"


def test_raised_size_limit_indexes_a_skipped_file(code_repo: Path) -> None:
    from dataclasses import replace

    from megacontext.indexer import IndexConfig

    small = IndexConfig()
    small = replace(small, walk=replace(small.walk, max_file_bytes=200))
    first = index_repository(code_repo, MODEL, GIST, small)
    assert first.skipped.get("too-large", 0) >= 4
    second = index(code_repo)
    assert second.skipped == {} and second.files == 6


def test_gist_memory_preloaded_equals_read_on_demand(code_repo: Path) -> None:
    from megacontext.ask import GistMemory
    from megacontext.repo_tree import load_repo_tree

    index(code_repo)
    with Store.open(db_path(code_repo), read_only=True) as store:
        repo = load_repo_tree(store)
        nodes = np.arange(repo.size)
        all_in = GistMemory(store, repo, MODEL.dim, limit_mb=64)
        on_demand = GistMemory(store, repo, MODEL.dim, limit_mb=0)
        assert all_in.preloaded and not on_demand.preloaded
        assert on_demand.size < repo.size, "block gists are not read up front"
        a = all_in.table()[torch.from_numpy(all_in.rows(nodes))]
        rows = on_demand.rows(nodes[::-1])  # reads the missing block gists, then the table
        b = on_demand.table()[torch.from_numpy(rows)].flip(0)
        assert torch.equal(a, b)
        stored = store.gist_vectors([repo.gist_key[n] for n in nodes[:5]], MODEL.dim,
                                    blocks=True)
        for n in nodes[:5]:
            if repo.gist_key[n] in stored:
                assert np.array_equal(a[n].numpy(), stored[repo.gist_key[n]])


def test_integrity_finds_a_damaged_index(code_repo: Path) -> None:
    index(code_repo)
    with Store.open(db_path(code_repo), read_only=True) as store:
        assert store.integrity() == []
    with Store.open(db_path(code_repo)) as store:
        store.con.execute("DELETE FROM tokens WHERE file_id = (SELECT min(file_id) FROM tokens)")
        store.con.execute("DELETE FROM block_gists WHERE gist_key = "
                          "(SELECT min(gist_key) FROM block_gists)")
        problems = store.integrity()
    assert len(problems) == 2, problems
    assert problems[0].startswith("indexed files without their tokens")
    assert problems[1].startswith("nodes without a gist")


def test_every_stored_gist_is_its_own_groups_gist(code_repo: Path) -> None:
    """Gists are computed in batches of similar sizes, not in tree order: each key must
    still get its own group's gist (a block's tokens, or a node's children's gists)."""
    index(code_repo)
    with Store.open(db_path(code_repo), read_only=True) as store:
        nodes = store.nodes().to_pylist()
        tokens = store.all_tokens()
        vectors = {}
        for blocks in (True, False):
            vectors |= store.gist_vectors([n["gist_key"] for n in nodes], MODEL.dim, blocks)
    children: dict[int, list[dict]] = {}
    for n in nodes:
        if n["parent_id"] is not None:
            children.setdefault(n["parent_id"], []).append(n)
    checked = {1: 0, 2: 0}
    for n in nodes:
        if n["level"] == 1:
            ids = torch.from_numpy(tokens[n["file_id"]][n["tok_start"] : n["tok_end"]]
                                   .astype(np.int64))
            x = MODEL.embeddings[ids][None]
        elif n["level"] == 2 and n["node_id"] in children:
            kids = sorted(children[n["node_id"]], key=lambda k: k["ordinal"])
            x = torch.from_numpy(np.stack([vectors[k["gist_key"]] for k in kids])
                                 .astype(np.float32))[None]
        else:
            continue
        want = GIST(x, torch.ones(x.shape[:2], dtype=torch.bool),
                    torch.tensor([n["level"]]))[0].numpy()
        np.testing.assert_allclose(vectors[n["gist_key"]].astype(np.float32), want,
                                   rtol=1e-2, atol=1e-2)
        checked[n["level"]] += 1
    assert checked[1] > 10 and checked[2] > 2
