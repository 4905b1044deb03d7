"""Benchmark: the stages of `mcagent ask` on the CPython `Lib/` index, against plain generate.

    python benchmarks/ask_latency.py [--lib PATH] [--new-tokens 32]

For budgets 1024/2048/4096: score, allocate, assemble, prefill and decode (tokens/s), and
the whole ask (focus → answer) against a plain forward + greedy decode over the same number
of positions in the same run (the baseline: what the model costs with no MegaContext).
Separately, focus + assemble at a budget large enough for ~8,192 entries (no prefill).
Writes benchmarks/results/ask_latency.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "ask_latency.md"
QUESTIONS = [
    "How does json decode a string with escape sequences?",
    "Where does the logging module format a record's message?",
    "How does pathlib join two paths?",
]


def main() -> None:
    import platformdirs
    import torch

    from benchmarks.index_speed import copy_stdlib, machine
    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.ask import SLOT, AskConfig, AskSession
    from megacontext.gistnet import default_gist_model
    from megacontext.indexer import index_repository
    from megacontext.store import Store, db_path
    from megacontext.working_context import WorkingContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", type=Path)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    lib = args.lib or copy_stdlib()
    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent"))))
    index_repository(lib, model, default_gist_model(model))
    system = "You answer questions about a code repository."
    rows, focus_rows = [], []
    with Store.open(db_path(lib), read_only=True) as store:
        for budget in (1024, 2048, 4096):
            config = AskConfig(budget=budget, max_new_tokens=args.new_tokens)
            session = AskSession(store, model, "Lib", config)
            q = QUESTIONS[0]
            result = session.ask(q, system)
            t = result.timings
            W = result.tokens["context"]
            n_new = int(t["answer_tokens"])
            ask_total = sum(t[k] for k in ("score", "allocate", "assemble", "prefill",
                                           "decode"))
            plain = _plain(model, store, W, n_new)
            rows.append((budget, result.tokens, t, ask_total, plain, n_new))
            print(budget, W, {k: round(v, 3) for k, v in t.items()}, round(plain, 2),
                  flush=True)
        for budget in (8192 + 256, 12288, 16384):
            big = AskConfig(budget=budget)
            session = AskSession(store, model, "Lib", big)
            for q in QUESTIONS:
                before, after = model.chat_ids(system, session._user_text(q), SLOT)
                timings: dict[str, float] = {}
                entries = session.focus(q, big.budget - len(before) - len(after), timings)
                t0 = time.perf_counter()
                wc = WorkingContext(model, before, after)
                wc.entries = session.entries(entries)
                timings["assemble"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                wc.embeddings()  # the vectors, as prefill makes them (not part of assemble)
                timings["vectors"] = time.perf_counter() - t0
                focus_rows.append((budget, len(entries), timings))
        gists = session.gists
        memory = (f"{gists.size:,} gists ({gists.matrix.nbytes / 2**20:.0f} MiB), "
                  f"block gists {'read at load' if gists.preloaded else 'read on first use'}")
    del torch
    write(lib, rows, focus_rows, session.load_seconds, memory, machine())


def _plain(model, store, W: int, n_new: int) -> float:
    """Forward W positions of real text, then decode n_new tokens greedily."""
    import torch

    tokens = next(iter(store.all_tokens().values()))
    ids = torch.from_numpy(tokens[:W].astype("int64"))
    while len(ids) < W:
        ids = torch.cat([ids, ids])[:W]
    t = time.perf_counter()
    logits, cache = model.forward(model.embed(ids)[None], 0, None)
    produced = 0
    position = W
    while produced < n_new:  # the same greedy loop, without stop tokens
        token = int(logits[0, -1].argmax())
        logits, cache = model.forward(model.embed(torch.tensor([token]))[None], position, cache)
        position += 1
        produced += 1
    return time.perf_counter() - t


def write(lib: Path, rows: list, focus_rows: list, load: float, memory: str,
          machine_text: str) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# Ask latency: CPython `Lib/`",
        "",
        f"Machine: {machine_text}. Commit {commit}, {time.strftime('%Y-%m-%d')}. Index: "
        f"{lib} (≈12.4M tokens). Produced by `python benchmarks/ask_latency.py`.",
        f"Loading the index for asking (tree, tokens, BM25 postings, every gist, model): "
        f"{load:.1f} s, once per session; in memory: {memory}.",
        "",
        "| budget | positions W | entries (raw tokens / gists) | score | allocate | assemble "
        "| prefill | decode | ask total | plain forward+decode, same W | overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, tk, t, total, plain, n_new in rows:
        lines.append(
            f"| {budget} | {tk['context']} | {tk['entries']} ({tk['raw_tokens']} / "
            f"{tk['gists']}) | {t['score'] * 1e3:.0f} ms | {t['allocate'] * 1e3:.0f} ms | "
            f"{t['assemble'] * 1e3:.0f} ms | {t['prefill']:.2f} s | "
            f"{t['decode_tokens_per_s']:.1f} tok/s ({n_new} tokens) | {total:.2f} s | "
            f"{plain:.2f} s | **{total / plain:.2f}×** |")
    lines += [
        "",
        "Overhead = (score + allocate + assemble + prefill + decode) / (plain forward over W "
        "positions + the same number of decoded tokens). Target ≤ 1.2×.",
        "",
        "## Focus + assemble at ~8,192 entries (no prefill)",
        "",
        "Budgets large enough for thousands of entries. *Assemble* describes every position "
        "(token id or gist row, entry keys for KV-cache reuse); the vectors themselves are "
        "gathered by prefill, only for the positions it recomputes, and are shown apart "
        "(*vectors*, not part of the target).",
        "",
        "| budget | entries | score | allocate | assemble | **score + allocate + assemble** "
        "| vectors (in prefill) |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget, n, t in focus_rows:
        s = t["score"] + t["allocate"] + t["assemble"]
        lines.append(f"| {budget:,} | {n:,} | {t['score'] * 1e3:.0f} ms | "
                     f"{t['allocate'] * 1e3:.0f} ms | {t['assemble'] * 1e3:.0f} ms "
                     f"| **{s * 1e3:.0f} ms** | {t['vectors'] * 1e3:.0f} ms |")
    near = [t for _, n, t in focus_rows if n >= 8192] or [focus_rows[-1][2]]
    med = statistics.median(t["score"] + t["allocate"] + t["assemble"] for t in near)
    worst = max(t["score"] + t["allocate"] + t["assemble"] for t in near)
    lines += ["", f"Score + allocate + assemble with ≥ 8,192 entries: median {med * 1e3:.0f} ms, "
              f"worst {worst * 1e3:.0f} ms (target ≤ 50 ms for 8,192 entries). Allocation is "
              "one best-first descent from the cold start (the root alone).", ""]
    RESULTS.write_text("\n".join(lines))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
