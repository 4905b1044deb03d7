"""Focus Allocator: coverage, budget, legality, determinism and cooldowns, on random trees."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext.allocator import (
    AllocatorConfig,
    Entry,
    Tree,
    allocate,
    cold_start,
    cost,
    descend,
)


def make_tree(shape: list) -> Tree:
    """A tree from nested lists: an int is a block of that many tokens, a list a node."""
    parent, kids, tokens = [], [], []

    def add(item, up: int) -> int:
        i = len(parent)
        parent.append(up)
        kids.append([])
        tokens.append(item if isinstance(item, int) else 0)
        if isinstance(item, list):
            kids[i] = [add(c, i) for c in item]
        return i

    root = add(shape, -1)
    ptr = np.cumsum([0] + [len(k) for k in kids])
    flat = np.array([c for k in kids for c in k], dtype=np.int64)
    return Tree(np.array(parent), ptr, flat, np.array(tokens), root)


def blocks_in_order(tree: Tree, node: int) -> list[int]:
    if tree.is_block(node):
        return [node]
    return [b for c in tree.kids(node) for b in blocks_in_order(tree, int(c))]


def covered(tree: Tree, entries: list[Entry]) -> list[int]:
    return [b for e in entries for b in blocks_in_order(tree, e.node)]


shapes = st.recursive(
    st.integers(1, 32),
    lambda inner: st.lists(inner, min_size=1, max_size=6),
    max_leaves=60,
).filter(lambda s: isinstance(s, list))


@settings(max_examples=150, deadline=None)
@given(shape=shapes, budget=st.integers(1, 400), steps=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), cooldown=st.integers(1, 3))
def test_allocator_invariants(shape: list, budget: int, steps: int, seed: int,
                              cooldown: int) -> None:
    tree = make_tree(shape)
    config = AllocatorConfig(cooldown=cooldown)
    rng = np.random.default_rng(seed)
    everything = blocks_in_order(tree, tree.root)
    entries, cooldowns, last_change = cold_start(tree), {}, {}
    for step in range(steps):
        utilities = rng.normal(0, 1, len(entries))
        result = allocate(tree, entries, utilities, budget, cooldowns, config)
        again = allocate(tree, entries, utilities.copy(), budget, dict(cooldowns), config)
        assert (again.entries, again.edits) == (result.entries, result.edits), "deterministic"
        new = result.entries
        assert covered(tree, new) == everything, "entries tile every block once, in order"
        assert cost(new, tree) <= budget, "within budget"
        assert_edits_lead_to(tree, entries, result.edits, new)
        for edit in result.edits:
            assert step - last_change.get(edit.node, -10**9) > cooldown, (
                f"node {edit.node} changed at {last_change[edit.node]} and again at {step}")
            last_change[edit.node] = step
        entries, cooldowns = new, result.cooldowns


def replay(tree: Tree, entries: list[Entry], edit) -> list[Entry]:
    """Apply one edit, asserting that it is legal on these entries."""
    node = edit.node
    if edit.kind == "expand":
        assert Entry(node) in entries, "only an entry held as a gist expands"
        at = entries.index(Entry(node))
        grown = [Entry(node, raw=True)] if tree.is_block(node) else [
            Entry(int(c)) for c in tree.kids(node)]
        return entries[:at] + grown + entries[at + 1 :]
    assert edit.kind == "collapse"
    if tree.is_block(node):
        assert Entry(node, raw=True) in entries, "a block collapses from its raw tokens"
        at = entries.index(Entry(node, raw=True))
        return [*entries[:at], Entry(node), *entries[at + 1:]]
    kids = [Entry(int(c)) for c in tree.kids(node)]
    assert kids[0] in entries, "all siblings present as gists"
    at = entries.index(kids[0])
    assert entries[at : at + len(kids)] == kids, "all siblings present as gists"
    return [*entries[:at], Entry(node), *entries[at + len(kids):]]


def assert_edits_lead_to(tree: Tree, old: list[Entry], edits: list, new: list[Entry]) -> None:
    state = list(old)
    for edit in edits:
        state = replay(tree, state, edit)
    assert state == new, "the edits, applied in order, give the new entries"


def test_cold_start_is_the_root_and_expands_by_utility() -> None:
    tree = make_tree([[5, 6], [7, [8, 9]]])
    entries = cold_start(tree)
    assert entries == [Entry(tree.root)]
    r = allocate(tree, entries, np.array([1.0]), budget=10)
    assert r.entries == [Entry(1), Entry(4)] and [e.kind for e in r.edits] == ["expand"]
    r = allocate(tree, r.entries, np.array([-1.0, 2.0]), budget=10, cooldowns=r.cooldowns)
    assert r.entries == [Entry(1), Entry(5), Entry(6)], "the better child expands"


def test_raw_tokens_never_expand_and_budget_forces_collapse() -> None:
    tree = make_tree([[5, 6], [7, 8]])
    entries = [Entry(2, raw=True), Entry(3, raw=True), Entry(4)]  # 5 + 6 + 1
    r = allocate(tree, entries, np.array([5.0, 5.0, -1.0]), budget=12)
    assert r.entries == entries and r.edits == [], "raw blocks cannot expand; no room"
    r = allocate(tree, entries, np.array([5.0, 1.0, 0.0]), budget=7)
    assert cost(r.entries, tree) <= 7 and [e.kind for e in r.edits] == ["collapse"]
    assert Entry(2, raw=True) in r.entries, "the lower-utility raw block went first"


def test_expansion_collapses_low_utility_groups_to_make_room() -> None:
    tree = make_tree([[3, 3], [30, 3]])
    entries = [Entry(2), Entry(3), Entry(4)]  # cost 3; expanding 4 needs one more
    r = allocate(tree, entries, np.array([-2.0, -2.0, 3.0]), budget=3)
    assert Entry(1) in r.entries and Entry(5) in r.entries, (r.entries, r.edits)
    assert [e.kind for e in r.edits] == ["collapse", "expand"]


def test_hysteresis_keeps_middling_groups() -> None:
    tree = make_tree([[3, 3], [30, 3]])
    entries = [Entry(2), Entry(3), Entry(4)]
    config = AllocatorConfig(expand_threshold=0.0, collapse_threshold=-0.5)
    r = allocate(tree, entries, np.array([-0.2, -0.3, 3.0]), budget=3, config=config)
    assert r.entries == entries, "utility between the thresholds: neither kept nor traded"


@settings(max_examples=150, deadline=None)
@given(shape=shapes, budgets=st.lists(st.integers(1, 300), min_size=1, max_size=6),
       seed=st.integers(0, 2**31 - 1))
def test_shrinking_budget_always_fits(shape: list, budgets: list[int], seed: int) -> None:
    """When the budget shrinks (a longer question), the step collapses until it fits."""
    tree = make_tree(shape)
    rng = np.random.default_rng(seed)
    entries, cooldowns = cold_start(tree), {}
    everything = blocks_in_order(tree, tree.root)
    for budget in [400, *budgets]:
        for _ in range(3):  # grow first, then shrink
            result = allocate(tree, entries, rng.normal(0.5, 1, len(entries)), budget,
                              cooldowns)
            assert cost(result.entries, tree) <= budget
            assert covered(tree, result.entries) == everything
            assert_edits_lead_to(tree, entries, result.edits, result.entries)
            entries, cooldowns = result.entries, result.cooldowns


@settings(max_examples=150, deadline=None)
@given(shape=shapes, budget=st.integers(1, 400), seed=st.integers(0, 2**31 - 1))
def test_descend_invariants(shape: list, budget: int, seed: int) -> None:
    tree = make_tree(shape)
    rng = np.random.default_rng(seed)
    utility = rng.normal(0, 1, len(tree.parent))
    entries = cold_start(tree)
    result = descend(tree, entries, utility, budget)
    again = descend(tree, entries, utility.copy(), budget)
    assert (again.entries, again.edits) == (result.entries, result.edits), "deterministic"
    assert covered(tree, result.entries) == blocks_in_order(tree, tree.root), "coverage"
    assert cost(result.entries, tree) <= budget, "within budget"
    assert_edits_lead_to(tree, entries, result.edits, result.entries)
    assert all(utility[e.node] > 0 for e in result.edits), "only wanted entries expand"
    # Nothing left that is wanted and would still fit: the descent ran to the end.
    spare = budget - cost(result.entries, tree)
    for e in result.entries:
        if e.raw or utility[e.node] <= 0:
            continue
        grow = int(tree.tokens[e.node]) - 1 if tree.is_block(e.node) else len(tree.kids(e.node)) - 1
        assert grow > spare, f"entry {e.node} wanted and fits but was not expanded"
    # A further allocation step from the result keeps every invariant.
    step = allocate(tree, result.entries, utility[[e.node for e in result.entries]], budget,
                    result.cooldowns)
    assert covered(tree, step.entries) == blocks_in_order(tree, tree.root)
    assert cost(step.entries, tree) <= budget


def test_descend_goes_straight_to_the_best_block() -> None:
    tree = make_tree([[5, 6, [7, 30]], [8, 9]])  # nodes: 0 root, 1 [..], 2,3 blocks, 4 [7,30]…
    utility = np.full(len(tree.parent), -1.0)
    utility[[0, 1, 4, 6]] = 1.0  # the path root → 1 → 4 → block 6 (30 tokens)
    result = descend(tree, cold_start(tree), utility, budget=40)
    assert Entry(6, raw=True) in result.entries
    assert [e.node for e in result.edits] == [0, 1, 4, 6]
