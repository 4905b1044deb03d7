"""Benchmark: which GistNet encoder learns faster?

    python benchmarks/gist_encoder.py [--arms plain,llama] [--minutes 90] [--batch 32]
        [--eval-every 20] [--hidden-weight 1.0] [--recon-weight 1.0] [--name gist_encoder]

Fresh GistNets ("arms") train side by side on the standard library's training split, under
the same recipe, seed and batches: all start at the same fitted constant (the trainer's
start, `start_at`), then take turns at optimiser steps (level 1 only, so that the
comparison spends all of its budget where the target is hardest). The arms:

- `plain`: the shipped shape (pre-LayerNorm blocks at width 512, learned positions), from
  a random start;
- `llama`: the base model's own decoder-layer shape (RMSNorm, rotary positions,
  grouped-query attention, SwiGLU) at the base width, its blocks starting from the base
  model's first layers, attending both ways;
- `readK` (e.g. `read4`): a plain GistNet that reads the children not as they are but as
  the frozen base model's first K layers leave them, run causally over the children as
  the base model itself would read them (plus the children themselves, both at token
  norm). It asks whether an encoder that starts from the base model's own understanding of
  the span compresses better than one that learns it from the token embeddings; the price
  would be K base layers per token at index time;
- `hidden`: the plain shape trained with a denser signal: besides KL + NLL of the
  continuation, the relative squared error of the base model's residual stream after every
  layer at the continuation's positions, gist against raw span (`--hidden-weight` times
  it). It asks whether the optimisation through the frozen base model, not the encoder, is
  what learns slowly: every layer's state says where the gist falls short, not only the
  output distribution;
- `recon`: the plain shape trained to also let the base model reconstruct the span from
  its gist: besides KL + NLL of the continuation, the NLL of the span's own tokens read
  after the gist (`[prefix][gist][span]`, teacher-forced; `--recon-weight` times it), the
  autoencoding signal ICAE pretrains its memory slots with. It asks whether the gist learns
  its span's content faster when asked for it directly, not only through what follows;
- `hK` (e.g. `h16`): the plain shape trained on the first K continuation tokens only
  (scored, like every arm, on the usual 48). A step then costs less, so with `--arm-batch`
  it can see more spans in the same time: it asks whether the near continuation carries
  enough of the signal to make training cheaper per span.

`--arm-batch` sets the level-1 batch of every arm but `plain` (the shared constant is
always fitted at `--batch`).

Every `--eval-every` steps all are scored on the same held-out stdlib spans (the
trainer's `evaluate`: recovery of the mean NLLs and the content control). It is a pilot on
a CPU budget: equal steps, not convergence; the curve says which encoder to give a long GPU
run. Writes benchmarks/results/gist_encoder.md (+ .png) after every evaluation, so a run
stopped early still leaves its curve. `--name` names the results files.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


class Reader(torch.nn.Module):
    """A `readK` arm: frozen base layers 0..K−1 read the children causally; `net` (a plain
    GistNet, the only trained part) pools what they make of them."""

    def __init__(self, net: torch.nn.Module, model: object, layers: int) -> None:
        from megacontext.gistnet import GistNetConfig, _LlamaBlock

        super().__init__()
        self.net = net
        first = [model.decoder_layer(i) for i in range(layers)]
        shape = first[0][0]
        c = GistNetConfig(dim=model.dim, width=model.dim, block="llama", **shape)
        blocks = []
        for _, weights in first:
            b = _LlamaBlock(c)
            b.load_state_dict(weights)
            blocks.append(b.eval().requires_grad_(False).to(model.device))
        self._frozen = tuple(blocks)  # not registered: never trained, never counted
        self.head = model.dim // c.heads
        self.theta = c.rope_theta
        self.token_norm = model.token_norm

    def parameter_count(self) -> int:
        return self.net.parameter_count()

    def forward(self, children: torch.Tensor, mask: torch.Tensor, level: torch.Tensor
                ) -> torch.Tensor:
        from megacontext.gistnet import _rope_tables

        K = children.shape[1]
        with torch.no_grad():
            x = children.float()
            causal = torch.ones(K, K, dtype=torch.bool, device=x.device).tril()
            keep = causal[None, None] & mask.to(x.device)[:, None, None, :]
            rope = _rope_tables(K, self.head, self.theta, x.device)
            for block in self._frozen:
                x = block(x, keep, rope)
            read = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            raw = children.float() / children.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
            feats = (read + raw) * (self.token_norm / 2**0.5)
        return self.net(feats, mask, level)


def main() -> None:
    import platformdirs

    from benchmarks.index_speed import machine
    from benchmarks.plotting import pyplot
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.train.data import cached_corpus, stdlib_files
    from megacontext.train.gistnet import (
        TrainConfig,
        evaluate,
        fit_constant,
        new_state,
        start_at,
        step_batch,
        train_step,
    )
    from megacontext.train.objective import candidates

    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget")
    ap.add_argument("--steps", type=int, default=400, help="schedule length (cosine)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--constant-steps", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=None,
                    help="corpus cache folder (default: mcagent's user cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="plain,llama",
                    help="comma-separated: plain, llama, readK, hidden, recon, hK")
    ap.add_argument("--arm-batch", type=int, default=0,
                    help="level-1 batch of the arms other than plain (default: --batch)")
    ap.add_argument("--hidden-weight", type=float, default=1.0,
                    help="weight of the hidden-state term in the `hidden` arm")
    ap.add_argument("--recon-weight", type=float, default=1.0,
                    help="weight of the reconstruction term in the `recon` arm")
    ap.add_argument("--name", default="gist_encoder", help="results file stem")
    ap.add_argument("--dtype", default="bfloat16",
                    help="the base model's dtype (float32 on CPUs without native bfloat16)")
    args = ap.parse_args()
    pyplot()  # before the long run, not after it
    arms = args.arms.split(",")
    for arm in arms:
        if arm not in ("plain", "llama", "hidden", "recon") and not (
                arm.startswith("read") and arm[4:].isdigit()) and not (
                arm.startswith("h") and arm[1:].isdigit() and 0 < int(arm[1:]) <= 48):
            sys.exit(f"unknown arm {arm!r}: plain, llama, hidden, recon, readK (e.g. read4) "
                     "or hK (e.g. h16, K ≤ 48)")
    started = time.monotonic()
    cache = args.cache or Path(platformdirs.user_cache_dir("mcagent"))
    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent")),
                                        dtype=args.dtype))
    lib = Path(sysconfig.get_paths()["stdlib"])
    corpus = cached_corpus(lib, stdlib_files(lib, "train"), model, cache)
    held = cached_corpus(lib, stdlib_files(lib, "holdout"), model, cache)
    base = dict(lib=lib, out=cache, steps=args.steps, batch=args.batch, accumulate=1,
                level2_every=0, lr=args.lr, warmup=10, seed=args.seed,
                constant_steps=args.constant_steps)
    plain = TrainConfig(**base)
    configs = {arm: replace(plain, net={"block": "llama"} if arm == "llama" else {},
                            hidden_weight=args.hidden_weight if arm == "hidden" else 0.0,
                            recon_weight=args.recon_weight if arm == "recon" else 0.0,
                            horizon=int(arm[1:]) if arm[0] == "h" and arm[1:].isdigit()
                            else plain.horizon,
                            batch=args.arm_batch if args.arm_batch and arm != "plain"
                            else plain.batch)
               for arm in arms}
    pools = {1: candidates(corpus, 1, plain.prefix, plain.horizon)}
    rng = np.random.default_rng([args.seed, 10**9])
    val = rng.choice(candidates(held, 1, plain.prefix, plain.horizon),
                     size=args.eval_examples, replace=False)

    print("fitting the shared constant …", flush=True)
    constant = fit_constant(plain, model, corpus, pools[1])
    states = {}
    for name, config in configs.items():
        states[name] = new_state(config, model)
        start_at(states[name].net, constant)
        if name.startswith("read"):
            states[name].net = Reader(states[name].net, model, int(name[4:]))
    params = {name: s.net.parameter_count() for name, s in states.items()}
    curves: dict[str, list[dict[str, float]]] = {name: [] for name in states}
    seconds = {name: 0.0 for name in states}

    def score(step: int) -> None:
        for name, state in states.items():
            r = evaluate(state.net, model, held, val, 1, plain.prefix, plain.horizon,
                         batch=16)
            curves[name].append({"step": step, **r})
        print(json.dumps({"step": step, **{f"{n}_{k}": round(c[-1][k], 4) for n, c in
                                            curves.items() for k in ("recovery", "content")}}),
              flush=True)
        write(curves, params, seconds, {n: c.batch for n, c in configs.items()}, args,
              machine(), time.monotonic() - started)

    score(0)
    first = arms[0]
    step = 0
    while step < args.steps and time.monotonic() - started < args.minutes * 60:
        for name, state in states.items():
            t = time.monotonic()
            level, micro = step_batch(configs[name], corpus, pools, step)
            m = train_step(state, configs[name], model, corpus, level, micro)
            seconds[name] += time.monotonic() - t
        step += 1
        if step % 5 == 0:
            extra = "".join(f" {k} {m[k]:.4f}" for k in ("hidden", "recon") if k in m)
            print(f"step {step} {m['loss']:.4f}{extra}", flush=True)
        if step % args.eval_every == 0:
            score(step)
    if not curves[first] or curves[first][-1]["step"] != step:
        score(step)


def write(curves: dict[str, list[dict[str, float]]], params: dict[str, int],
          seconds: dict[str, float], batches: dict[str, int], args: argparse.Namespace,
          machine_text: str, elapsed: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    arms = list(curves)
    steps = [r["step"] for r in curves[arms[0]]]
    mixed = len(set(batches.values())) > 1
    lines = [
        "# GistNet encoder pilot: " + " vs ".join(f"`{a}`" for a in arms),
        "",
        f"Machine: {machine_text}. Produced by `python benchmarks/gist_encoder.py --arms "
        f"{args.arms} --minutes {args.minutes:g} --batch {args.batch} --lr {args.lr:g} "
        f"--steps {args.steps} --eval-every {args.eval_every} --eval-examples "
        f"{args.eval_examples}"
        + (f" --hidden-weight {args.hidden_weight:g}" if "hidden" in arms else "")
        + (f" --recon-weight {args.recon_weight:g}" if "recon" in arms else "")
        + (f" --arm-batch {args.arm_batch}" if args.arm_batch else "")
        + f" --dtype {args.dtype}"
        + f" --name {args.name}` ({elapsed / 60:.0f} min).",
        "",
        ("All start at the same fitted constant and see the same level-1 batches (standard "
         if not mixed else
         "All start at the same fitted constant and draw level-1 batches of their own sizes "
         "(standard ")
        + "library training split, 64-token prefix, 48 tokens scored, base model in "
        f"{args.dtype}). "
        f"Scored on the same {args.eval_examples} held-out stdlib spans: *recovery* of the "
        "mean NLLs, and *content* = recovery − the recovery with another span's gist (0: the "
        "gists ignore their spans). The arms are described in the script's docstring.",
        "",
        "Trained parameters: " + ", ".join(f"{a} {params[a] / 1e6:.2f}M" for a in arms)
        + ". Seconds per training step: "
        + ", ".join(f"{a} {_rate(seconds, a, steps)}" for a in arms) + ".",
        "",
        "| step | spans seen" + (f" ({' / '.join(arms)})" if mixed else "") + " | "
        + " | ".join(f"{a} recovery" for a in arms) + " | "
        + " | ".join(f"{a} content" for a in arms) + " |",
        "|---|---|" + "---|" * (2 * len(arms)),
    ]
    for i, step in enumerate(steps):
        rows = [curves[a][i] for a in arms]
        seen = " / ".join(str(step * batches[a]) for a in arms) if mixed else \
            str(step * batches[arms[0]])
        lines.append(f"| {step} | {seen} | "
                     + " | ".join(f"{r['recovery']:.3f}" for r in rows) + " | "
                     + " | ".join(f"{r['content']:.3f}" for r in rows) + " |")
    lines += ["", f"![curves]({args.name}.png)", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    (RESULTS / f"{args.name}.json").write_text(json.dumps(curves, indent=1) + "\n")
    plot(curves, args.name)


def _rate(seconds: dict[str, float], name: str, steps: list[int]) -> str:
    done = steps[-1] if steps else 0
    return f"{seconds[name] / done:.1f}" if done else "–"


def plot(curves: dict[str, list[dict[str, float]]], stem: str) -> None:
    from benchmarks.plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, rows in curves.items():
        x = [r["step"] for r in rows]
        axes[0].plot(x, [r["recovery"] for r in rows], marker="o", label=name)
        axes[1].plot(x, [r["content"] for r in rows], marker="o", label=name)
    for ax, title in zip(axes, ("recovery (held-out stdlib, level 1)", "content"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
