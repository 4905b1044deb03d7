"""`mcagent train gistnet`: teach GistNet to stand in for spans, with the base model frozen.

Each step draws `accumulate` seeded micro-batches of level-1 blocks (every `level2_every`-th
step: level-2 groups, gisted from their blocks' level-1 gists by the same network) from the
standard library's training split, and minimises KL(P_raw ‖ P_gist) + NLL_gist over the
next H tokens. Every `context_every`-th step is a *context* step instead (`objective.py`):
windows of blocks laid out as raw blocks and gists of levels 1–3, with gists of other text
among them, scored on every raw token after the first gist against the all-raw text — how
gists are used, many at a time — and scored the same way on held-out windows
(`ctx_recovery`: below 0, the gists do worse than deleting them). With `context_pool`,
foreign gists of levels 2–3 are built on level-1 gists remade every `context_pool_every`
steps (`ForeignPool`), so a context can hold as many gists as a working context does; the
pool is not checkpointed, and a resumed run remakes it from the resumed net. With
`context_upper`, the pool holds runs of whole files and foreign gists of levels 3–5 are
what a working context's upper levels are: files' roots and folders of files (give the net
`levels` embeddings for them: `net={"levels": 5}`; weights with fewer continue with the
last level's embedding copied into the new ones).

**Start from the best constant, then learn content.** Trained from a random start with
small batches, GistNet collapses: it learns the one vector that does best for every span (a
placeholder worth about a quarter of the span's value) and then suppresses every difference
between spans that helps, because differences that are not yet useful cost more than the
noisy per-span signal pays (a span did as well with another span's gist as with its own).
So a fresh run first fits that constant alone (`constant_steps`), then starts GistNet *at*
it — the projection's bias is the constant (scaled by `CONTENT_SCALE`), its weights zero —
and trains with large batches (micro-batches accumulated) and a small learning rate, so the
span-specific part grows from zero along the per-span signal averaged over many spans.

A held-out validation set (stdlib packages never trained on) is scored every
`eval_every` steps. Checkpoints (weights, optimiser, step, history) are written atomically
every `checkpoint_every` steps, and a run resumes from the last one; the batch of step s
depends only on (seed, s), so a resumed run sees what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from megacontext.adapter import BaseModel
from megacontext.errors import RunMismatch
from megacontext.gistnet import GistNet, GistNetConfig, cosine_lr, load_gistnet, save_gistnet
from megacontext.train.data import HOLDOUT_PACKAGES, Corpus, cached_corpus, stdlib_files
from megacontext.train.objective import (
    ForeignPool,
    candidates,
    context_candidates,
    context_losses,
    foreign_pool,
    gist_batch,
    gist_pieces,
    loss_of,
    make_batch,
    make_context_batch,
    substitution,
    substitutions,
)

CONTEXT = 0  # the `level` of a many-gist context step in a run's history

Progress = Callable[[int, int, dict[str, float]], None]  # (step, total, metrics)


@dataclass(frozen=True)
class TrainConfig:
    lib: Path  # the interpreter's Lib/ folder
    out: Path  # checkpoints, corpus cache, exported weights
    steps: int = 3000
    batch: int = 16  # level-1 examples per micro-batch
    accumulate: int = 4  # micro-batches per optimiser step
    level2_batch: int = 4  # level-2 examples per micro-batch (their teacher pass is long)
    level2_every: int = 4  # every n-th step is a level-2 step
    context_every: int = 0  # every n-th step is a many-gist context step (0: none, 1: all)
    context_batch: int = 8  # context examples per micro-batch
    context_blocks: int = 20  # blocks in a context example's window
    context_foreign: int = 16  # mean foreign gists per context example (0 to twice this)
    context_pool: int = 0  # runs of groups whose level-1 gists foreign gists reuse (0: none)
    context_pool_every: int = 25  # steps between refills of that pool
    context_upper: bool = False  # the pool holds whole files: foreign files' roots and folders
    prefix: int = 64
    horizon: int = 48
    lr: float = 1e-4
    warmup: int = 5
    weight_decay: float = 0.0
    hidden_weight: float = 0.0  # weight of the hidden-state term on single-span steps (0: off)
    recon_weight: float = 0.0  # weight of the reconstruction term on level-1 steps (0: off)
    constant_steps: int = 100  # fit the best single vector first (0: random start)
    constant_lr: float = 1e-2
    seed: int = 0
    checkpoint_every: int = 5
    eval_every: int = 50
    eval_examples: int = 48
    net: dict = field(default_factory=dict)  # GistNetConfig overrides (width, layers, …)
    init: Path | None = None  # a fresh run starts from these exported weights, not the constant


@dataclass
class TrainState:
    net: GistNet
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # per step
    evals: list[dict[str, float]] = field(default_factory=list)  # per evaluation
    pool: tuple[int, ForeignPool] | None = None  # (refill number, pool); not checkpointed
    continues: dict | None = None  # the exported weights a run started from: name, steps, commit


CONTENT_SCALE = 100.0  # the constant's norm inside the projection, against which content grows


def weights_name(model: BaseModel) -> str:
    return "gistnet-" + model.id.split("@")[0]


def new_state(config: TrainConfig, model: BaseModel) -> TrainState:
    """A fresh GistNet and its optimiser. A llama GistNet (`net={"block": "llama"}`) takes
    the base model's layer shape and starts its blocks from the base model's first layers."""
    torch.manual_seed(config.seed)
    overrides, layers = dict(config.net), None
    if overrides.get("block") == "llama":
        first = [model.decoder_layer(i)
                 for i in range(int(overrides.get("layers", GistNetConfig.layers)))]
        overrides = {"width": model.dim, **first[0][0], **overrides}
        layers = [weights for _, weights in first]
    net = GistNet(GistNetConfig(dim=model.dim, **overrides), model.token_norm)
    if layers is not None:
        net.init_from_layers(layers)
    net = net.to(model.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay, betas=(0.9, 0.98))
    return TrainState(net, optimizer)


def save_checkpoint(state: TrainState, config: TrainConfig, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"net": state.net.state_dict(), "optimizer": state.optimizer.state_dict(),
                "step": state.step, "history": state.history, "evals": state.evals,
                "continues": state.continues,
                "net_config": asdict(state.net.config)}, tmp)
    tmp.replace(path)


def load_checkpoint(state: TrainState, path: Path) -> None:
    saved = torch.load(path, map_location=state.net.query.device, weights_only=False)
    if GistNetConfig(**saved["net_config"]) != state.net.config:
        raise RunMismatch(f"{path} holds a GistNet of another shape ({saved['net_config']}): "
                          "resume it with the same options, or train into a new --out")
    state.net.load_state_dict(saved["net"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.step, state.history, state.evals = saved["step"], saved["history"], saved["evals"]
    state.continues = saved.get("continues")


def start_from_weights(state: TrainState, weights: Path, base_id: str | None = None) -> None:
    """Continue a run from exported weights (`save_gistnet`'s files) instead of a fresh
    start; they must hold a GistNet of this run's shape (trained for `base_id`, when given),
    save that a run may give it more level embeddings (each new one starts as a copy of its
    last: the net is unchanged)."""
    if not (weights.is_file() and weights.with_suffix(".json").is_file()):
        raise RunMismatch(f"{weights} is not a GistNet's exported weights (NAME.safetensors "
                          "beside NAME.json)")
    net, manifest = load_gistnet(weights, state.net.query.device)
    if base_id is not None and manifest.get("base_model") != base_id:
        raise RunMismatch(f"{weights} was trained for {manifest.get('base_model')}, not for "
                          f"{base_id}: start from weights for this base model, or fresh")
    ours = state.net.config
    if replace(net.config, levels=ours.levels) != ours or net.config.levels > ours.levels:
        raise RunMismatch(f"{weights} holds a {net.config.block} GistNet of another shape than "
                          f"this run trains ({ours.block}, {ours.levels} levels): pass the "
                          "matching block, or start fresh")
    weights_now = net.state_dict()
    table = weights_now["level_embedding"]
    extra = table[-1:].expand(ours.levels - len(table), -1)
    weights_now["level_embedding"] = torch.cat([table, extra])
    state.net.load_state_dict(weights_now)
    state.continues = {"weights": weights.name, "steps": int(manifest.get("steps", 0)),
                       "commit": manifest.get("commit", "unknown")}


def _every(n: int, step: int) -> bool:
    return bool(n) and step % n == n - 1


def step_batch(config: TrainConfig, corpus: Corpus, pools: dict[int, np.ndarray], step: int
               ) -> tuple[int, list[np.ndarray]]:
    """(level, corpus rows of each micro-batch) of step `step`: a function of (seed, step).
    Level `CONTEXT` (0): a many-gist context step, whose rows are its windows' first blocks."""
    level = CONTEXT if _every(config.context_every, step) else \
        2 if _every(config.level2_every, step) else 1
    n = {CONTEXT: config.context_batch, 1: config.batch, 2: config.level2_batch}[level]
    return level, [np.random.default_rng([config.seed, step, m]).choice(
        pools[level], size=n, replace=False) for m in range(config.accumulate)]


def train_step(state: TrainState, config: TrainConfig, model: BaseModel, corpus: Corpus,
               level: int, micro_batches: list[np.ndarray]) -> dict[str, float]:
    """One optimiser step over the micro-batches (gradients accumulated); its metrics."""
    net = state.net
    net.train()
    lr = cosine_lr(state.step, config.steps, config.lr, config.warmup)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    sums = np.zeros(6)
    for m, rows in enumerate(micro_batches):
        if level == CONTEXT:
            rng = np.random.default_rng([config.seed, state.step, m, 1])
            cb = make_context_batch(corpus, rows, config.context_blocks, config.prefix,
                                    config.horizon, rng, config.context_foreign,
                                    _pool(state, config, model, corpus))
            losses = context_losses(model, cb, gist_pieces(net, model, cb, model.device))
        else:
            batch = make_batch(corpus, rows, level, config.prefix, config.horizon)
            losses = substitution(model, batch, gist_batch(net, model, batch, model.device),
                                  states=config.hidden_weight > 0,
                                  recon=config.recon_weight > 0 and level == 1)
        loss = loss_of(losses, config.hidden_weight, config.recon_weight)
        (loss / len(micro_batches)).backward()
        sums += [loss.item(), losses.kl.mean().item(), losses.nll_gist.mean().item(),
                 float(losses.nll_raw.mean()),
                 float(losses.hidden.detach().mean()) if losses.hidden is not None else np.nan,
                 float(losses.recon.detach().mean()) if losses.recon is not None else np.nan]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0))
    state.optimizer.step()
    state.step += 1
    loss, kl, nll_gist, nll_raw, hidden, recon = sums / len(micro_batches)
    metrics = {"step": state.step, "level": level, "loss": loss, "lr": lr, "kl": kl,
               "nll_gist": nll_gist, "nll_raw": nll_raw, "grad_norm": grad_norm}
    for name, value in (("hidden", hidden), ("recon", recon)):
        if not np.isnan(value):
            metrics[name] = value
    return metrics


def _pool(state: TrainState, config: TrainConfig, model: BaseModel, corpus: Corpus
          ) -> ForeignPool | None:
    """The foreign pool of this step, refilled with the current net every
    `context_pool_every` steps (and after a resume)."""
    if not config.context_pool:
        return None
    refill = state.step // max(config.context_pool_every, 1)
    if state.pool is None or state.pool[0] != refill:
        state.net.eval()
        pool = foreign_pool(state.net, model, corpus,
                            np.random.default_rng([config.seed, refill, 2]),
                            config.context_pool, model.device, files=config.context_upper)
        state.net.train()
        state.pool = (refill, pool)
    return state.pool[1]


def fit_constant(config: TrainConfig, model: BaseModel, corpus: Corpus, pool: np.ndarray
                 ) -> torch.Tensor:
    """The single vector that best stands in for every level-1 span (Adam on the training
    objective, `constant_steps` seeded batches)."""
    vector = model.embeddings.float().mean(0).to(model.device).requires_grad_(True)
    optimizer = torch.optim.Adam([vector], lr=config.constant_lr)
    for step in range(config.constant_steps):
        rng = np.random.default_rng([config.seed, 2**31, step])
        rows = rng.choice(pool, size=config.batch, replace=False)
        batch = make_batch(corpus, rows, 1, config.prefix, config.horizon)
        loss = loss_of(substitution(model, batch, vector.expand(len(rows), -1)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vector.detach()


def start_at(net: GistNet, constant: torch.Tensor) -> None:
    """Make `net` output `constant` for every span, with a zero span-specific part."""
    with torch.no_grad():
        net.proj.weight.zero_()
        net.proj.bias.copy_(CONTENT_SCALE * constant / constant.norm())
        net.log_gain.fill_(float((constant.norm() / net.token_norm).log()))


def evaluate(net: GistNet, model: BaseModel, corpus: Corpus, rows: np.ndarray, level: int,
             prefix: int, horizon: int, batch: int = 8) -> dict[str, float]:
    """Mean NLLs (raw, gist, drop) and the recovery of the means on fixed rows, and the
    content control: the recovery when every example gets another example's gist (the batch
    rolled by one). `content` = recovery − that; 0 means the gists ignore their spans."""
    net.eval()
    sums = np.zeros(4)
    with torch.no_grad():
        for lo in range(0, len(rows), batch):
            b = make_batch(corpus, rows[lo : lo + batch], level, prefix, horizon)
            g = gist_batch(net, model, b, model.device)
            own, other = substitutions(model, b, [g, g.roll(1, 0)], True)
            sums += [float(own.nll_raw.sum()), float(own.nll_gist.sum()),
                     float(own.nll_drop.sum()), float(other.nll_gist.sum())]
    raw, gist, drop, stranger = sums / len(rows)
    helps = drop > raw
    return {"nll_raw": raw, "nll_gist": gist, "nll_drop": drop, "nll_other": stranger,
            "recovery": (drop - gist) / (drop - raw) if helps else float("nan"),
            "content": (stranger - gist) / (drop - raw) if helps else float("nan")}


def evaluate_context(net: GistNet, model: BaseModel, corpus: Corpus, rows: np.ndarray,
                     config: TrainConfig, batch: int = 4) -> dict[str, float]:
    """Many gists in one context, on fixed windows and layouts: mean NLLs over the targets
    (every raw token after the first gist) all raw, with the gists, and with the gists
    deleted, and the recovery of the means — what the gists are worth to the base model in
    each other's company (below 0: worse than deleting them)."""
    net.eval()
    sums = np.zeros(3)
    pool = (foreign_pool(net, model, corpus, np.random.default_rng([config.seed, 10**9, 2]),
                         config.context_pool, model.device, files=config.context_upper)
            if config.context_pool else None)
    with torch.no_grad():
        for lo in range(0, len(rows), batch):
            rng = np.random.default_rng([config.seed, 10**9, lo])
            cb = make_context_batch(corpus, rows[lo : lo + batch], config.context_blocks,
                                    config.prefix, config.horizon, rng, config.context_foreign,
                                    pool)
            r = context_losses(model, cb, gist_pieces(net, model, cb, model.device), True)
            sums += [float(r.nll_raw.sum()), float(r.nll_gist.sum()), float(r.nll_drop.sum())]
    raw, gist, drop = sums / len(rows)
    return {"nll_raw": raw, "nll_gist": gist, "nll_drop": drop,
            "recovery": (drop - gist) / (drop - raw) if drop > raw else float("nan")}


def train_gistnet(config: TrainConfig, model: BaseModel, progress: Progress,
                  stop_after: float | None = None,
                  corpora: tuple[Corpus, Corpus] | None = None,
                  stop_at: int | None = None) -> TrainState:
    """Train (or resume) until `config.steps`, or until `stop_after` seconds have passed, or
    (`stop_at`) until that step of the schedule — e.g. to compare runs midway.
    `corpora` (train, held out) are built from `config.lib` unless given (e.g. carried to a
    machine without the parsers, already built)."""
    started = time.monotonic()
    state = new_state(config, model)  # first: a run that cannot start fails before the corpora
    checkpoint = config.out / "checkpoint.pt"
    if checkpoint.is_file():
        load_checkpoint(state, checkpoint)
    elif config.init is not None:
        start_from_weights(state, config.init, model.id)
    config.out.mkdir(parents=True, exist_ok=True)
    if corpora is None:
        corpus = cached_corpus(config.lib, stdlib_files(config.lib, "train"), model, config.out)
        held = cached_corpus(config.lib, stdlib_files(config.lib, "holdout"), model, config.out)
    else:
        corpus, held = corpora
    pools = {lvl: candidates(corpus, lvl, config.prefix, config.horizon) for lvl in (1, 2)}
    pools[CONTEXT] = context_candidates(corpus, config.context_blocks, config.prefix,
                                        config.horizon)
    rng = np.random.default_rng([config.seed, 10**9])
    val = {lvl: rng.choice(candidates(held, lvl, config.prefix, config.horizon),
                           size=config.eval_examples if lvl == 1 else config.eval_examples // 2,
                           replace=False) for lvl in (1, 2)}
    held_windows = context_candidates(held, config.context_blocks, config.prefix,
                                      config.horizon)
    val[CONTEXT] = rng.choice(held_windows, size=min(config.eval_examples // 2,
                                                     len(held_windows)), replace=False)
    if not checkpoint.is_file() and config.init is None and config.constant_steps:
        start_at(state.net, fit_constant(config, model, corpus, pools[1]))

    def held_out() -> dict[str, float]:
        result: dict[str, float] = {"step": state.step}
        for lvl in (1, 2):
            r = evaluate(state.net, model, held, val[lvl], lvl, config.prefix, config.horizon,
                         batch=config.batch if lvl == 1 else 2)
            result.update({f"l{lvl}_{k}": v for k, v in r.items()})
        if len(val[CONTEXT]):
            r = evaluate_context(state.net, model, held, val[CONTEXT], config)
            result.update({f"ctx_{k}": v for k, v in r.items()})
        state.evals.append(result)
        return result

    if not state.evals and state.step < config.steps:
        progress(state.step, config.steps, held_out())  # where the run starts from
    while state.step < config.steps:
        level, micro_batches = step_batch(config, corpus, pools, state.step)
        metrics = train_step(state, config, model, corpus, level, micro_batches)
        state.history.append(metrics)
        if state.step % config.eval_every == 0 or state.step == config.steps:
            metrics = {**metrics, **held_out()}
        progress(state.step, config.steps, metrics)
        last = state.step == config.steps
        timed_out = stop_after is not None and time.monotonic() - started > stop_after
        timed_out = timed_out or (stop_at is not None and state.step >= stop_at)
        if state.step % config.checkpoint_every == 0 or last or timed_out:
            save_checkpoint(state, config, checkpoint)
            export(state, config, model, corpus, held)
        if timed_out:
            break
    return state


def export(state: TrainState, config: TrainConfig, model: BaseModel, corpus: Corpus,
           held: Corpus) -> Path:
    """fp16 weights + manifest in `config.out` (what ships as package data)."""
    first = state.continues  # the weights this run continued, if any: their steps count too
    manifest = {
        "base_model": model.id,
        "steps": state.step + (first["steps"] if first else 0),
        **({"continues": first} if first else {}),
        "seed": config.seed,
        "data": {"source": "Python standard library Lib/ (tests and site-packages excluded)",
                 "python_lib": str(config.lib), "train_files": corpus.files,
                 "train_tokens": len(corpus.stream), "holdout_packages": list(HOLDOUT_PACKAGES),
                 "holdout_files": held.files},
        "objective": f"KL(P_raw || P_gist) + NLL_gist over the next {config.horizon} tokens "
                     f"after a {config.prefix}-token prefix; base model frozen"
                     + (f"; one step in {config.context_every}: many gists of levels 1-3 in "
                        f"windows of {config.context_blocks} blocks with up to "
                        f"{2 * config.context_foreign} gists of other text among them"
                        + (f" (levels 2-3 built on level-1 gists of {config.context_pool} "
                           f"runs of groups, remade every {config.context_pool_every} steps)"
                           if config.context_pool and not config.context_upper else "")
                        + (f" (levels 2-5 as the tree builds them: groups, files' roots and "
                           f"folders of files, over the level-1 and level-2 gists of "
                           f"{config.context_pool} runs of whole files, remade every "
                           f"{config.context_pool_every} steps)"
                           if config.context_pool and config.context_upper else "")
                        + ", KL + NLL over every raw token after the first gist"
                        if config.context_every else ""),
        "train_config": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in asdict(config).items()},
        "loss_curve": _curve(state.history),
        "evals": state.evals,
        "commit": _commit(),
    }
    path = save_gistnet(state.net, config.out, weights_name(model), manifest)
    (config.out / "history.json").write_text(json.dumps(state.history))
    return path


def _curve(history: list[dict[str, float]], points: int = 100
           ) -> list[dict[str, float | None]]:
    """The level-1 loss, averaged over windows: a compact curve for the manifest (None
    where a window recorded no value)."""
    rows = [h for h in history if h["level"] == 1]
    if not rows:
        return []
    size = max(1, len(rows) // points)

    def mean(key: str, window: list[dict[str, float]]) -> float | None:
        values = [float(r[key]) for r in window if np.isfinite(r.get(key, np.nan))]
        return float(np.mean(values)) if values else None

    return [{"step": rows[min(i + size, len(rows)) - 1]["step"],
             "loss": mean("loss", rows[i : i + size]), "kl": mean("kl", rows[i : i + size])}
            for i in range(0, len(rows), size)]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
