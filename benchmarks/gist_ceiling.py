"""Benchmark: the ceiling of any 32→1 compressor for this frozen base model.

    python benchmarks/gist_ceiling.py [--n1 8] [--n2 4] [--steps 80]

GistNet must produce one vector in the base model's input-embedding space. How much of the
span's benefit can *any* such vector carry? For each held-out example we optimise a free
vector directly (Adam, starting from GistNet's gist) to make the frozen model's predictions
over the next 64 tokens match those it makes with the raw span: KL(P_raw ‖ P_vector) alone
(`--objective kl`, the default), so the vector can at best reproduce the span (recovery 1)
and cannot learn the continuation itself. It is an oracle (it is fitted on the very text it
is scored on), so no compressor can beat it: its recovery bounds GistNet's. With
`--objective kl+nll` (GistNet's training loss) the vector may also encode the continuation
and go past the raw span. Writes benchmarks/results/gist_ceiling.md.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PREFIX, HORIZON = 128, 64


def main() -> None:
    import platformdirs
    import torch

    from benchmarks.gist_quality import THIRD_PARTY
    from benchmarks.index_speed import machine
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.gistnet import load_gistnet, shipped_weights
    from megacontext.train.data import cached_corpus, package_files, stdlib_files
    from megacontext.train.objective import (
        candidates,
        gist_batch,
        loss_of,
        make_batch,
        reference,
        student,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--n1", type=int, default=8, help="level-1 examples per dataset")
    ap.add_argument("--n2", type=int, default=4, help="level-2 examples per dataset")
    ap.add_argument("--steps", type=int, default=80, help="optimisation steps per example")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--objective", choices=("kl", "kl+nll"), default="kl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cache = Path(platformdirs.user_cache_dir("mcagent"))
    model = load_base_model(ModelConfig(cache_dir=cache))
    model.causal_lm().requires_grad_(False)
    weights = shipped_weights(model.id)
    if weights is None:
        sys.exit(f"no GistNet weights for {model.id}")
    net, manifest = load_gistnet(weights, model.device)
    manifest = {**manifest, "gain": f"{float(net.log_gain.exp()):.2f}"}
    lib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    datasets = {
        "held-out stdlib": (lib, stdlib_files(lib, "holdout")),
        "third-party": (site, package_files(site, THIRD_PARTY)),
    }
    started = time.perf_counter()
    rows: dict[int, dict[str, list[float]]] = {}
    curves: dict[int, list[np.ndarray]] = {}
    for d, (root, paths) in enumerate(datasets.values()):
        corpus = cached_corpus(root, paths, model, cache / "eval-corpora")
        rng = np.random.default_rng([args.seed, d, 7])
        for level, n in ((1, args.n1), (2, args.n2)):
            if n == 0:
                continue
            pool = candidates(corpus, level, PREFIX, HORIZON)
            picked = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
            out = rows.setdefault(level, {k: [] for k in ("raw", "drop", "gistnet", "free")})
            b = make_batch(corpus, picked, level, PREFIX, HORIZON)
            ref = reference(model, b, with_drop=True)
            with torch.no_grad():
                g = gist_batch(net, model, b, model.device)
                start = student(model, b, ref, g)
            free = g.clone().requires_grad_(True)
            opt = torch.optim.Adam([free], lr=args.lr)
            curve = []
            for step in range(args.steps):
                for group in opt.param_groups:  # cosine to a tenth
                    group["lr"] = args.lr * (0.1 + 0.45 * (1 + np.cos(np.pi * step / args.steps)))
                losses = student(model, b, ref, free)
                loss = losses.kl.mean() if args.objective == "kl" else loss_of(losses)
                opt.zero_grad()
                loss.backward()
                opt.step()
                curve.append(float(losses.nll_gist.detach().mean()))
            with torch.no_grad():
                end = student(model, b, ref, free)
            curves.setdefault(level, []).append(np.asarray(curve))
            out["raw"] += ref.nll_raw.tolist()
            out["drop"] += ref.nll_drop.tolist()
            out["gistnet"] += start.nll_gist.tolist()
            out["free"] += end.nll_gist.tolist()
            norms = free.detach().norm(dim=-1) / model.token_norm
            out.setdefault("norm", []).extend(norms.tolist())
            print(f"dataset {d} level {level}: {len(picked)} examples, NLL raw "
                  f"{ref.nll_raw.mean():.3f} drop {ref.nll_drop.mean():.3f} GistNet "
                  f"{start.nll_gist.mean():.3f} free vector {end.nll_gist.mean():.3f} "
                  f"(norm {norms.mean():.2f}× a token's) "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    write(rows, curves, args, manifest, machine(), time.perf_counter() - started)


def write(rows: dict, curves: dict, args: argparse.Namespace, manifest: dict,
          machine_text: str, seconds: float) -> None:
    lines = [
        "# Gist ceiling: how much can one input-embedding vector carry?", "",
        f"Machine: {machine_text}. Produced by `python benchmarks/gist_ceiling.py --n1 "
        f"{args.n1} --n2 {args.n2} --steps {args.steps} --objective {args.objective}` in "
        f"{seconds / 60:.0f} min.",
        "Held-out examples (held-out stdlib packages; third-party click and rich),"
        f" cut as the index cuts them; {PREFIX}-token prefix, NLL over the next {HORIZON}.",
        "*Free vector*: one vector per example optimised directly on that example's "
        f"{'KL(P_raw ‖ P_vector)' if args.objective == 'kl' else 'KL + NLL'} over the "
        f"continuation (Adam, {args.steps} steps, lr {args.lr} cosine, from GistNet's gist). "
        "Fitted on the text it is scored on, it bounds what any compressor emitting one "
        f"vector can reach; GistNet is the shipped one ({manifest.get('steps')} steps).", "",
        "| level | n (span helps) | NLL raw | NLL drop | NLL GistNet | NLL free vector "
        "| recovery GistNet: median / of means | **recovery free vector: median** / of means |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from benchmarks.gist_quality import recovery

    for level, r in sorted(rows.items()):
        gn, fv = recovery(r, "gistnet"), recovery(r, "free")
        lines.append(
            f"| {level} | {len(r['raw'])} ({fv[2]}) | {np.mean(r['raw']):.3f} "
            f"| {np.mean(r['drop']):.3f} | {np.mean(r['gistnet']):.3f} | {np.mean(r['free']):.3f}"
            f" | {gn[0]:.2f} / {gn[1]:.2f} | **{fv[0]:.2f}** / {fv[1]:.2f} |")
    lines += ["", "Norm of the fitted free vectors, in token-embedding norms (GistNet's output "
              f"is {manifest.get('gain', 'a learned gain')}× by construction): "
              + ", ".join(f"level {lv} median {np.median(r['norm']):.2f} "
                          f"(range {min(r['norm']):.2f}–{max(r['norm']):.2f})"
                          for lv, r in sorted(rows.items()))]
    lines += ["", "Mean NLL of the free vector during optimisation (per level, every 10 steps): "]
    for level, cs in sorted(curves.items()):
        mean = np.mean(np.stack(cs), axis=0)
        lines.append(f"- level {level}: " + ", ".join(f"{v:.3f}" for v in mean[::10])
                     + f", last {mean[-1]:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gist_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
