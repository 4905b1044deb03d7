"""Train GistNet on a machine without the standard library's parsers (e.g. a rented GPU).

`pack` (here) writes the training and held-out corpora `mcagent train gistnet` builds from
`Lib/` into one compressed file; `train` (there) continues a GistNet from given weights (or
its own checkpoint in --out) on that file, for a fixed number of seconds per call, and
exports weights + manifest the way `mcagent train gistnet` does. The objective, the batches
(a function of seed and step), the held-out check and the export are `train_gistnet`'s own.

    python scripts/train_gistnet_gpu.py pack --lib LIB --cache RUN --to corpus.npz
    python scripts/train_gistnet_gpu.py train --corpus corpus.npz --init W.safetensors \
        --out /tmp/run --seconds 480 --lr 3e-4

GistNet f0e0dacd continued 80da8824 this way on one H100: `--batch 64 --accumulate 4
--level2-batch 16 --lr 3e-4 --warmup 50 --eval-every 100 --steps 1800`, about 0.8 s per
step (256 level-1 spans, or 64 level-2 groups every 4th step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from megacontext.adapter import ModelConfig, load_base_model
from megacontext.gistnet import load_gistnet
from megacontext.train.data import Corpus, cached_corpus, stdlib_files
from megacontext.train.gistnet import (
    TrainConfig,
    new_state,
    save_checkpoint,
    train_gistnet,
)

FIELDS = ("stream", "blocks", "groups", "group_children", "group_blocks")


def pack(lib: Path, cache: Path, to: Path) -> None:
    model = load_base_model(ModelConfig())
    corpora = [cached_corpus(lib, stdlib_files(lib, split), model, cache)
               for split in ("train", "holdout")]
    write_packed(model.id, corpora[0], corpora[1], to)


def write_packed(model_id: str, corpus: Corpus, held: Corpus, to: Path) -> None:
    arrays: dict[str, np.ndarray] = {"model_id": np.asarray(model_id)}
    for split, c in (("train", corpus), ("holdout", held)):
        for f in FIELDS:
            arrays[f"{split}_{f}"] = getattr(c, f)
        arrays[f"{split}_files"] = np.asarray(c.files)
        if c.stream.max(initial=0) < 2**16:  # token ids of vocabularies up to 65,536
            arrays[f"{split}_stream"] = c.stream.astype(np.uint16)
    np.savez_compressed(to, **arrays)


def unpack(path: Path) -> tuple[str, Corpus, Corpus]:
    with np.load(path) as z:
        out = []
        for split in ("train", "holdout"):
            a = {f: z[f"{split}_{f}"] for f in FIELDS}
            a["stream"] = a["stream"].astype(np.int32)
            out.append(Corpus(**a, files=int(z[f"{split}_files"])))
        return str(z["model_id"]), out[0], out[1]


def train(args: argparse.Namespace) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    model = load_base_model(ModelConfig())
    model_id, corpus, held = unpack(args.corpus)
    if model_id != model.id:
        sys.exit(f"corpus was tokenised for {model_id}, this base model is {model.id}")
    config = TrainConfig(lib=Path("(packed corpus)"), out=args.out, steps=args.steps,
                         batch=args.batch, accumulate=args.accumulate,
                         level2_batch=args.level2_batch, level2_every=args.level2_every,
                         lr=args.lr, warmup=args.warmup, eval_every=args.eval_every,
                         checkpoint_every=args.checkpoint_every, seed=args.seed)
    checkpoint = args.out / "checkpoint.pt"
    if not checkpoint.is_file():
        if args.init is None:
            sys.exit("no checkpoint in --out and no --init weights")
        state = new_state(config, model)
        net, _ = load_gistnet(args.init, model.device)
        state.net.load_state_dict(net.state_dict())
        args.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, config, checkpoint)
    started = time.monotonic()

    def progress(step: int, total: int, m: dict[str, float]) -> None:
        if "l1_recovery" in m:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in m.items()}), flush=True)
        elif step % 10 == 0:
            rate = (time.monotonic() - started) / max(1, step - first)
            print(f"step {step}/{total} L{m['level']} loss {m['loss']:.4f} kl {m['kl']:.4f} "
                  f"lr {m['lr']:.2e} gn {m['grad_norm']:.2f} {rate:.2f}s/step", flush=True)

    first = torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
    print(f"model {model.id} on {model.device} {model.dtype}; resuming at step {first}; "
          f"{len(corpus.blocks)} blocks, {len(corpus.groups)} groups", flush=True)
    state = train_gistnet(config, model, progress, stop_after=args.seconds,
                          corpora=(corpus, held))
    print(f"stopped at step {state.step} after {time.monotonic() - started:.0f}s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--lib", type=Path, required=True)
    a.add_argument("--cache", type=Path, required=True)
    a.add_argument("--to", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--corpus", type=Path, required=True)
    t.add_argument("--init", type=Path)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seconds", type=float, default=480)
    defaults = TrainConfig(lib=Path(), out=Path())
    for name in ("steps", "batch", "accumulate", "level2_batch", "level2_every", "warmup",
                 "eval_every", "checkpoint_every", "seed"):
        t.add_argument("--" + name.replace("_", "-"), type=int,
                       default=getattr(defaults, name))
    t.add_argument("--lr", type=float, default=defaults.lr)
    args = p.parse_args()
    if args.cmd == "pack":
        pack(args.lib, args.cache, args.to)
    else:
        train(args)


if __name__ == "__main__":
    main()
