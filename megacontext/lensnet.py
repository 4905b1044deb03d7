"""LensNet (DESIGN.md §3): a learned focus scorer that rates the working context's entries.

Input: the entries (a gist stands for itself; a raw entry for the gist of its block), their
features (level, kind, token count, position, and its matches with the tail, each the best
of a definition under the entry: BM25 over the base model's tokens relative to the best in
the repository; how well the definition's name matches — the share of its words the tail
says, and their rarity; BM25 over the definition's stemmed words; and the sentence-embedding
similarity of all-MiniLM-L6-v2 with a flag saying whether it was computed), and the tail
(the question and recent turns, as the base model's own input embeddings). Two rounds of dual
cross-attention — the tail reads the entries, then the entries read the enriched tail —
without masks of order (non-causal), then one signed utility per entry: positive = expand
it, negative = it may collapse. Entries carry no position but their feature, so permuting
them permutes the utilities.

Focusing (`LensNetFocus`) starts from the root's gist and alternates LensNet and the Focus
Allocator's best-first descent (`descend`): each round rates the entries there are, then
descends again from the root on every utility known so far, best first while it fits the
budget, until a descent shows nothing unrated. The budget is always filled, in order of
utility: sharp where LensNet says the task needs it.
A function is read whole: the blocks of one definition present as entries share their best
utility (as the retrieval scorers' blocks share their definition's best score).

Weights ship like GistNet's: fp16 safetensors plus a JSON manifest (config, base model,
data, steps, seed, loss curve, commit).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from megacontext.adapter import BaseModel
from megacontext.allocator import AllocatorConfig, Entry, cold_start, descend
from megacontext.errors import MegaContextError
from megacontext.focus import (
    DENSE_CACHE,
    DenseScorer,
    Units,
    UnitWords,
    block_texts,
    block_utilities,
    node_scores,
)
from megacontext.gistnet import shipped_weights
from megacontext.repo_tree import RepoTree

if TYPE_CHECKING:
    from megacontext.ask import AskSession

KINDS = ("folder", "code", "docs", "other")
DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc")
CODE_SUFFIXES = (".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java", ".c", ".h",
                 ".cc", ".cpp", ".hpp", ".rb", ".sh")
N_FEATURES = 10  # raw, log tokens, position, bm25, bm25², name share, name rarity, words,
# dense, and a flag: words and dense were computed (weights trained with fewer read the first)
DEFINITION_FEATURES = slice(7, 10)  # words, dense, their flag
DEFINITION_BLOCKS = 40_000  # a larger repository goes without them (their flag 0): embedding
# every block costs about 1 s per 200 on a CPU, once (cached), and matching words ~2 s per 100k
MAX_LEVEL = 7  # level embeddings: 0 = raw, 1..7 (higher levels share 7)
MAX_ROUNDS = 24  # rounds of rating and descending (a tree is rarely deeper than 12)
UNRATED = -1e9  # every rated node may expand, best first, while it fits


@dataclass(frozen=True)
class LensNetConfig:
    dim: int  # the base model's embedding width (gists and tail tokens)
    width: int = 192
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    max_tail: int = 256  # tail tokens read (the latest)
    features: int = 7  # entry features read (the first ones of `N_FEATURES`)


class _Cross(nn.Module):
    """Pre-norm cross-attention (queries read keys/values) + MLP."""

    def __init__(self, c: LensNetConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.nq, self.nkv = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.q, self.kv = nn.Linear(c.width, c.width), nn.Linear(c.width, 2 * c.width)
        self.out = nn.Linear(c.width, c.width)
        self.n2 = nn.LayerNorm(c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, c.ffn), nn.GELU(), nn.Linear(c.ffn, c.width))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, Q, W = x.shape
        K = ctx.shape[1]
        q = self.q(self.nq(x)).view(B, Q, self.heads, -1).transpose(1, 2)
        k, v = self.kv(self.nkv(ctx)).view(B, K, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.out(a.transpose(1, 2).reshape(B, Q, W))
        return x + self.mlp(self.n2(x))


class LensNet(nn.Module):
    def __init__(self, config: LensNetConfig, token_norm: float) -> None:
        super().__init__()
        c = self.config = config
        self.token_norm = float(token_norm)
        self.entry_in = nn.Linear(c.dim, c.width)
        self.feature_in = nn.Sequential(nn.Linear(c.features, c.width), nn.GELU(),
                                        nn.Linear(c.width, c.width))
        self.level = nn.Embedding(MAX_LEVEL + 1, c.width)
        self.kind = nn.Embedding(len(KINDS), c.width)
        self.tail_in = nn.Linear(c.dim, c.width)
        self.tail_position = nn.Parameter(torch.randn(c.max_tail, c.width) * 0.02)
        self.tail_reads = nn.ModuleList(_Cross(c) for _ in range(c.layers))
        self.entries_read = nn.ModuleList(_Cross(c) for _ in range(c.layers))
        self.head = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, 1))
        self.id = "lensnet-untrained"

    def forward(self, gists: torch.Tensor, features: torch.Tensor, level: torch.Tensor,
                kind: torch.Tensor, entry_mask: torch.Tensor, tail: torch.Tensor,
                tail_mask: torch.Tensor) -> torch.Tensor:
        """(B, E, D) gists, (B, E, F) features, (B, E) levels and kinds, (B, E) bool mask,
        (B, T, D) tail embeddings, (B, T) bool mask -> (B, E) utilities (0 where masked)."""
        T = tail.shape[1]
        assert self.config.max_tail >= T, f"{T} tail tokens > {self.config.max_tail}"
        e = (self.entry_in(gists / self.token_norm) + self.feature_in(features)
             + self.level(level.clamp(0, MAX_LEVEL)) + self.kind(kind))
        t = self.tail_in(tail / self.token_norm) + self.tail_position[:T]
        for tail_reads, entries_read in zip(self.tail_reads, self.entries_read, strict=True):
            t = tail_reads(t, e, entry_mask)
            e = entries_read(e, t, tail_mask)
        return self.head(e).squeeze(-1) * entry_mask

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------- inputs


class EntryFeatures:
    """Per-node facts a session computes once (kind, subtree tokens) and the per-entry
    input LensNet reads."""

    def __init__(self, repo: RepoTree, levels: list) -> None:
        self.repo = repo
        tokens = (repo.tok_end - repo.tok_start).astype(np.float64)
        subtree = np.where(repo.level == 1, tokens, 0.0)
        for parents, kids, offsets in levels:  # bottom-up sums
            subtree[parents] = np.add.reduceat(subtree[kids], offsets)
        self.log_tokens = np.log1p(subtree) / 10
        kind_of_file = {fid: _kind(path) for fid, path in repo.paths.items()}
        self.kind = np.array([kind_of_file.get(int(f), 0) if f else 0
                              for f in repo.file_id.tolist()], np.int64)

    def arrays(self, entries: list[Entry], lexical: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """nodes, (E, N_FEATURES) features, levels, kinds. `lexical` is (N, 6): the text's
        matches with every node (`LensNetFocus.lexical`)."""
        nodes = np.fromiter((e.node for e in entries), np.int64, len(entries))
        raw = np.fromiter((e.raw for e in entries), bool, len(entries))
        position = np.arange(len(entries)) / max(len(entries) - 1, 1)
        lex = lexical[nodes]
        features = np.concatenate([np.stack([raw.astype(np.float64), self.log_tokens[nodes],
                                             position, lex[:, 0], lex[:, 0] ** 2], 1),
                                   lex[:, 1:]], 1).astype(np.float32)
        level = np.where(raw, 0, self.repo.level[nodes]).astype(np.int64)
        return nodes, features, level, self.kind[nodes]


def _kind(path: str) -> int:
    lower = path.lower()
    if lower.endswith(CODE_SUFFIXES):
        return KINDS.index("code")
    if lower.endswith(DOC_SUFFIXES):
        return KINDS.index("docs")
    return KINDS.index("other")


def relative_lexical(node_scores: np.ndarray) -> np.ndarray:
    best = float(node_scores.max()) if len(node_scores) else 0.0
    return node_scores / best if best > 0 else np.zeros_like(node_scores)


# ---------------------------------------------------------------- focusing


class LensNetFocus:
    """Refocus in rounds: LensNet rates the entries, the allocator descends on the ratings."""

    name = "lensnet"

    def __init__(self, session: AskSession, net: LensNet,
                 allocator: AllocatorConfig | None = None,
                 encoder: Callable[[list[str]], np.ndarray] | None = None) -> None:
        """`encoder`: the sentence encoder for the dense feature (default: the installed
        all-MiniLM-L6-v2). The definition features are computed when the net reads them,
        the repository has at most `DEFINITION_BLOCKS` blocks and an encoder is there."""
        from megacontext.bm25 import _levels

        self.session, self.net = session, net
        self.identity = net.id
        self.allocator = allocator or session.config.allocator
        repo = session.repo
        self.levels = _levels(repo)
        self.features = EntryFeatures(repo, self.levels)
        self.units = Units(repo)
        self.words: UnitWords | None = None
        self.dense: DenseScorer | None = None
        if net.config.features > DEFINITION_FEATURES.start and (
                len(repo.blocks()) <= DEFINITION_BLOCKS):
            encoder = encoder or _installed_encoder()
            if encoder is not None:
                texts = block_texts(repo, session.file_tokens, session.model.tokenizer.decode)
                self.words = UnitWords(self.units, texts)
                cache = Path(session.store.path).parent / DENSE_CACHE
                self.dense = DenseScorer(repo, texts, encoder, cache)

    def lexical(self, text: str) -> np.ndarray:
        """(N, 6) matches of the text with every node, each the best of a definition under
        it: BM25 relative to the best; the name match (`Units.name_match`: share of its
        words, their rarity); BM25 over definitions' words (`UnitWords`), relative; the
        dense similarity as a utility ((s − median) / (best − median)); and whether these
        two were computed. Features not computed are zeros."""
        repo = self.session.repo
        blocks = repo.blocks()
        out = np.zeros((repo.size, 6))

        def up(block_values: np.ndarray) -> np.ndarray:
            return node_scores(repo, blocks, self.levels, self.units.pool(block_values))

        out[:, 0] = relative_lexical(up(self.session.scorer.block_scores(text)))
        share, rare = self.units.name_match(text)
        out[:, 1] = node_scores(repo, blocks, self.levels, share)
        out[:, 2] = node_scores(repo, blocks, self.levels, rare)
        if self.words is not None and self.dense is not None and len(blocks):
            out[:, 3] = relative_lexical(up(self.words.block_scores(text)))
            out[:, 4] = block_utilities(repo, blocks, self.levels,
                                        self.units.pool(self.dense.block_scores(text)))
            out[:, 5] = 1.0
        return out

    def tail(self, text: str) -> torch.Tensor:
        ids = self.session.model.tokenizer.encode(text, add_special_tokens=False).ids
        ids = ids[-self.net.config.max_tail :] or [0]
        return self.session.model.embeddings[torch.tensor(ids)]

    def focus(self, text: str, budget: int, timings: dict[str, float]) -> list[Entry]:
        """Best-first descent on LensNet's utilities, learned a level per round: each round
        rates the entries the last descent produced (in that context), then descends again
        from the root on every utility known so far; nodes not rated yet stay gists. Ends
        when a descent shows no entry that has not been rated."""
        t0 = time.perf_counter()
        tail = self.tail(text)[None]
        lexical = self.lexical(text)
        tree = self.session.repo.tree
        known = np.full(self.session.repo.size, -np.inf)
        config = AllocatorConfig(**{**self.allocator.__dict__, "max_edits": budget,
                                    "expand_threshold": UNRATED})
        entries = cold_start(tree)
        scoring = 0.0
        for _ in range(MAX_ROUNDS):
            t = time.perf_counter()
            nodes = np.fromiter((e.node for e in entries), np.int64, len(entries))
            known[nodes] = self.utilities(entries, lexical, tail)
            scoring += time.perf_counter() - t
            entries = descend(tree, cold_start(tree), known, budget, config).entries
            if not np.isneginf(known[[e.node for e in entries]]).any():
                break
        timings["score"] = scoring
        timings["allocate"] = time.perf_counter() - t0 - scoring
        return entries

    def utilities(self, entries: list[Entry], lexical: np.ndarray, tail: torch.Tensor
                  ) -> np.ndarray:
        nodes, features, level, kind = self.features.arrays(entries, lexical)
        features = features[:, : self.net.config.features]
        gists = self.session.gists
        rows = torch.from_numpy(gists.rows(nodes))  # first: it may read and grow the table
        vectors = gists.table()[rows].float()
        with torch.no_grad():
            u = self.net(vectors[None], torch.from_numpy(features)[None],
                         torch.from_numpy(level)[None], torch.from_numpy(kind)[None],
                         torch.ones(1, len(entries), dtype=torch.bool), tail,
                         torch.ones(1, tail.shape[1], dtype=torch.bool))
        return self.units.pool_entries(nodes, u[0].numpy().astype(np.float64))


def _installed_encoder() -> Callable[[list[str]], np.ndarray] | None:
    from megacontext.adapter import load_sentence_encoder
    from megacontext.errors import ModelNotFound

    try:
        return load_sentence_encoder()
    except ModelNotFound:
        return None  # the dense feature's flag says it is missing


# ---------------------------------------------------------------- weights


def save_lensnet(net: LensNet, folder: Path, name: str, manifest: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({k: v.detach().to(torch.float16).cpu().contiguous()
               for k, v in net.state_dict().items()}, str(path))
    meta = {"config": asdict(net.config), "token_norm": net.token_norm, **manifest}
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def load_lensnet(weights: Path) -> tuple[LensNet, dict]:
    from safetensors.torch import load_file

    manifest = json.loads(weights.with_suffix(".json").read_text())
    net = LensNet(LensNetConfig(**manifest["config"]), manifest["token_norm"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    net.eval().requires_grad_(False)
    digest = hashlib.blake2b(weights.read_bytes(), digest_size=4).hexdigest()
    net.id = f"lensnet-{digest}"  # named by content: a new version gets a new name
    return net, manifest


def shipped_lensnet(base_id: str) -> Path | None:
    """The shipped LensNet weights trained for this base model, if any."""
    return shipped_weights(base_id, "lensnet")


def default_focus(base_id: str) -> tuple[str, str]:
    """The scorer `ask` uses by default for this base model, and a description of it."""
    weights = shipped_lensnet(base_id)
    if weights is None:
        return "bm25", "bm25 (no LensNet weights for this base model)"
    manifest = json.loads(weights.with_suffix(".json").read_text())
    val = manifest.get("evaluation", {})
    recall = val.get("val_recall_lensnet_2048")
    digest = hashlib.blake2b(weights.read_bytes(), digest_size=4).hexdigest()
    return "lensnet", (f"lensnet-{digest} ({manifest.get('steps', '?')} steps"
                       + (f", held-out stdlib recall@2048 {recall:.2f}" if recall is not None
                          else "") + ")")


def default_lensnet(model: BaseModel) -> LensNet:
    weights = shipped_lensnet(model.id)
    if weights is None:
        raise MegaContextError(f"no LensNet weights for base model {model.id}: use --focus "
                               "bm25, or train them with `mcagent train lensnet`")
    return load_lensnet(weights)[0]
