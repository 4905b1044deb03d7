"""Benchmark: is GistNet short of its targets because it does not generalise, or because it
does not fit?

    python benchmarks/gist_fit.py [--weights W.safetensors] [--n1 128] [--n2 32]
        [--memorize 64] [--epochs 40] [--lr 1e-3] [--name gist_fit]

GistNet trains only on the standard library's training split and is scored on held-out
code. Two measurements, same protocol as `gist_quality.py` (spans cut as the index cuts
them, 128-token prefix, NLL over the next 64 tokens, base model frozen):

1. **Fit against generalisation.** Recovery on spans of the training split (which the net
   has seen, in its 48-token training protocol, several times over) beside the same number
   of held-out stdlib spans, levels 1 and 2. A net that fits its data and fails to
   generalise scores far higher on the first; equal scores mean it does not fit even what it
   trained on — more data will not help; more fitting (steps, capacity, optimisation) may.
2. **Memorisation** (`--memorize N`, level 1). A copy of the net keeps training on N spans
   of the training split only (AdamW, `--epochs` passes, `--lr` with cosine decay, the
   training loss KL + NLL). How high its recovery on those N spans can climb says whether
   the net's form — one vector from its span's tokens alone, at its learned gain — can
   express gists much better than it does; `gist_ceiling.md`'s free vectors (one vector
   fitted per example on its own continuation) reach about 0.8. Held-out recovery is
   tracked alongside (it should fall as the copy overfits).

Writes benchmarks/results/NAME.md, NAME.json and NAME.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PREFIX, HORIZON = 128, 64
SPLITS = ("training split", "held-out stdlib")


def main() -> None:
    import platformdirs
    import torch

    from benchmarks.gist_quality import recovery
    from benchmarks.index_speed import machine
    from benchmarks.plotting import pyplot
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.gistnet import cosine_lr, load_gistnet, shipped_weights
    from megacontext.train.data import cached_corpus, stdlib_files
    from megacontext.train.objective import (
        candidates,
        gist_batch,
        loss_of,
        make_batch,
        reference,
        student,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, help="GistNet weights (default: the shipped ones)")
    ap.add_argument("--n1", type=int, default=128, help="level-1 examples per split")
    ap.add_argument("--n2", type=int, default=32, help="level-2 examples per split")
    ap.add_argument("--memorize", type=int, default=64,
                    help="training-split level-1 spans the copy trains on (0: skip)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="gist_fit", help="results file name (no suffix)")
    args = ap.parse_args()
    if min(args.n1, args.n2, args.memorize) < 0 or args.epochs < 1 or args.eval_every < 1:
        sys.exit("error: counts must be ≥ 0, --epochs and --eval-every ≥ 1")
    pyplot()  # before the long run, not after it
    torch.manual_seed(args.seed)
    cache = Path(platformdirs.user_cache_dir("mcagent"))
    model = load_base_model(ModelConfig(cache_dir=cache))
    model.causal_lm().requires_grad_(False)
    weights = args.weights or shipped_weights(model.id)
    if weights is None:
        sys.exit(f"no GistNet weights for {model.id}: pass --weights")
    net, manifest = load_gistnet(weights, model.device)
    lib = Path(sysconfig.get_paths()["stdlib"])
    corpora = {split: cached_corpus(lib, stdlib_files(lib, name), model, cache / "eval-corpora")
               for split, name in zip(SPLITS, ("train", "holdout"), strict=True)}
    started = time.perf_counter()

    def score(gist: object, split: str, level: int, rows: np.ndarray, batch: int,
              refs: dict | None = None) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"raw": [], "drop": [], "gistnet": []}
        for lo in range(0, len(rows), batch):
            b = make_batch(corpora[split], rows[lo : lo + batch], level, PREFIX, HORIZON)
            ref = refs[lo] if refs is not None else reference(model, b, with_drop=True)
            with torch.no_grad():
                res = student(model, b, ref, gist_batch(gist, model, b, model.device))
            out["raw"] += res.nll_raw.tolist()
            out["drop"] += res.nll_drop.tolist()
            out["gistnet"] += res.nll_gist.tolist()
        return out

    # 1. fit against generalisation ------------------------------------------------------
    picked: dict[tuple[str, int], np.ndarray] = {}
    fit: dict[str, dict] = {}
    for d, split in enumerate(SPLITS):
        rng = np.random.default_rng([args.seed, d, 11])
        for level, n, batch in ((1, args.n1, 8), (2, args.n2, 2)):
            if not n:
                continue
            pool = candidates(corpora[split], level, PREFIX, HORIZON)
            rows = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
            picked[split, level] = rows
            net.eval()
            r = score(net, split, level, rows, batch)
            fit[f"{split}|{level}"] = r
            med, of_means, _ = recovery(r, "gistnet")
            print(f"{split} level {level}: {len(rows)} spans, recovery median {med:.2f} / "
                  f"of means {of_means:.2f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)

    # 2. memorisation --------------------------------------------------------------------
    curve: list[dict[str, float]] = []
    if args.memorize:
        split = SPLITS[0]
        rng = np.random.default_rng([args.seed, 12])
        pool = candidates(corpora[split], 1, PREFIX, HORIZON)
        rows = np.sort(rng.choice(pool, size=min(args.memorize, len(pool)), replace=False))
        batch = 16
        batches = [make_batch(corpora[split], rows[lo : lo + batch], 1, PREFIX, HORIZON)
                   for lo in range(0, len(rows), batch)]
        refs = {i * batch: reference(model, b, with_drop=True) for i, b in enumerate(batches)}
        held_rows = picked.get((SPLITS[1], 1))
        copy_net = copy.deepcopy(net).requires_grad_(True)  # loaded for inference
        opt = torch.optim.AdamW(copy_net.parameters(), lr=args.lr, weight_decay=0.0,
                                betas=(0.9, 0.98))
        total = args.epochs * len(batches)

        def evaluate(epoch: int) -> None:
            copy_net.eval()
            mem = score(copy_net, split, 1, rows, batch, refs)
            point = {"epoch": epoch, "memorised": recovery(mem, "gistnet")[0],
                     "memorised_of_means": recovery(mem, "gistnet")[1]}
            if held_rows is not None:
                held = score(copy_net, SPLITS[1], 1, held_rows[:64], 8)
                point["held_out"] = recovery(held, "gistnet")[0]
                point["held_out_of_means"] = recovery(held, "gistnet")[1]
            curve.append(point)
            print(json.dumps({k: round(v, 4) for k, v in point.items()}), flush=True)

        evaluate(0)
        step = 0
        for epoch in range(1, args.epochs + 1):
            copy_net.train()
            for i in np.random.default_rng([args.seed, epoch]).permutation(len(batches)):
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, total, args.lr, warmup=2)
                b = batches[i]
                loss = loss_of(student(model, b, refs[i * batch],
                                       gist_batch(copy_net, model, b, model.device)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(copy_net.parameters(), 1.0)
                opt.step()
                step += 1
            if epoch % args.eval_every == 0 or epoch == args.epochs:
                evaluate(epoch)
    seconds = time.perf_counter() - started
    result = {"weights": str(weights), "manifest_steps": manifest.get("steps"),
              "args": {k: str(v) for k, v in vars(args).items()}, "fit": fit,
              "memorize": curve, "seconds": seconds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    write(result, args, weights, manifest, machine())
    if curve:
        plot(curve, RESULTS / f"{args.name}.png")


def write(result: dict, args: argparse.Namespace, weights: Path, manifest: dict,
          machine_text: str) -> None:
    """NAME.md from the run's `result` (the JSON the run writes beside it)."""
    from benchmarks.gist_quality import median_interval, per_example, recovery

    lines = [
        "# Gist fit: does GistNet fit what it trained on?", "",
        f"Machine: {machine_text}. Produced by `python benchmarks/gist_fit.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                   if v is not None and k != "weights")
        + (f" --weights {weights.name}" if args.weights else "")
        + f"` in {result['seconds'] / 60:.0f} min.",
        f"GistNet: `{weights.name}` — {manifest.get('steps')} steps, trained only on the "
        "standard library's training split. Spans cut as the index cuts them; "
        f"{PREFIX}-token prefix; NLL over the next {HORIZON} tokens; base model frozen. "
        "Recovery as in `gist_quality.md` (median over spans whose span helps, with its 95% "
        "bootstrap interval; of means over all).", "",
        "## Training split against held-out stdlib", "",
        "| split | level | n (span helps) | NLL raw | NLL drop | NLL GistNet "
        "| **recovery: median** [95%] | of means |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in result["fit"].items():
        split, level = key.split("|")
        med, of_means, helps = recovery(r, "gistnet")
        lo, hi = median_interval(per_example(r, "gistnet"))
        lines.append(f"| {split} | {level} | {len(r['raw'])} ({helps}) | "
                     f"{np.mean(r['raw']):.3f} | {np.mean(r['drop']):.3f} | "
                     f"{np.mean(r['gistnet']):.3f} | **{med:.2f}** [{lo:.2f}, {hi:.2f}] | "
                     f"{of_means:.2f} |")
    if result["memorize"]:
        lines += ["", f"## Memorisation: a copy trained on {args.memorize} training-split "
                  "level-1 spans only", "",
                  f"AdamW, lr {args.lr} (cosine), batch 16, {args.epochs} epochs; the loss is "
                  "the training loss (KL + NLL over the 64 scored tokens). *Memorised*: "
                  "recovery on those spans; *held-out*: on the first 64 held-out level-1 "
                  "spans above.", "",
                  "| epoch | memorised: median / of means | held-out: median / of means |",
                  "|---|---|---|"]
        for p in result["memorize"]:
            held = (f"{p['held_out']:.2f} / {p['held_out_of_means']:.2f}"
                    if "held_out" in p else "–")
            lines.append(f"| {p['epoch']} | {p['memorised']:.2f} / "
                         f"{p['memorised_of_means']:.2f} | {held} |")
        lines += ["", f"![memorisation]({args.name}.png)"]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(curve: list[dict[str, float]], path: Path) -> None:
    from benchmarks.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [p["epoch"] for p in curve]
    ax.plot(epochs, [p["memorised"] for p in curve], marker="o", label="memorised spans")
    if "held_out" in curve[0]:
        ax.plot(epochs, [p["held_out"] for p in curve], marker="s", label="held-out spans")
    ax.axhline(0.6, color="grey", linestyle=":", label="level-1 target")
    ax.set_xlabel("epochs over the memorised spans")
    ax.set_ylabel("median recovery (level 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
