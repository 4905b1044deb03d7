"""The agent (DESIGN.md §6): refocus → one action → its tool → its observation → repeat.

Each step the whole repository is refocused onto the current tail (the question and the
transcript so far) inside the budget, the model writes one action as JSON held to a schema
(so even a 135M model always writes a well-formed one), the tool runs, and the action with
its observation joins the tail. The loop ends at `answer`, or after `max_steps`; the last
step may only answer, so a session always ends with one unless its actions keep failing.

What the schema allows follows the session: `read` and citations name only files the tools
or the focus have shown (paths are enumerated in the schema), and `answer` is offered once
a tool has shown a file. An action that is still impossible (a line range past the end, an
unknown file, a path escaping the repository) or malformed (a scripted or truncated one)
becomes an observation, and the model tries again, at most `max_invalid` times in a row.
Our own bugs raise.

Every turn is written to the session log as it happens (`SessionStore`), with its focus
telemetry, timings and token counts; `resume` rebuilds a session's tail from the log.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcagent.tools import Citation, ToolError, Workspace, names_in
from megacontext.allocator import Entry
from megacontext.ask import SLOT, AskConfig, AskSession
from megacontext.gist import GistModel
from megacontext.store import SessionStore
from megacontext.tail import Tail
from megacontext.working_context import Entries, WorkingContext

USER_TEMPLATE = ("Repository {name} ({files} files; parts out of focus are compressed):\n"
                 "{slot}\n\nWrite the next action as one JSON object.")
TOOLS = ("search", "read", "list", "answer")
MAX_CITABLE = 24  # spans the schema offers to cite: the latest shown
MAX_READABLE = 32  # files the schema offers to read: the latest shown or focused

# The model's policy: the assembled context and the schema its action must follow -> the
# action's text. The real one decodes under the schema; tests script one.
Policy = Callable[[WorkingContext, dict], str]


class AgentError(Exception):
    """A session that cannot start or go on (the message says what to do)."""


@dataclass(frozen=True)
class AgentConfig:
    max_steps: int = 6
    max_invalid: int = 3  # invalid actions in a row before the session gives up
    tail_share: float = 0.4  # of the budget, for the question and the transcript
    observation_tokens: int = 320  # longest observation kept in the transcript
    action_tokens: int = 640  # longest action: room for the longest text the schema allows
    free_search: bool = False  # False: queries are names from the questions (small models)
    ask: AskConfig = field(default_factory=AskConfig)


@dataclass
class Step:
    """One turn of the transcript: a question, or an action with its observation."""

    kind: str  # "question" or "action"
    text: str  # as it stands in the tail
    action: dict | None = None  # the parsed action (None: a question, or an invalid action)
    observation: str | None = None
    record: dict = field(default_factory=dict)  # telemetry, timings, tokens, focus


@dataclass
class SessionResult:
    session_id: int
    status: str  # answered | out of steps | gave up
    answer: str | None
    citations: list[Citation]
    dropped: list[str]  # citations refused, with why
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)


class Agent:
    """A loaded repository, a tail and the tools: everything a step needs."""

    def __init__(self, session: AskSession, workspace: Workspace, gist_model: GistModel,
                 system: str, config: AgentConfig) -> None:
        self.session, self.workspace, self.config = session, workspace, config
        model = session.model
        self.model = model
        self.tail = Tail(model, gist_model, session.gists)
        user = USER_TEMPLATE.format(name=session.name, files=len(session.repo.paths),
                                    slot=SLOT)
        before, after = model.chat_ids(system, user, SLOT)
        self.wc = WorkingContext(model, before, after)
        self.seen: dict[str, None] = {}  # files the tools have shown, in order
        self.shown: dict[str, None] = {}  # spans the tools have shown: what may be cited
        self.done: dict[str, int] = {}  # each action run (as JSON) -> its step
        self.blocked: set[str] = set()  # tools left out of the next schema (just repeated)
        self.names: dict[str, None] = {}  # what the questions name: the search queries offered
        self.focused: list[str] = []  # files held raw in the last focus
        self.steps: list[Step] = []
        self.warnings: list[str] = []
        self._raw_since: dict[int, int] = {}  # block -> first step it was held raw

    # ------------------------------------------------------------ turns

    def add_question(self, question: str, follow_up: bool = False) -> Step:
        self.tail.unpin()
        text = f"\n{'Follow-up question' if follow_up else 'Question'}: {question.strip()}\n"
        ids = self.token_ids(text)
        limit = int(self.config.ask.budget * self.config.ask.question_share)
        if len(ids) > limit:
            self.warnings.append(f"the question has {len(ids)} tokens; kept the first {limit} "
                                 f"({self.config.ask.question_share:.0%} of the budget)")
            ids = ids[:limit]
            text = self.model.tokenizer.decode(ids.tolist())
        self.tail.append(ids, pinned=True)
        self.names.update(dict.fromkeys(names_in(question)))
        step = Step("question", text)
        self.steps.append(step)
        return step

    def add_action(self, step: Step) -> None:
        self.tail.append(self.token_ids(step.text))
        self.steps.append(step)

    def token_ids(self, text: str) -> np.ndarray:
        return np.asarray(self.model.tokenizer.encode(text, add_special_tokens=False).ids,
                          np.int64)

    # ------------------------------------------------------------ refocus

    def refocus(self, number: int) -> dict:
        """Focus the repository on the tail and assemble the working context; returns the
        step's record (telemetry, tokens, timings, focus map)."""
        timings: dict[str, float] = {}
        budget = self.config.ask.budget
        entry_budget = budget - self.wc.template_length
        t = time.perf_counter()
        tail = self.tail.pieces(int(budget * self.config.tail_share))
        timings["tail"] = time.perf_counter() - t
        room = entry_budget - tail.cost
        if room < 1:
            raise AgentError(f"--budget {budget} leaves no room for the repository beside the "
                             f"transcript ({tail.cost} positions): raise it")
        entries = self.session.focus(self._focus_text(), room, timings)
        t = time.perf_counter()
        repo = self.session.entries(entries)
        self.wc.entries = Entries(
            np.concatenate([repo.keys, tail.keys]), np.concatenate([repo.lengths, tail.lengths]),
            np.concatenate([repo.token_ids, tail.token_ids]),
            np.concatenate([repo.gist_rows, tail.gist_rows]), self.session.gists.table())
        timings["assemble"] = time.perf_counter() - t
        spans = self.session.spans(entries)
        self.focused = list(dict.fromkeys(s.path for s in spans))
        levels = self.session.levels(entries)
        return {
            "telemetry": {**self._telemetry(entries, number),
                          "tail": {"raw_turns": tail.raw_turns, "gisted_turns": tail.gisted_turns,
                                   "gists": tail.gists, "positions": tail.cost}},
            "tokens": {"context": self.wc.length, "entries": len(entries),
                       "raw_tokens": sum(e.cost(self.session.repo.tree) for e in entries
                                         if e.raw), "tail": tail.cost, "budget": budget},
            "timings": timings,
            "focus": [str(s) for s in spans],
            "files": {p: {("raw" if lv == 0 else f"L{lv}"): n for lv, n in lvs.items()}
                      for p, lvs in levels.items() if 0 in lvs},
        }

    def _focus_text(self) -> str:
        """What the scorer reads: the latest question and the last two turns."""
        question = next(s.text for s in reversed(self.steps) if s.kind == "question")
        recent = [s.text for s in self.steps[-2:] if s.kind == "action"]
        return " ".join([question, *recent])

    def _telemetry(self, entries: list[Entry], number: int) -> dict:
        level = self.session.repo.level
        counts: dict[str, int] = {}
        for e in entries:
            key = "raw" if e.raw else f"L{int(level[e.node])}"
            counts[key] = counts.get(key, 0) + 1
        raw = {e.node for e in entries if e.raw}
        before = set(self._raw_since)
        expands, collapses = len(raw - before), len(before - raw)
        self._raw_since = {n: self._raw_since.get(n, number) for n in raw}
        residency = (float(np.mean([number - s + 1 for s in self._raw_since.values()]))
                     if raw else 0.0)
        return {"entries": counts, "expands": expands, "collapses": collapses,
                "swap_rate": round((expands + collapses) / max(1, len(raw | before)), 4),
                "residency": round(residency, 3)}

    # ------------------------------------------------------------ actions

    def schema(self, final: bool) -> dict:
        """The JSON schema of the next action, given what the session has seen: `read` names
        a file the tools or the focus showed (lines within it), citations a span the tools
        showed (the latest MAX_CITABLE), `list` a folder that holds indexed files; `answer`
        is offered once there is something to cite; a tool just refused for repeating itself
        is not offered until another tool has run; and (unless `free_search`) search queries
        are the names the questions mention that were not searched yet: a 135M model chooses
        better than it spells, and repeats itself when it may."""
        readable = list(dict.fromkeys([*self.seen, *self.focused]))[-MAX_READABLE:]
        citable = list(self.shown)[-MAX_CITABLE:]
        cite = {"type": "string", "enum": citable} if citable else {"type": "string"}
        answer = _object("answer", text={"type": "string", "minLength": 1, "maxLength": 500},
                         citations={"type": "array", "items": cite,
                                    "minItems": 1 if citable else 0,
                                    "maxItems": 4 if citable else 0})
        if final:
            return answer
        lines = self.workspace.lines_in
        reads = ([_object("read", path={"const": p},
                          start={"type": "integer", "minimum": 1, "maximum": lines[p]},
                          end={"type": "integer", "minimum": 1, "maximum": lines[p]})
                  for p in readable if lines.get(p, 0) > 0]
                 or [_object("read", path={"type": "string"}, start={"type": "integer"},
                             end={"type": "integer"})])
        done = [json.loads(k) for k in self.done]
        searched = {a["query"] for a in done if a["tool"] == "search"}
        listed = {a["dir"] for a in done if a["tool"] == "list"}
        fresh = [n for n in self.names if n not in searched][-MAX_READABLE:]
        query = ({"type": "string", "enum": fresh} if fresh and not self.config.free_search
                 else {"type": "string", "minLength": 1, "maxLength": 80})
        folders = list(dict.fromkeys([".", *(p.rsplit("/", 1)[0] for p in readable if "/" in p),
                                      *self.workspace.top_folders]))
        folders = [f for f in folders if f not in listed][:MAX_READABLE]
        actions = [_object("search", query=query), *reads,
                   *([_object("list", dir={"type": "string", "enum": folders})] if folders else [])]
        actions = [a for a in actions if a["properties"]["tool"]["const"] not in self.blocked]
        return {"anyOf": actions + ([answer] if citable else [])}

    def run_tool(self, text: str, number: int
                 ) -> tuple[dict | None, str, list[Citation], list[str]]:
        """Parse and run step `number`'s action: (action or None if invalid, observation,
        citations, dropped citations)."""
        try:
            action = parse_action(text)
        except ToolError as e:
            return None, f"invalid action: {e}", [], []
        key = json.dumps(action, sort_keys=True)
        if key in self.done and action["tool"] != "answer":
            self.blocked = {action["tool"]}  # a small model repeats itself: make it move on
            return None, (f"refused: this repeats step {self.done[key]}, whose result is "
                          f"above; {action['tool']} is not offered next step"), [], []
        self.done[key] = number
        w = self.workspace
        try:
            spans: list[Citation] = []
            if action["tool"] == "search":
                observation, spans = w.search(action["query"])
            elif action["tool"] == "read":
                observation, where = w.read(action["path"], action["start"], action["end"])
                spans = [where]
            elif action["tool"] == "list":
                observation, files = w.list(action["dir"])
                self.seen.update(dict.fromkeys(files))
            else:
                return action, "", *self._citations(action["citations"])
        except ToolError as e:
            return None, f"error: {e}", [], []
        self.blocked = set()
        self.seen.update(dict.fromkeys(c.path for c in spans))
        for c in spans:  # re-shown spans move to the end: the newest are citable
            self.shown.pop(str(c), None)
            self.shown[str(c)] = None
        return action, self._cap(observation), [], []

    def _citations(self, texts: list[str]) -> tuple[list[Citation], list[str]]:
        kept, dropped = [], []
        for text in texts:
            try:
                c = self.workspace.citation(text)
            except ToolError as e:
                dropped.append(str(e))
                continue
            if c not in kept:
                kept.append(c)
        return kept, dropped

    def _cap(self, observation: str) -> str:
        ids = self.model.tokenizer.encode(observation, add_special_tokens=False).ids
        limit = self.config.observation_tokens
        if len(ids) <= limit:
            return observation
        return (self.model.tokenizer.decode(ids[:limit]).rstrip()
                + "\n… (cut: read a narrower range or search more precisely)")


def run(agent: Agent, policy: Policy, log: Callable[[Step], None],
        on_step: Callable[[Step], None] | None = None) -> SessionResult:
    """Steps until an answer, `max_steps`, or `max_invalid` failures in a row."""
    config, invalid = agent.config, 0
    first = sum(1 for s in agent.steps if s.kind == "action")
    for number in range(first + 1, first + config.max_steps + 1):
        record = agent.refocus(number)
        t = time.perf_counter()
        text = policy(agent.wc, agent.schema(final=number == first + config.max_steps))
        record["timings"]["act"] = time.perf_counter() - t
        t = time.perf_counter()
        action, observation, citations, dropped = agent.run_tool(text, number)
        record["timings"]["tool"] = time.perf_counter() - t
        invalid = invalid + 1 if action is None else 0
        shown = json.dumps(action) if action is not None else text.strip()[:300]
        step = Step("action", f"Step {number}: {shown}\nResult: {observation}\n", action,
                    observation, {"step": number, "valid": action is not None,
                                  "paths": list(agent.seen), "spans": list(agent.shown),
                                  **record})
        agent.add_action(step)
        log(step)
        if on_step is not None:
            on_step(step)
        if action is not None and action["tool"] == "answer":
            return SessionResult(0, "answered", action["text"], citations, dropped, agent.steps)
        if invalid >= config.max_invalid:
            return SessionResult(0, "gave up", None, [], [], agent.steps)
    return SessionResult(0, "out of steps", None, [], [], agent.steps)


def model_policy(max_tokens: int) -> Policy:
    """The base model's greedy action, decoded under the schema."""
    def act(wc: WorkingContext, schema: dict) -> str:
        logits = wc.prefill()
        constraint = wc.model.json_constraint(schema)
        ids = list(wc.decode(logits, max_tokens, constraint))
        return wc.model.tokenizer.decode(ids)

    return act


def parse_action(text: str) -> dict:
    """One action from the model's text, checked field by field (ToolError if not one)."""
    try:
        action = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolError(f"not JSON ({e.msg} at character {e.pos}); write one JSON object "
                        "such as {\"tool\": \"search\", \"query\": \"name\"}") from None
    if not isinstance(action, dict) or action.get("tool") not in TOOLS:
        raise ToolError(f"an action is an object whose \"tool\" is one of {', '.join(TOOLS)}")
    fields = {"search": {"query": str}, "read": {"path": str, "start": int, "end": int},
              "list": {"dir": str}, "answer": {"text": str, "citations": list}}[action["tool"]]
    for name, kind in fields.items():
        value = action.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ToolError(f"{action['tool']} needs \"{name}\" as a {kind.__name__}")
    if action["tool"] == "answer" and not all(isinstance(c, str) for c in action["citations"]):
        raise ToolError("citations are strings of the form path:start-end")
    return {"tool": action["tool"], **{k: action[k] for k in fields}}


def _object(tool: str, **properties: dict) -> dict:
    return {"type": "object", "properties": {"tool": {"const": tool}, **properties},
            "required": ["tool", *properties], "additionalProperties": False}


# ---------------------------------------------------------------- sessions


class SessionLog:
    """Writes a session's turns to `.mcagent/sessions.duckdb` as they happen (the file is
    held only while writing, so concurrent sessions and `show` never block for long)."""

    def __init__(self, root: Path, wait: float) -> None:
        self.root, self.wait = root, wait
        self.session_id = 0

    def start(self, repository: str, question: str, settings: dict) -> int:
        with SessionStore.open_log(self.root, self.wait) as s:
            self.session_id = s.new_session(repository, question, json.dumps(settings))
        return self.session_id

    def resume(self, session_id: int | None) -> tuple[dict, list[dict]]:
        with SessionStore.open_log(self.root, self.wait) as s:
            session_id = s.last_session() if session_id is None else session_id
            info = s.session(session_id) if session_id is not None else None
            if info is None:
                raise AgentError("no session to continue: ask a question first"
                                 if session_id is None else f"no session {session_id}")
            self.session_id = int(session_id)
            return info, s.turns(self.session_id)

    def __call__(self, step: Step) -> None:
        with SessionStore.open_log(self.root, self.wait) as s:
            s.add_turn(self.session_id, step.kind, step.text, step.observation,
                       json.dumps({**step.record, "action": step.action}))

    def finish(self, result: SessionResult) -> None:
        with SessionStore.open_log(self.root, self.wait) as s:
            s.finish(self.session_id, result.status, json.dumps(
                {"text": result.answer, "citations": [str(c) for c in result.citations],
                 "dropped": result.dropped}) if result.answer is not None else None)


def restore(agent: Agent, turns: list[dict]) -> None:
    """Put a logged session's turns back into the agent's tail."""
    for turn in turns:
        record = json.loads(str(turn["record"]))
        if turn["kind"] == "question":
            agent.names.update(dict.fromkeys(names_in(str(turn["text"]))))
            agent.tail.unpin()
            agent.tail.append(agent.token_ids(str(turn["text"])), pinned=True)
            agent.steps.append(Step("question", str(turn["text"]), record=record))
        else:
            agent.seen.update(dict.fromkeys(record.get("paths", [])))
            agent.shown.update(dict.fromkeys(record.get("spans", [])))
            if record.get("action"):
                agent.done[json.dumps(record["action"], sort_keys=True)] = record["step"]
            agent.add_action(Step("action", str(turn["text"]), record.get("action"),
                                  turn["observation"], record))  # type: ignore[arg-type]


def ask_session(agent: Agent, log: SessionLog, question: str | None, policy: Policy,
                settings: dict, resume: bool = False,
                on_step: Callable[[Step], None] | None = None) -> SessionResult:
    """Start (or, with `resume`, continue the last) session, run it and log its end."""
    if resume:
        info, turns = log.resume(None)
        restore(agent, turns)
        if question is None and info["status"] == "answered":
            raise AgentError(f"session {log.session_id} is answered: give a follow-up question "
                             "to continue it")
        if question is not None:
            log(agent.add_question(question, follow_up=True))
    else:
        if question is None:
            raise AgentError("a new session needs a question")
        log.start(agent.session.name, question, settings)
        log(agent.add_question(question))
    result = dataclasses.replace(run(agent, policy, log, on_step), session_id=log.session_id,
                                 warnings=agent.warnings)
    log.finish(result)
    return result
