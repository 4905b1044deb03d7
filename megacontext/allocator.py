"""Focus Allocator (DESIGN.md §4): a pure function from (entries, utilities, budget,
cooldowns) to edits of the working context.

The entries tile the whole repository in timeline order: each is a node held as its gist
(cost 1) or a block held raw (cost = its tokens). Legal edits:

- expand a node's gist into its children's gists (cost + children − 1);
- expand a block's gist into its raw tokens (cost + tokens − 1); raw tokens never expand;
- collapse a complete group of sibling gists into their parent's gist (the root never
  collapses: it has no parent), or a raw block back into its gist.

Hysteresis: an entry expands only when its utility is above `expand_threshold`; a group
collapses to make room only when its utility (the best of its members) is below
`collapse_threshold`, which is lower. A node whose state changed in the last `cooldown`
steps cannot change back: the cooldown is keyed by that node for both directions, so
drilling further down is never blocked. No I/O, no state between calls; ties are broken
by timeline position, so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class AllocatorConfig:
    """Thresholds and limits of one allocation step."""

    expand_threshold: float = 0.0  # expand entries whose utility is above this
    collapse_threshold: float = -0.5  # groups below this may collapse to make room
    cooldown: int = 2  # steps before a changed node may change back
    max_edits: int = 256  # edits per step


@dataclass(frozen=True)
class Tree:
    """The shape the allocator needs: children in order, block token counts.

    Children of node i are `children[child_ptr[i]:child_ptr[i + 1]]` (CSR). A block is a node
    without children; its raw cost is `tokens[i]`.
    """

    parent: np.ndarray  # (N,) int64, -1 for the root
    child_ptr: np.ndarray  # (N + 1,) int64
    children: np.ndarray  # (M,) int64
    tokens: np.ndarray  # (N,) int64: a block's token count (0 for other nodes)
    root: int

    def kids(self, node: int) -> np.ndarray:
        return self.children[self.child_ptr[node] : self.child_ptr[node + 1]]

    def is_block(self, node: int) -> bool:
        return self.child_ptr[node + 1] == self.child_ptr[node]

    def lists(self) -> tuple[list[int], list[int], list[int]]:
        """child_ptr, children and tokens as Python lists (for per-node loops), made once."""
        made = self.__dict__.get("_lists")
        if made is None:
            made = (self.child_ptr.tolist(), self.children.tolist(), self.tokens.tolist())
            object.__setattr__(self, "_lists", made)
        return made


class Entry(NamedTuple):
    """One working-context entry: a node's gist, or a block's raw tokens (a tuple: a
    working context holds thousands, made in every step)."""

    node: int
    raw: bool = False

    def cost(self, tree: Tree) -> int:
        return int(tree.tokens[self.node]) if self.raw else 1


@dataclass(frozen=True)
class Edit:
    """`expand` a node (into children, or a block into raw tokens) or `collapse` into it."""

    kind: str  # "expand" | "collapse"
    node: int


@dataclass
class Allocation:
    """The result of one step: the new entries, the edits made, the cooldowns to pass on."""

    entries: list[Entry]
    edits: list[Edit] = field(default_factory=list)
    cooldowns: dict[int, int] = field(default_factory=dict)


def cost(entries: list[Entry], tree: Tree) -> int:
    return sum(e.cost(tree) for e in entries)


def cold_start(tree: Tree) -> list[Entry]:
    """The coarsest cover: the root's gist alone (fits any budget ≥ 1)."""
    return [Entry(tree.root)]


def allocate(tree: Tree, entries: list[Entry], utilities: np.ndarray, budget: int,
             cooldowns: dict[int, int] | None = None,
             config: AllocatorConfig = AllocatorConfig()) -> Allocation:
    """One refocusing step. `utilities[i]` scores `entries[i]` (positive: expand it)."""
    assert len(utilities) == len(entries), f"{len(utilities)} utilities, {len(entries)} entries"
    assert budget >= 1, "the root alone costs 1"
    cooling = {n: s - 1 for n, s in (cooldowns or {}).items() if s > 1}
    blocked = {n for n, s in (cooldowns or {}).items() if s > 0}
    state = _State(tree, list(entries), [float(u) for u in utilities], blocked)
    state.fit(budget)  # the budget is a hard limit, even if the tail grew since last step
    for i in state.expand_order(config):
        if len(state.edits) >= config.max_edits:
            break
        state.try_expand(i, budget, config)
    new = state.result()
    for edit in state.edits:
        cooling[edit.node] = config.cooldown
    return Allocation(new, state.edits, cooling)


def descend(tree: Tree, entries: list[Entry], node_utility: np.ndarray, budget: int,
            config: AllocatorConfig = AllocatorConfig()) -> Allocation:
    """Best-first focusing for scorers that rate every node on its own (BM25): expand the
    best-rated entry above the expand threshold whose expansion fits the budget, then its
    children as they appear, until nothing more fits — many expand-only steps in one pass,
    with the same legal edits. `node_utility[n]` rates node n; ties go to the earlier node.
    Needs `entries` to fit the budget already (`allocate` makes them fit).
    """
    import heapq

    assert cost(entries, tree) <= budget, "descend starts from a cover within the budget"
    ptr, children, tokens = tree.lists()
    threshold = config.expand_threshold
    heap = [(-float(node_utility[e.node]), e.node) for e in entries
            if not e.raw and node_utility[e.node] > threshold]
    heapq.heapify(heap)
    total = cost(entries, tree)
    expanded: set[int] = set()
    edits: list[Edit] = []
    while heap and len(edits) < config.max_edits:
        _, node = heapq.heappop(heap)
        lo, hi = ptr[node], ptr[node + 1]
        delta = (tokens[node] if lo == hi else hi - lo) - 1
        if total + delta > budget:
            continue
        total += delta
        expanded.add(node)
        edits.append(Edit("expand", node))
        if lo < hi:
            kids = tree.children[lo:hi]
            u = node_utility[kids]
            for k in np.flatnonzero(u > threshold).tolist():
                heapq.heappush(heap, (-float(u[k]), children[lo + k]))
    out: list[Entry] = []
    for e in entries:
        if e.raw or e.node not in expanded:
            out.append(e)
            continue
        stack = [e.node]
        while stack:  # depth first, children in timeline order
            node = stack.pop()
            if node not in expanded:
                out.append(Entry(node))
            elif ptr[node] == ptr[node + 1]:
                out.append(Entry(node, raw=True))
            else:
                stack.extend(reversed(children[ptr[node] : ptr[node + 1]]))
    return Allocation(out, edits, {edit.node: config.cooldown for edit in edits})


class _State:
    """Entries being edited. Edits are recorded against entry identities, then applied."""

    def __init__(self, tree: Tree, entries: list[Entry], utilities: list[float],
                 blocked: set[int]) -> None:
        self.tree, self.blocked = tree, blocked
        self.entries: list[Entry | None] = entries  # None: removed by a collapse
        self.utility = utilities
        self.replace: dict[int, list[Entry]] = {}  # entry index -> what replaces it
        self.edits: list[Edit] = []
        self.total = cost(entries, tree)
        self._groups: list | None = None
        self._used: list[bool] = []

    def expand_order(self, config: AllocatorConfig) -> list[int]:
        ok = [i for i, e in enumerate(self.entries)
              if self.utility[i] > config.expand_threshold and e is not None]
        return sorted(ok, key=lambda i: (-self.utility[i], i))

    def try_expand(self, i: int, budget: int, config: AllocatorConfig) -> None:
        e = self.entries[i]
        if e is None or e.raw or i in self.replace or e.node in self.blocked:
            return
        grown = self._expanded(e)
        delta = cost(grown, self.tree) - 1
        if self.total + delta > budget:
            self._make_room(self.total + delta - budget, self.utility[i], config, avoid=i)
        if self.total + delta > budget:
            return
        self.replace[i] = grown
        self.total += delta
        self.edits.append(Edit("expand", e.node))

    def _expanded(self, e: Entry) -> list[Entry]:
        if self.tree.is_block(e.node):
            return [Entry(e.node, raw=True)]
        return [Entry(int(c)) for c in self.tree.kids(e.node)]

    def fit(self, budget: int) -> None:
        """Collapse the lowest-utility groups, whatever the thresholds and cooldowns, until
        within budget: the budget is the one limit that always holds."""
        while self.total > budget:
            edits = len(self.edits)
            self._make_room(self.total - budget, float("inf"), None, avoid=-1)
            self._groups = None  # collapses may have completed new sibling groups
            assert len(self.edits) > edits, "a cover costing more than 1 always collapses"

    def _make_room(self, need: int, than: float, config: AllocatorConfig | None,
                   avoid: int) -> None:
        """Collapse groups worth less than `than` (below the collapse threshold and out of
        cooldown when a config is given), lowest first, until `need` cost is freed. Groups
        are those complete at the start of the step: one found by the search, one it frees."""
        limit = than if config is None else min(than, config.collapse_threshold)
        for k, (u, _, parent, members, freed) in enumerate(self.groups()):
            if need <= 0 or u >= limit:
                return
            if self._used[k] or avoid in members or (config is not None and (
                    parent in self.blocked or freed == 0)):
                continue
            if any(self.entries[j] is None or j in self.replace for j in members):
                continue
            self._used[k] = True
            for j in members:
                self.entries[j] = None
            self.entries[members[0]] = Entry(parent)  # a raw block's "parent" is itself
            self.utility[members[0]] = u
            self.blocked.add(parent)  # not expanded again in this step
            self.total -= freed
            need -= freed
            self.edits.append(Edit("collapse", parent))

    def groups(self) -> list[tuple[float, int, int, list[int], int]]:
        """Collapsible groups (utility, position, parent, member indices, cost freed), lowest
        utility first: raw blocks, and complete runs of sibling gists."""
        if self._groups is None:
            found = []
            live = [(i, e) for i, e in enumerate(self.entries)
                    if e is not None and i not in self.replace]
            k = 0
            while k < len(live):
                i, e = live[k]
                if e.raw:
                    group, k = (e.node, [i], e.cost(self.tree) - 1), k + 1
                else:
                    group, k = self._sibling_group(live, k)
                if group is not None:
                    u = max(self.utility[j] for j in group[1])
                    found.append((u, group[1][0], *group))
            self._groups = sorted(found, key=lambda g: (g[0], g[1]))
            self._used = [False] * len(self._groups)
        return self._groups

    def _sibling_group(self, live: list[tuple[int, Entry]], k: int
                       ) -> tuple[tuple[int, list[int], int] | None, int]:
        """If live[k] starts a complete run of its parent's children (all gists), that group."""
        e = live[k][1]
        parent = int(self.tree.parent[e.node])
        if parent < 0:
            return None, k + 1
        kids = self.tree.kids(parent)
        if int(kids[0]) != e.node or k + len(kids) > len(live):
            return None, k + 1
        run = live[k : k + len(kids)]
        if any(x.raw or x.node != int(c) for (_, x), c in zip(run, kids, strict=True)):
            return None, k + 1
        return (parent, [j for j, _ in run], len(kids) - 1), k + len(kids)

    def result(self) -> list[Entry]:
        out: list[Entry] = []
        for i, e in enumerate(self.entries):
            if e is None:
                continue
            out.extend(self.replace.get(i, [e]))
        return out
