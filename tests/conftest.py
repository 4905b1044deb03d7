"""Shared fixtures: a tiny random-weight byte-level model, the real default model, repos."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from megacontext.adapter import BaseModel, ModelConfig, load_base_model

FIXTURES = Path(__file__).parent / "ingest" / "fixtures"


def tiny_model(dim: int = 16, seed: int = 0, model_id: str = "tiny-bytes") -> BaseModel:
    """A byte-level tokenizer (one token per byte, no merges) and random embeddings."""
    # sorted: the alphabet comes as a set, whose order changes with every process
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(len(vocab), dim, generator=g)
    return BaseModel(model_id, None, model_id, tokenizer, embeddings)


@pytest.fixture
def tiny() -> BaseModel:
    return tiny_model()


@pytest.fixture(scope="session")
def real_model() -> BaseModel:
    """The default SmolLM2 model, converted once into the user cache."""
    cache = Path(platformdirs.user_cache_dir("mcagent"))
    return load_base_model(ModelConfig(cache_dir=cache))


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
        capture_output=True, text=True,
    ).stdout


@pytest.fixture
def code_repo(tmp_path: Path) -> Path:
    """A small git repository with a few languages, committed."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    for name in ("sample.py", "sample.go", "sample.rs", "sample.ts"):
        (repo / "pkg" / name).write_text((FIXTURES / name).read_text())
    (repo / "README.md").write_text("# Demo\n\nA small repository.\n\n## Usage\n\nRun it.\n")
    (repo / "main.py").write_text("from pkg.sample import top_level\n\nprint(top_level(2))\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


@contextlib.contextmanager
def lock_held(db: Path) -> Iterator[None]:
    """Another process holding the DuckDB file open for writing, for as long as the block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
         " print('ready', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield
    finally:
        holder.kill()
        holder.wait()
