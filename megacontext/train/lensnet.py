"""`mcagent train lensnet`: teach LensNet which entries a task needs, from counterfactual labels.

1. **Repositories** (the data rule: standard library only, held-out packages excluded):
   stdlib packages, and the top-level modules in alphabetical groups, each copied with the
   docstrings of its needle functions removed and indexed like any repository.
2. **Tasks** (`megacontext.train.tasks`): needles (a docstring summary → the function) and
   calls (the lines before a call → the call line, the callee defined in another file).
3. **Labels**: the frozen base model scores the task's target after one block — held raw,
   or as its gist — followed by the question. A block's label is NLL(gist) − NLL(raw) in
   nats per target token: how much expanding it helps. Blocks scored: the gold function's,
   the best BM25 matches, and random ones (same file and elsewhere). What counts is the help
   above the task's median candidate (any raw code helps a little); negative help and every
   block not scored count 0. A node's label is the best of its blocks' (expanding a node
   is worth what it leads to). Labels are appended to one JSONL file per repository as
   they are made, so an interrupted run resumes where it stopped.
4. **States**: the working contexts LensNet must rate, from the BM25 descent at several
   budgets and from coarse covers of the whole repository.
5. **Loss**: Huber regression of the utility on (label − margin) plus a pairwise ranking
   loss (a better entry must score higher) within each state.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megacontext.adapter import BaseModel
from megacontext.allocator import AllocatorConfig, cold_start, descend
from megacontext.ask import AskConfig, AskSession
from megacontext.focus import node_scores
from megacontext.gist import GistModel
from megacontext.indexer import IndexConfig, index_repository
from megacontext.lensnet import (
    DEFINITION_FEATURES,
    N_FEATURES,
    LensNet,
    LensNetConfig,
    LensNetFocus,
    save_lensnet,
)
from megacontext.store import Store, db_path
from megacontext.train.data import stdlib_files
from megacontext.train.gistnet import _commit
from megacontext.train.tasks import Task, mine_calls, mine_needles

Progress = Callable[[str, int, int, dict[str, float]], None]  # (stage, done, total, metrics)
# Held-out stdlib packages that validate LensNet during training (tasks only, no labels).
VALIDATION = (("email",), ("http", "json", "wsgiref", "concurrent"))


@dataclass(frozen=True)
class LensTrainConfig:
    lib: Path  # the interpreter's Lib/ folder
    out: Path  # repositories, labels, checkpoints
    repos: int = 14  # training repositories
    needles: int = 24  # per repository
    calls: int = 12
    gold_blocks: int = 8  # blocks of the gold function scored per task
    bm25_blocks: int = 8
    random_blocks: int = 6
    prompt_tokens: int = 96
    target_tokens: int = 40
    budgets: tuple[int, ...] = (256, 1024, 2048)  # BM25-descent states per task
    coarse: tuple[int, ...] = (16, 128)  # coarse covers per task
    steps: int = 3000
    batch: int = 8
    eval_every: int = 250  # validate this often; the best validated weights are kept
    lr: float = 1e-3
    margin: float = 0.1  # nats/token a block must help by to be worth expanding
    rank_weight: float = 1.0
    definition_dropout: float = 0.25  # share of states trained without the definition
    # features (words, dense), as on a repository too large for them
    seed: int = 0
    net: dict = field(default_factory=dict)  # LensNetConfig overrides


# ---------------------------------------------------------------- repositories and tasks


def training_repos(lib: Path, count: int) -> list[tuple[str, list[str]]]:
    """Stdlib packages with at least 4 files (largest first), then top-level modules in
    groups of 16, until `count`: (name, relative paths)."""
    files = stdlib_files(lib, "train")
    packages: dict[str, list[str]] = {}
    modules = []
    for f in files:
        parts = f.split("/")
        if len(parts) == 1:
            modules.append(f)
        else:
            packages.setdefault(parts[0], []).append(f)
    repos = sorted(((n, fs) for n, fs in packages.items() if 4 <= len(fs) <= 120),
                   key=lambda r: (-len(r[1]), r[0]))
    groups = [(f"modules-{i // 16}", modules[i : i + 16]) for i in range(0, len(modules), 16)]
    mixed = [r for pair in zip(repos, groups, strict=False) for r in pair]
    return mixed[:count]


def validation_repos(lib: Path) -> list[tuple[str, list[str]]]:
    """Held-out stdlib packages (never trained on) as repositories, for early stopping."""
    files = stdlib_files(lib, "holdout")
    return [(f"holdout-{'-'.join(group)}", [f for f in files if f.split("/")[0] in group])
            for group in VALIDATION]


def prepare_repo(config: LensTrainConfig, name: str, files: list[str], model: BaseModel,
                 gist_model: GistModel, seed: int) -> tuple[Path, list[Task]]:
    """Copy a repository with its needles' docstrings removed, index it, mine its tasks
    (all cached under out/repos/NAME)."""
    root = config.out / "repos" / name
    saved = config.out / "repos" / f"{name}.tasks.json"
    if saved.is_file() and db_path(root).is_file():
        return root, [_task(t) for t in json.loads(saved.read_text())]
    shutil.rmtree(root, ignore_errors=True)
    texts = {f: (config.lib / f).read_text(encoding="utf-8", errors="replace") for f in files}
    needles, edited = mine_needles(texts, config.needles, seed)
    texts.update(edited)
    calls = mine_calls(texts, config.calls, seed)
    for f, text in texts.items():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(text, encoding="utf-8")
    index_repository(root, model, gist_model, IndexConfig())
    tasks = needles + calls
    saved.write_text(json.dumps([asdict(t) for t in tasks]))
    return root, tasks


def _task(d: dict) -> Task:
    return Task(**{**d, "lines": tuple(d["lines"])})


def gold_blocks(session: AskSession, task: Task) -> np.ndarray:
    """The blocks of the task's gold function, in order."""
    repo = session.repo
    fid = next((f for f, p in repo.paths.items() if p == task.path), None)
    if fid is None:
        return np.zeros(0, np.int64)
    blocks = repo.blocks()
    lo, hi = task.lines
    at = blocks[(repo.file_id[blocks] == fid) & (repo.line_start[blocks] <= hi)
                & (repo.line_end[blocks] >= lo)]
    return at


# ---------------------------------------------------------------- labels


def label_task(session: AskSession, task: Task, config: LensTrainConfig,
               rng: np.random.Generator) -> dict:
    """Counterfactual labels of a task's candidate blocks: NLL of the target after the block
    as its gist, and after it raw."""
    model, repo = session.model, session.repo
    blocks = repo.blocks()
    gold = gold_blocks(session, task)[: config.gold_blocks]
    scores = session.scorer.block_scores(task.question)
    best = blocks[np.argsort(-scores, kind="stable")[: config.bm25_blocks]]
    same = blocks[repo.file_id[blocks] == (repo.file_id[gold[0]] if len(gold) else -1)]
    pool = [same, blocks]
    randoms = [rng.choice(p, size=min(config.random_blocks // 2, len(p)), replace=False)
               for p in pool if len(p)]
    candidates = np.unique(np.concatenate([gold, best, *randoms]).astype(np.int64))
    prompt = model.encode([task.prompt()])[0].ids[-config.prompt_tokens :].astype(np.int64)
    target = model.encode([task.target])[0].ids[: config.target_tokens].astype(np.int64)
    if len(target) == 0 or len(candidates) == 0:
        return {"nodes": [], "raw": [], "gist": []}
    emb = model.embeddings
    rows = session.gists.rows(candidates)
    gists = session.gists.table()[torch.from_numpy(rows)].float()
    tail = emb[torch.from_numpy(np.concatenate([prompt, target[:-1]]))]
    seqs = []
    for k, n in enumerate(candidates.tolist()):
        f, s, e = int(repo.file_id[n]), int(repo.tok_start[n]), int(repo.tok_end[n])
        raw = emb[torch.from_numpy(session.file_tokens[f][s:e].astype(np.int64))]
        seqs.append(torch.cat([raw, tail]))
        seqs.append(torch.cat([gists[k : k + 1], tail]))
    T = max(len(x) for x in seqs)
    H = len(target)
    x = torch.zeros(len(seqs), T, model.dim)
    at = torch.zeros(len(seqs), H, dtype=torch.long)
    for i, seq in enumerate(seqs):
        # [block][prompt][target[:-1]]: target[j] is predicted at len(seq) − H + j.
        x[i, : len(seq)] = seq
        at[i] = len(seq) - H + torch.arange(H)
    targets = torch.from_numpy(target)[None].expand(len(seqs), H)
    nll = model.target_nll(x, at, targets, torch.ones(len(seqs), H, dtype=torch.bool))
    return {"nodes": repo.node_id[candidates].tolist(), "raw": nll[0::2].tolist(),
            "gist": nll[1::2].tolist()}


def make_labels(session: AskSession, tasks: list[Task], path: Path, config: LensTrainConfig,
                progress: Callable[[int, int], None]) -> list[dict]:
    """Labels of every task, appended to `path` (JSONL) as made; resumes from what is there."""
    done = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                done.append(json.loads(line))
            except ValueError:
                break  # a line cut short by an interruption: redo from here
    with path.open("w") as f:  # rewrite what was whole, then append
        for d in done:
            f.write(json.dumps(d) + "\n")
        for i in range(len(done), len(tasks)):
            rng = np.random.default_rng([config.seed, i])
            d = label_task(session, tasks[i], config, rng)
            f.write(json.dumps(d) + "\n")
            f.flush()
            done.append(d)
            progress(i + 1, len(tasks))
    return done


# ---------------------------------------------------------------- states


@dataclass
class State:
    repo: int  # which repository
    task: int
    nodes: np.ndarray
    features: np.ndarray
    level: np.ndarray
    kind: np.ndarray
    rows: np.ndarray  # gist rows
    labels: np.ndarray  # (E,) nats per target token


@dataclass
class RepoData:
    session: AskSession
    tasks: list[Task]
    labels: list[dict]
    focus: LensNetFocus  # its features, units and lexical scores (its net is swapped in)
    table: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.table = self.session.gists.table()


def node_labels(repo_data: RepoData, k: int) -> np.ndarray:
    """(N,) label of every node for task k: a block's is its definition's best (a function is
    read whole), a node's the best of the blocks under it."""
    session = repo_data.session
    repo = session.repo
    d = repo_data.labels[k]
    values = np.zeros(repo.size)
    if d["nodes"]:
        at = np.searchsorted(repo.node_id, np.array(d["nodes"]))
        delta = np.array(d["gist"]) - np.array(d["raw"])
        # Any raw code helps the model a little (syntax, style): what a block adds beyond
        # that is its help above the task's median candidate.
        values[at] = delta - np.median(delta)
    blocks = repo.blocks()
    pooled = repo_data.focus.units.pool(np.maximum(values[blocks], 0.0))
    return node_scores(repo, blocks, repo_data.focus.levels, pooled)


def make_states(data: RepoData, r: int, config: LensTrainConfig) -> list[State]:
    session = data.session
    tree = session.repo.tree
    states = []
    for k, task in enumerate(data.tasks):
        labels = node_labels(data, k)
        lexical = data.focus.lexical(task.question)
        utilities = session.focuser.utilities(task.question)  # BM25's, as `--focus bm25`
        covers = []
        for b in config.budgets:
            cfg = AllocatorConfig(max_edits=b)
            covers.append(descend(tree, cold_start(tree), utilities, b, cfg).entries)
        flat = np.ones(session.repo.size)
        for b in config.coarse:
            covers.append(descend(tree, cold_start(tree), flat, b,
                                  AllocatorConfig(max_edits=b)).entries)
        for entries in covers:
            nodes, features, level, kind = data.focus.features.arrays(entries, lexical)
            states.append(State(r, k, nodes, features, level, kind, session.gists.rows(nodes),
                                labels[nodes].astype(np.float32)))
    return states


# ---------------------------------------------------------------- training


def batch_inputs(states: list[State], data: list[RepoData], model: BaseModel,
                 max_tail: int) -> tuple[torch.Tensor, ...]:
    E = max(len(s.nodes) for s in states)
    tails = [model.encode([data[s.repo].tasks[s.task].question])[0].ids[-max_tail:]
             for s in states]
    T = max(max(len(t) for t in tails), 1)
    B, D = len(states), model.dim
    gists = torch.zeros(B, E, D)
    features = torch.zeros(B, E, states[0].features.shape[1])
    level = torch.zeros(B, E, dtype=torch.long)
    kind = torch.zeros(B, E, dtype=torch.long)
    mask = torch.zeros(B, E, dtype=torch.bool)
    labels = torch.zeros(B, E)
    tail = torch.zeros(B, T, D)
    tail_mask = torch.zeros(B, T, dtype=torch.bool)
    for i, s in enumerate(states):
        n = len(s.nodes)
        gists[i, :n] = data[s.repo].table[torch.from_numpy(s.rows)].float()
        features[i, :n] = torch.from_numpy(s.features)
        level[i, :n] = torch.from_numpy(s.level)
        kind[i, :n] = torch.from_numpy(s.kind)
        mask[i, :n] = True
        labels[i, :n] = torch.from_numpy(s.labels)
        t = torch.from_numpy(np.asarray(tails[i], np.int64))
        tail[i, : len(t)] = model.embeddings[t]
        tail_mask[i, : max(len(t), 1)] = True
    return gists, features, level, kind, mask, tail, tail_mask, labels


def loss_fn(u: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, margin: float,
            rank_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Huber regression on label − margin, plus pairwise ranking among each state's entries
    (pairs whose labels differ by more than the margin)."""
    target = labels - margin
    reg = (F.huber_loss(u, target, reduction="none") * mask).sum() / mask.sum()
    diff = labels[:, :, None] - labels[:, None, :]
    pairs = (diff > margin) & mask[:, :, None] & mask[:, None, :]
    if pairs.any():
        gap = u[:, :, None] - u[:, None, :]
        rank = F.softplus(-gap)[pairs].mean()
    else:
        rank = u.sum() * 0
    loss = reg + rank_weight * rank
    return loss, {"loss": loss.item(), "regression": reg.item(), "ranking": rank.item()}


def train_lensnet(config: LensTrainConfig, model: BaseModel, gist_model: GistModel,
                  progress: Progress, weights_out: Path | None = None) -> dict:
    """The whole pipeline: repositories → tasks → labels → states → fit (kept at its best
    validation) → evaluate → save. Every stage resumes from what `config.out` holds."""
    torch.manual_seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    repos = training_repos(config.lib, config.repos)
    data = [load_repo(config, name, files, config.seed + r, model, gist_model, progress)
            for r, (name, files) in enumerate(repos)]
    held = validation_repos(config.lib)
    val = [load_repo(config, name, files, config.seed + 1000 + r, model, gist_model, progress,
                     labels=False) for r, (name, files) in enumerate(held)]
    states = [s for r in range(len(data)) for s in make_states(data[r], r, config)]
    net, history, validation = fit(config, states, data, val, model, progress)
    evaluation = {f"val_{k}": v for k, v in evaluate(net, val).items()}
    evaluation.update({f"train_{k}": v for k, v in evaluate(net, data[:2]).items()})
    manifest = {
        "base_model": model.id, "gist_model": getattr(gist_model, "id", "?"),
        "steps": validation["best_step"], "seed": config.seed, "commit": _commit(),
        "data": {"repositories": [n for n, _ in repos], "validation": [n for n, _ in held],
                 "tasks": sum(len(d.tasks) for d in data), "states": len(states),
                 "rule": "Python standard library only; held-out packages validate"},
        "train": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "loss_curve": history[:: max(1, len(history) // 100)],
        "validation_curve": validation["curve"],
        "evaluation": evaluation,
    }
    if weights_out is not None:
        save_lensnet(net, weights_out.parent, weights_out.name, manifest)
    save_lensnet(net, config.out, "checkpoint", manifest)
    return manifest


def load_repo(config: LensTrainConfig, name: str, files: list[str], seed: int,
              model: BaseModel, gist_model: GistModel, progress: Progress, labels: bool = True
              ) -> RepoData:
    """One repository, indexed, with its tasks (mined with `seed`) and, for training, its
    labels, made if missing."""
    root, tasks = prepare_repo(config, name, files, model, gist_model, seed)
    with Store.open(db_path(root), read_only=True) as store:
        session = AskSession(store, model, name, AskConfig(focus="bm25"))
    made = make_labels(session, tasks, config.out / "repos" / f"{name}.labels.jsonl", config,
                       lambda i, n: progress(f"labels {name}", i, n, {})) if labels else []
    untrained = LensNet(net_config(config, model), model.token_norm)
    progress(f"repository {name}", 1, 1, {"tasks": float(len(tasks))})
    return RepoData(session, tasks, made, LensNetFocus(session, untrained))


def net_config(config: LensTrainConfig, model: BaseModel) -> LensNetConfig:
    """A new net reads every feature unless `config.net` says otherwise."""
    return LensNetConfig(dim=model.dim, **{"features": N_FEATURES, **config.net})


def fit(config: LensTrainConfig, states: list[State], data: list[RepoData],
        val: list[RepoData], model: BaseModel, progress: Progress
        ) -> tuple[LensNet, list[dict[str, float]], dict]:
    """AdamW with warm-up and linear decay over seeded batches of states; validated every
    `eval_every` steps (gold recall at 2048 on held-out packages), ending with the best."""
    net = LensNet(net_config(config, model), model.token_norm)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.01)
    rng = np.random.default_rng(config.seed)
    history, curve, best = [], [], (-1.0, 0, None)
    for step in range(config.steps):
        net.train()
        lr = config.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / config.steps))
        for g in optimizer.param_groups:
            g["lr"] = lr
        picked = [states[i] for i in rng.choice(len(states), config.batch, replace=False)]
        *inputs, labels = batch_inputs(picked, data, model, net.config.max_tail)
        dropped = torch.from_numpy(rng.random(len(picked)) < config.definition_dropout)
        inputs[1][dropped, :, DEFINITION_FEATURES] = 0.0
        loss, metrics = loss_fn(net(*inputs), labels, inputs[4], config.margin,
                                config.rank_weight)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        history.append({"step": step + 1, **metrics})
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            net.eval()
            recall = evaluate(net, val, budgets=(2048,), scorers=("lensnet",))
            score = recall["recall_lensnet_2048"]
            curve.append({"step": step + 1, "recall_2048": score})
            if score > best[0]:
                best = (score, step + 1, copy.deepcopy(net.state_dict()))
            metrics = {**metrics, "val_recall_2048": score}
        progress("train", step + 1, config.steps, metrics)
    net.load_state_dict(best[2])
    net.eval().requires_grad_(False)
    return net, history, {"best_step": best[1], "curve": curve}


def evaluate(net: LensNet, data: list[RepoData], budgets: tuple[int, ...] = (1024, 2048),
             scorers: tuple[str, ...] = ("lensnet", "bm25")) -> dict[str, float]:
    """Gold recall (every block of the gold function raw) of LensNet and BM25 focus."""
    out: dict[str, float] = {}
    for budget in budgets:
        hits = dict.fromkeys(scorers, 0)
        n = 0
        for d in data:
            d.focus.net = net
            focus = {"lensnet": d.focus, "bm25": d.session.focuser}
            focus = {k: v for k, v in focus.items() if k in scorers}
            for task in d.tasks:
                gold = set(gold_blocks(d.session, task).tolist())
                if not gold:
                    continue
                n += 1
                for name, f in focus.items():
                    entries = f.focus(task.question, budget, {})
                    raw = {e.node for e in entries if e.raw}
                    hits[name] += gold <= raw
        for name, h in hits.items():
            out[f"recall_{name}_{budget}"] = h / max(n, 1)
    return out
