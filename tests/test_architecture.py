"""The house shape: dependencies point one way, only the adapter imports transformers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    return set(out.split())


def test_megacontext_never_imports_the_cli_stack() -> None:
    mods = imported_after("import megacontext.indexer, megacontext.store, megacontext.tree")
    assert not {"typer", "rich", "mcagent"} & mods


def test_ingest_never_imports_torch_or_models() -> None:
    mods = imported_after("import ingest.walk, ingest.chunk")
    assert not {"torch", "transformers", "megacontext", "mcagent", "typer", "rich"} & mods


def test_gistnet_training_needs_no_parser_or_database() -> None:
    # scripts/train_gistnet_gpu.py runs on machines with torch and transformers alone.
    mods = imported_after("import megacontext.train.gistnet")
    assert not {"duckdb", "tree_sitter", "ingest", "pyarrow", "mcagent"} & mods


def test_only_the_adapter_imports_transformers_and_only_store_has_sql() -> None:
    sql = re.compile(r'"(SELECT|INSERT|UPDATE|DELETE|CREATE)[ (]')
    for path in ROOT.glob("*/**/*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] not in ("mcagent", "megacontext", "ingest"):
            continue
        text = path.read_text()
        if rel != "megacontext/adapter.py":
            assert not re.search(r"^\s*(import|from)\s+transformers\b", text, re.M), rel
        if rel != "megacontext/store.py":
            assert not sql.search(text), f"SQL outside store.py: {rel}"
        if not rel.startswith("mcagent/"):
            assert not re.search(r"^\s*print\(", text, re.M), f"only mcagent prints: {rel}"
