"""Benchmark: cold and single-file incremental indexing of a copy of CPython's `Lib/`.

    python benchmarks/index_speed.py [--lib PATH] [--updates 20]

Without --lib it copies the running interpreter's standard library (no site-packages, no
__pycache__) into a temporary git repository. Each phase runs in its own process so its
peak RSS is its own:

- cold: load the model (cached), index from scratch; end to end = process start to exit.
  Baseline in the same run: tokenizing the same files' text alone (the floor of the work).
- verify: every file's chunks concatenate to its text, every stored token sequence decodes
  to header + text, and the summary's counts match an independent `git ls-files` count.
- updates: edit one line inside a function of N files of ≤2,000 tokens, one at a time,
  index after each edit (and after each revert); p50/p95 latency with the model loaded.
  Baseline in the same run: an index run with no change (the fixed floor of an update).

Writes benchmarks/results/index_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # "end to end" counts from here (after interpreter start)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "index_speed.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", type=Path, help="a git repository to index (default: stdlib copy)")
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--phase", choices=["cold", "verify", "updates"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        result = PHASES[args.phase](args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    lib = args.lib or copy_stdlib()
    shutil.rmtree(lib / ".mcagent", ignore_errors=True)
    results = {}
    for phase in ("cold", "verify", "updates"):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--phase", phase, "--lib", str(lib),
             "--updates", str(args.updates)],
            capture_output=True, text=True, check=True,
        ).stdout
        results[phase] = json.loads(out.split("RESULT ", 1)[1])
        results[phase]["process_seconds"] = time.perf_counter() - started
        print(phase, json.dumps(results[phase])[:300], flush=True)
    write_report(lib, results)


def copy_stdlib() -> Path:
    src = Path(sysconfig.get_paths()["stdlib"])
    dst = Path(tempfile.gettempdir()) / "mcagent-bench-lib"
    if not (dst / ".git").is_dir():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True,
                        ignore=shutil.ignore_patterns("site-packages", "__pycache__"))
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "Lib"]):
            subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=bench", *cmd],
                           cwd=dst, check=True, capture_output=True)
    return dst


def _model():
    import platformdirs

    from megacontext.adapter import ModelConfig, load_base_model
    from megacontext.gistnet import default_gist_model

    model = load_base_model(ModelConfig(cache_dir=Path(platformdirs.user_cache_dir("mcagent"))))
    return model, default_gist_model(model)


def phase_cold(args: argparse.Namespace) -> dict:
    from megacontext.indexer import index_repository

    t0 = time.perf_counter()
    model, gist = _model()
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = index_repository(args.lib, model, gist)
    seconds = time.perf_counter() - t1
    end_to_end = time.perf_counter() - STARTED
    again = index_repository(args.lib, model, gist)
    texts = _texts(args.lib)
    t2 = time.perf_counter()
    n_tok = sum(len(e.ids) for e in model.encode(texts))
    tokenize = time.perf_counter() - t2
    return {
        "files": report.files, "skipped": report.skipped, "tokens": report.tokens,
        "nodes_by_level": report.nodes_by_level, "gists": report.gists_computed,
        "index_seconds": seconds, "model_load_seconds": load, "end_to_end_seconds": end_to_end,
        "second_run_processed": len(again.processed_paths), "second_run_seconds": again.seconds,
        "baseline_tokenize_seconds": tokenize, "baseline_tokens": n_tok,
    }


def _texts(lib: Path) -> list[str]:
    from ingest.walk import decode, list_files, read_file

    out = []
    for entry in list_files(lib).files:
        text, _ = decode(read_file(lib, entry))
        if text is not None:
            out.append(text)
    return out


def phase_verify(args: argparse.Namespace) -> dict:
    from tokenizers import Tokenizer

    from ingest.chunk import chunk_file
    from ingest.walk import FileEntry, decode, read_file
    from megacontext.store import Store, db_path
    from megacontext.tree import header_text

    model, _ = _model()
    tokenizer: Tokenizer = model.tokenizer
    bad_chunks, bad_tokens, checked = [], [], 0
    with Store.open(db_path(args.lib), read_only=True) as store:
        records = store.files()
        summary = store.summary()
        tokens = store.all_tokens()
        for path, rec in records.items():
            if rec.status != "indexed":
                continue
            text, _ = decode(read_file(args.lib, FileEntry(path, 0, 0)))
            if "".join(c.text for c in chunk_file(path, text)) != text:
                bad_chunks.append(path)
            ids = tokens[rec.file_id].tolist()
            if tokenizer.decode(ids, skip_special_tokens=False) != header_text(path) + text:
                bad_tokens.append(path)
            checked += 1
    git_files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                               cwd=args.lib, capture_output=True, text=True, check=True
                               ).stdout.split("\n")
    git_count = sum(1 for p in git_files if p)
    counted = summary["files"] + sum(summary["skipped"].values())
    return {"checked": checked, "chunk_mismatches": bad_chunks[:20],
            "token_mismatches": bad_tokens[:20], "n_token_mismatches": len(bad_tokens),
            "git_files": git_count, "indexed_plus_skipped": counted,
            "summary_files": summary["files"], "summary_skipped": summary["skipped"]}


def phase_updates(args: argparse.Namespace) -> dict:
    import gc

    from megacontext.indexer import index_repository
    from megacontext.store import Store, db_path

    model, gist = _model()
    gc.freeze()  # the model's objects never need collecting: keep GC passes short
    with Store.open(db_path(args.lib), read_only=True) as store:
        candidates = sorted(p for p, r in store.files().items()
                            if r.status == "indexed" and p.endswith(".py")
                            and 300 <= r.n_tokens <= 2000)
    edits = []
    for path in candidates:
        text = (args.lib / path).read_text()
        m = re.search(r"^( +)return\b.*$", text, re.M)
        if m:
            edits.append((path, text, m))
        if len(edits) == args.updates:
            break
    noop = [_timed(index_repository, args.lib, model, gist)[0] for _ in range(5)]
    out = {"files": [e[0] for e in edits], "noop_median_ms": 1000 * statistics.median(noop)}
    for mode in ("walk", "named"):
        latencies, tokens, wrong = [], [], []
        for path, text, m in edits:
            edited = text[: m.end()] + "  # edited by the benchmark" + text[m.end() :]
            for new_text in (edited, text):
                (args.lib / path).write_text(new_text)
                named = [path] if mode == "named" else None
                seconds, report = _timed(index_repository, args.lib, model, gist, named)
                latencies.append(seconds)
                tokens.append(report.tokens_processed)
                if report.processed_paths != [path]:
                    wrong.append((path, report.processed_paths))
        out[mode] = {"updates": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
                     "p95_ms": 1000 * _percentile(latencies, 95),
                     "max_ms": 1000 * max(latencies), "tokens_median": statistics.median(tokens),
                     "tokens_max": max(tokens), "wrong_files": wrong}
    return out


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args[:3], paths=args[3]) if len(args) > 3 else fn(*args)
    return time.perf_counter() - t, out


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


PHASES = {"cold": phase_cold, "verify": phase_verify, "updates": phase_updates}


def machine() -> str:
    cpu = "?"
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
            f"{mem:.0f} GiB RAM, Python {platform.python_version()}")


def write_report(lib: Path, r: dict) -> None:
    cold, ver, upd = r["cold"], r["verify"], r["updates"]
    e2e = cold["end_to_end_seconds"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    tok_rate = cold["baseline_tokens"] / cold["baseline_tokenize_seconds"]
    lines = [
        "# Index speed: CPython `Lib/`",
        "",
        f"Machine: {machine()}. Commit {commit}, {time.strftime('%Y-%m-%d')}. "
        f"Repository: a git copy of this interpreter's standard library ({lib}).",
        "Produced by `python benchmarks/index_speed.py`; one process per phase.",
        "",
        "## Cold index",
        "",
        "| measure | value |",
        "|---|---|",
        f"| files indexed | {cold['files']:,} |",
        f"| files skipped | {', '.join(f'{n} {k}' for k, n in cold['skipped'].items())} |",
        f"| tokens | {cold['tokens']:,} |",
        "| nodes by level | "
        + ", ".join(f"L{k} {v:,}" for k, v in cold["nodes_by_level"].items()) + " |",
        f"| gists computed (mean-pool baseline) | {cold['gists']:,} |",
        f"| index seconds (model loaded) | {cold['index_seconds']:.1f} s |",
        f"| **end to end** (script start → index written, incl. imports and model load "
        f"{cold['model_load_seconds']:.1f} s) | **{e2e:.1f} s → "
        f"{cold['tokens'] / e2e:,.0f} tokens/s** (target ≥ 50,000) |",
        f"| index only | {cold['tokens'] / cold['index_seconds']:,.0f} tokens/s |",
        f"| baseline: tokenizer alone over the same texts | "
        f"{cold['baseline_tokenize_seconds']:.1f} s ({tok_rate:,.0f} tokens/s); "
        f"index / tokenize = {cold['index_seconds'] / cold['baseline_tokenize_seconds']:.1f}× |",
        f"| peak RSS | {cold['peak_rss_mb']:,.0f} MB |",
        f"| second run, no change | {cold['second_run_processed']} files reprocessed, "
        f"{cold['second_run_seconds'] * 1000:.0f} ms |",
        "",
        "## Checks on every file",
        "",
        f"- Chunk coverage (chunks concatenate to the file): {ver['checked']:,} files, "
        f"{len(ver['chunk_mismatches'])} mismatches.",
        f"- Stored tokens decode to header + text: {ver['checked']:,} files, "
        f"{ver['n_token_mismatches']} mismatches {ver['token_mismatches'][:5]}.",
        f"- Counts: `git ls-files` lists {ver['git_files']:,} paths; the summary counts "
        f"{ver['summary_files']:,} indexed + {sum(ver['summary_skipped'].values()):,} skipped "
        f"= {ver['indexed_plus_skipped']:,}.",
        "",
        "## Single-file updates (model loaded)",
        "",
        f"{len(upd['files'])} files of 300–2,000 tokens; in each, one line inside a function "
        "is edited, indexed, reverted, indexed again. *walk*: `index` finds the change "
        "itself (what `mcagent index` does); *named*: the caller names the changed path "
        "(what a file watcher does), so the repository is not walked.",
        "",
        "| measure | walk | named |",
        "|---|---|---|",
    ]
    w, n = upd["walk"], upd["named"]
    lines += [
        f"| updates | {w['updates']} | {n['updates']} |",
        f"| tokens reprocessed per update (median / max) | {w['tokens_median']:,.0f} / "
        f"{w['tokens_max']:,} | {n['tokens_median']:,.0f} / {n['tokens_max']:,} |",
        f"| **p50 latency** | **{w['p50_ms']:.0f} ms** | **{n['p50_ms']:.0f} ms** |",
        f"| **p95 latency** (target ≤ 300 ms) | **{w['p95_ms']:.0f} ms** | "
        f"**{n['p95_ms']:.0f} ms** |",
        f"| max latency | {w['max_ms']:.0f} ms | {n['max_ms']:.0f} ms |",
        f"| updates that reprocessed another file | {len(w['wrong_files'])} | "
        f"{len(n['wrong_files'])} |",
        "",
        f"Baseline in the same run: an index run with no change (walk, stat, open, close) "
        f"takes {upd['noop_median_ms']:.0f} ms (median); p50 update / no-op = "
        f"{w['p50_ms'] / upd['noop_median_ms']:.1f}× (walk). Peak RSS of the update process: "
        f"{upd['peak_rss_mb']:,.0f} MB.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
