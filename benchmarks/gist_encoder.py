"""Benchmark: which GistNet encoder learns faster — `plain` or `llama` from the base layers?

    python benchmarks/gist_encoder.py [--minutes 90] [--batch 32] [--eval-every 20]

Two fresh GistNets train side by side on the standard library's training split, under the
same recipe, seed and batches: both start at the same fitted constant (the trainer's start,
`start_at`), then alternate optimiser steps (level 1 only, so that the comparison spends
all of its budget where the target is hardest):

- `plain`: the shipped shape (pre-LayerNorm blocks at width 512, learned positions), from
  a random start;
- `llama`: the base model's own decoder-layer shape (RMSNorm, rotary positions,
  grouped-query attention, SwiGLU) at the base width, its blocks starting from the base
  model's first layers, attending both ways.

Every `--eval-every` steps both are scored on the same held-out stdlib spans (the
trainer's `evaluate`: recovery of the mean NLLs and the content control). It is a pilot on
a CPU budget: equal steps, not convergence; the curve says which encoder to give a long GPU
run. Writes benchmarks/results/gist_encoder.md (+ .png) after every evaluation, so a run
stopped early still leaves its curve.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    import platformdirs

    from benchmarks.index_speed import machine
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
    args = ap.parse_args()
    started = time.monotonic()
    cache = args.cache or Path(platformdirs.user_cache_dir("mcagent"))
    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent")),
                                        dtype="bfloat16"))
    lib = Path(sysconfig.get_paths()["stdlib"])
    corpus = cached_corpus(lib, stdlib_files(lib, "train"), model, cache)
    held = cached_corpus(lib, stdlib_files(lib, "holdout"), model, cache)
    base = dict(lib=lib, out=cache, steps=args.steps, batch=args.batch, accumulate=1,
                level2_every=0, lr=args.lr, warmup=10, seed=args.seed,
                constant_steps=args.constant_steps)
    configs = {"plain": TrainConfig(**base), "llama": TrainConfig(**base, net={"block": "llama"})}
    pools = {1: candidates(corpus, 1, configs["plain"].prefix, configs["plain"].horizon)}
    rng = np.random.default_rng([args.seed, 10**9])
    val = rng.choice(candidates(held, 1, configs["plain"].prefix, configs["plain"].horizon),
                     size=args.eval_examples, replace=False)

    print("fitting the shared constant …", flush=True)
    constant = fit_constant(configs["plain"], model, corpus, pools[1])
    states = {}
    for name, config in configs.items():
        states[name] = new_state(config, model)
        start_at(states[name].net, constant)
    params = {name: s.net.parameter_count() for name, s in states.items()}
    curves: dict[str, list[dict[str, float]]] = {name: [] for name in states}
    seconds = {name: 0.0 for name in states}

    def score(step: int) -> None:
        for name, state in states.items():
            r = evaluate(state.net, model, held, val, 1, configs[name].prefix,
                         configs[name].horizon, batch=16)
            curves[name].append({"step": step, **r})
        print(json.dumps({"step": step, **{f"{n}_{k}": round(c[-1][k], 4) for n, c in
                                            curves.items() for k in ("recovery", "content")}}),
              flush=True)
        write(curves, params, seconds, args, machine(), time.monotonic() - started)

    score(0)
    step = 0
    while step < args.steps and time.monotonic() - started < args.minutes * 60:
        for name, state in states.items():
            t = time.monotonic()
            level, micro = step_batch(configs[name], corpus, pools, step)
            m = train_step(state, configs[name], model, corpus, level, micro)
            seconds[name] += time.monotonic() - t
        step += 1
        if step % 5 == 0:
            print(f"step {step} {m['loss']:.4f}", flush=True)
        if step % args.eval_every == 0:
            score(step)
    if not curves["plain"] or curves["plain"][-1]["step"] != step:
        score(step)


def write(curves: dict[str, list[dict[str, float]]], params: dict[str, int],
          seconds: dict[str, float], args: argparse.Namespace, machine_text: str,
          elapsed: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in curves["plain"]]
    lines = [
        "# GistNet encoder pilot: `plain` vs `llama` (from the base model's layers)",
        "",
        f"Machine: {machine_text}. Produced by `python benchmarks/gist_encoder.py --minutes "
        f"{args.minutes:g} --batch {args.batch} --lr {args.lr:g} --steps {args.steps} "
        f"--eval-every {args.eval_every} --eval-examples {args.eval_examples}` "
        f"({elapsed / 60:.0f} min).",
        "",
        "Both start at the same fitted constant and see the same level-1 batches (standard "
        "library training split, 64-token prefix, 48 tokens scored, base model in bfloat16). "
        f"Scored on the same {args.eval_examples} held-out stdlib spans: *recovery* of the "
        "mean NLLs, and *content* = recovery − the recovery with another span's gist (0: the "
        "gists ignore their spans).",
        "",
        f"Parameters: plain {params['plain'] / 1e6:.2f}M, llama {params['llama'] / 1e6:.2f}M. "
        f"Seconds per training step: plain {_rate(seconds, 'plain', steps)}, "
        f"llama {_rate(seconds, 'llama', steps)}.",
        "",
        "| step | spans seen | plain recovery | llama recovery | plain content | llama content |",
        "|---|---|---|---|---|---|",
    ]
    for p, q in zip(curves["plain"], curves["llama"], strict=True):
        lines.append(f"| {p['step']} | {p['step'] * args.batch} | {p['recovery']:.3f} | "
                     f"{q['recovery']:.3f} | {p['content']:.3f} | {q['content']:.3f} |")
    lines += ["", "![curves](gist_encoder.png)", ""]
    (RESULTS / "gist_encoder.md").write_text("\n".join(lines))
    (RESULTS / "gist_encoder.json").write_text(json.dumps(curves, indent=1) + "\n")
    plot(curves)


def _rate(seconds: dict[str, float], name: str, steps: list[int]) -> str:
    done = steps[-1] if steps else 0
    return f"{seconds[name] / done:.1f}" if done else "–"


def plot(curves: dict[str, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(RESULTS / "gist_encoder.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
