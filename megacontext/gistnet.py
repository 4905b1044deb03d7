"""GistNet: ≤32 child vectors → one vector in the base model's input-embedding space.

A small bidirectional transformer over the children (token embeddings at level 1, child
gists above), pooled by a learned query, projected back to the base model's width and
scaled to the norm of real token embeddings (times a learned gain), so a gist sits where
the base model expects a token. The same weights serve every level: a level embedding
tells them apart (levels above the highest trained one share its embedding).

Two shapes of block (`GistNetConfig.block`): `plain` (pre-LayerNorm attention + GELU MLP at
its own width, learned positions) and `llama`, the base model's own decoder-layer shape
(RMSNorm, rotary positions, grouped-query attention, SwiGLU) at the base model's width but
attending both ways, so that training can start the encoder from the base model's first
layers (`init_from_layers`): they already know what tokens mean in combination.

Padding never changes the output: padded children are never attended to, and the pooled
query reads only real children.

Weights travel as safetensors plus a JSON manifest (config, base model, data, steps, seed,
loss curve, commit). The gist model's `id` is derived from the weights themselves, so a new
version gets a new id and the indexer recomputes cached gists bottom-up.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from megacontext.adapter import BaseModel
from megacontext.gist import MAX_CHILDREN, GistModel, MeanPoolGist

WEIGHTS_FOLDER = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class GistNetConfig:
    dim: int  # the base model's embedding width (input and output)
    width: int = 512  # the transformer's own width
    layers: int = 2
    heads: int = 8
    ffn: int = 1024
    levels: int = 2  # levels with their own embedding; higher levels share the last
    max_children: int = MAX_CHILDREN
    block: str = "plain"  # "plain" or "llama" (the base model's layer shape; width = dim)
    kv_heads: int = 0  # llama: key/value heads (grouped-query attention); 0: = heads
    rope_theta: float = 10000.0  # llama: rotary base
    norm_eps: float = 1e-5  # llama: RMSNorm epsilon

    def __post_init__(self) -> None:
        if self.block not in ("plain", "llama"):
            raise ValueError(f"unknown GistNet block {self.block!r} (plain or llama)")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of {self.heads} heads")
        if self.block == "llama" and self.width != self.dim:
            raise ValueError(f"a llama GistNet works at the base width {self.dim}, "
                             f"not {self.width}")
        if self.kv_heads and self.heads % self.kv_heads:
            raise ValueError(f"{self.heads} heads do not share {self.kv_heads} key/value heads")


class _Block(nn.Module):
    """Pre-norm bidirectional self-attention + MLP with a key-padding mask."""

    def __init__(self, c: GistNetConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.LayerNorm(c.width)
        self.qkv = nn.Linear(c.width, 3 * c.width)
        self.out = nn.Linear(c.width, c.width)
        self.norm2 = nn.LayerNorm(c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, c.ffn), nn.GELU(), nn.Linear(c.ffn, c.width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor, rope: tuple | None = None
                ) -> torch.Tensor:
        B, K, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, K, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.out(a.transpose(1, 2).reshape(B, K, W))
        return x + self.mlp(self.norm2(x))


class _LlamaBlock(nn.Module):
    """The base model's decoder-layer shape (RMSNorm, rotary positions, grouped-query
    attention, SwiGLU MLP, no biases), attending both ways under a key-padding mask. Its
    parameter names are the ones `BaseModel.decoder_layer` gives the base model's layers."""

    def __init__(self, c: GistNetConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads = c.heads, c.kv_heads or c.heads
        head = c.width // c.heads
        self.norm1 = nn.RMSNorm(c.width, eps=c.norm_eps)
        self.q = nn.Linear(c.width, c.heads * head, bias=False)
        self.k = nn.Linear(c.width, self.kv_heads * head, bias=False)
        self.v = nn.Linear(c.width, self.kv_heads * head, bias=False)
        self.o = nn.Linear(c.heads * head, c.width, bias=False)
        self.norm2 = nn.RMSNorm(c.width, eps=c.norm_eps)
        self.gate = nn.Linear(c.width, c.ffn, bias=False)
        self.up = nn.Linear(c.width, c.ffn, bias=False)
        self.down = nn.Linear(c.ffn, c.width, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, rope: tuple | None = None
                ) -> torch.Tensor:
        assert rope is not None, "a llama block needs its rotary tables"
        B, K, _ = x.shape
        h = self.norm1(x)
        q = _rotate(self.q(h).view(B, K, self.heads, -1).transpose(1, 2), rope)
        k = _rotate(self.k(h).view(B, K, self.kv_heads, -1).transpose(1, 2), rope)
        v = self.v(h).view(B, K, self.kv_heads, -1).transpose(1, 2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        a = F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=keep)
        x = x + self.o(a.transpose(1, 2).reshape(B, K, -1))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def _rope_tables(length: int, head: int, theta: float, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head) of rotary positions 0..length−1 (halves rotated, as in
    Llama)."""
    inverse = 1.0 / theta ** (torch.arange(0, head, 2, device=device, dtype=torch.float32) / head)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inverse
    angles = torch.cat([angles, angles], -1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    cos, sin = (t.to(x.dtype) for t in rope)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], -1) * sin


class GistNet(nn.Module):
    """The learned compressor; implements `megacontext.gist.GistModel`."""

    def __init__(self, config: GistNetConfig, token_norm: float) -> None:
        super().__init__()
        c = config
        self.config = c
        self.token_norm = float(token_norm)
        if c.block == "plain":  # children normalised and projected; learned positions
            self.inp = nn.Linear(c.dim, c.width)
            self.position = nn.Parameter(torch.randn(c.max_children, c.width) * 0.02)
            self.level_embedding = nn.Parameter(torch.randn(c.levels, c.width) * 0.02)
        else:  # children as they are, rotary positions; the level embedding at token scale
            scale = 0.02 * self.token_norm / math.sqrt(c.dim)
            self.level_embedding = nn.Parameter(torch.randn(c.levels, c.width) * scale)
        block = _Block if c.block == "plain" else _LlamaBlock
        self.blocks = nn.ModuleList(block(c) for _ in range(c.layers))
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.pool_norm = nn.LayerNorm(c.width)
        self.pool_kv = nn.Linear(c.width, 2 * c.width)
        self.pool_q = nn.Linear(c.width, c.width)
        self.pool_out = nn.Linear(c.width, c.width)
        self.out_norm = nn.LayerNorm(c.width)
        self.proj = nn.Linear(c.width, c.dim)
        self.log_gain = nn.Parameter(torch.zeros(()))  # output norm = token_norm · e^gain
        self.id = "gistnet-untrained"
        self.description = "GistNet (untrained)"
        self.cpu_bf16 = False  # inference in bfloat16 on CPUs with native support (2× faster)

    def forward(self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
                ) -> torch.Tensor:
        """(B, K, D) children, (B, K) bool mask (True = real), (B,) levels -> (B, D)."""
        fast = self.cpu_bf16 and not self.training and children.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            return self._forward(children, mask, level).float()

    def _forward(self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
                 ) -> torch.Tensor:
        B, K, D = children.shape
        c = self.config
        assert c.dim == D, f"children of width {D}, GistNet expects {c.dim}"
        assert c.max_children >= K, f"{K} children > {c.max_children}"
        assert mask.shape == (B, K), f"mask {tuple(mask.shape)} != {(B, K)}"
        mask = mask.to(children.device)
        assert bool(mask.any(dim=1).all()), "every group needs at least one real child"
        dtype = self.level_embedding.dtype
        lvl = (level.to(children.device).long().clamp(1, c.levels) - 1)
        if c.block == "plain":
            x = self.inp(children.to(dtype) / self.token_norm) + self.position[:K]
            rope = None
        else:
            x = children.to(dtype)
            rope = _rope_tables(K, c.width // c.heads, c.rope_theta, children.device)
        x = x + self.level_embedding[lvl][:, None, :]
        keep = mask[:, None, None, :]  # (B, 1, 1, K): every query sees only real keys
        for block in self.blocks:
            x = block(x, keep, rope)
        k, v = self.pool_kv(self.pool_norm(x)).view(B, K, 2, c.heads, -1).permute(2, 0, 3, 1, 4)
        q = self.pool_q(self.query + self.level_embedding[lvl]).view(B, c.heads, 1, -1)
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, 1, d)
        pooled = self.pool_out(pooled.reshape(B, c.width))
        y = self.proj(self.out_norm(pooled)).float()
        scale = self.token_norm * self.log_gain.exp()
        return y * (scale / y.norm(dim=-1, keepdim=True).clamp_min(1e-6))

    def init_from_layers(self, layers: list[dict[str, torch.Tensor]]) -> None:
        """Start a llama GistNet's blocks from decoder layers of the base model (weights named
        as `BaseModel.decoder_layer` names them), the first block from the first layer."""
        if self.config.block != "llama":
            raise ValueError("only a llama GistNet starts from the base model's layers")
        if len(layers) != len(self.blocks):
            raise ValueError(f"{len(layers)} layers for {len(self.blocks)} blocks")
        with torch.no_grad():
            for block, weights in zip(self.blocks, layers, strict=True):
                block.load_state_dict({k: v.float() for k, v in weights.items()})

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_identity(self, base_id: str, steps: int) -> None:
        """Name this set of weights by their content: a new version gets a new id."""
        h = hashlib.blake2b(digest_size=8)
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to(torch.float16).cpu().numpy().tobytes())
        self.id = f"gistnet-{h.hexdigest()}"
        self.description = f"GistNet {h.hexdigest()[:8]} ({steps} steps, base {base_id})"


def save_gistnet(net: GistNet, folder: Path, name: str, manifest: dict) -> Path:
    """Write `name.safetensors` (fp16) and `name.json` (config + manifest); returns the
    weights' path."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).cpu().contiguous()
               for k, v in net.state_dict().items()}
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path))
    meta = {"config": asdict(net.config), "token_norm": net.token_norm, **manifest}
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def load_gistnet(weights: Path, device: str | torch.device = "cpu") -> tuple[GistNet, dict]:
    """Load weights saved by `save_gistnet` (fp32 for computing); returns (net, manifest)."""
    from safetensors.torch import load_file

    manifest = json.loads(weights.with_suffix(".json").read_text())
    net = GistNet(GistNetConfig(**manifest["config"]), manifest["token_norm"])
    state = load_file(str(weights))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval().requires_grad_(False).to(device)
    net.cpu_bf16 = _cpu_has_bf16()
    net.set_identity(manifest.get("base_model", "?"), int(manifest.get("steps", 0)))
    return net, manifest


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def shipped_weights(base_id: str, kind: str = "gistnet") -> Path | None:
    """The shipped weights of a learned part (`gistnet`, `lensnet`) trained for this base
    model, if any."""
    if not WEIGHTS_FOLDER.is_dir():
        return None
    for meta in sorted(WEIGHTS_FOLDER.glob(f"{kind}-*.json")):
        try:
            manifest = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        weights = meta.with_suffix(".safetensors")
        if manifest.get("base_model") == base_id and weights.is_file():
            return weights
    return None


def default_gist_model(model: BaseModel) -> GistModel:
    """The gist model `index` uses: the shipped GistNet trained for this base model, else the
    mean-pool baseline (for a base model nobody has trained GistNet for yet)."""
    weights = shipped_weights(model.id)
    if weights is None:
        return MeanPoolGist(model.token_norm)
    return load_gistnet(weights)[0]


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
