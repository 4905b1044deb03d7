"""The agent loop with a scripted policy (queued actions) over a real index and model.

The policy is scripted, so no test here runs the network except the one that decodes an
action under the schema; the context is still assembled for real at every step, so budgets,
focus and the tail are what a real session would give the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import prompts
from mcagent.agent import (
    Agent,
    AgentConfig,
    SessionLog,
    ask_session,
    model_policy,
    parse_action,
    run,
)
from mcagent.tools import ToolError, Workspace
from megacontext.adapter import BaseModel
from megacontext.ask import AskConfig, AskSession
from megacontext.gistnet import default_gist_model
from megacontext.indexer import IndexConfig, index_repository
from megacontext.store import SessionStore, Store, db_path
from megacontext.working_context import WorkingContext

pytestmark = pytest.mark.model


class Scripted:
    """A policy that returns queued actions and remembers what it was shown."""

    def __init__(self, actions: list[str | dict]) -> None:
        self.queue = [a if isinstance(a, str) else json.dumps(a) for a in actions]
        self.schemas: list[dict] = []
        self.lengths: list[int] = []
        self.tails: list[np.ndarray] = []

    def __call__(self, wc: WorkingContext, schema: dict) -> str:
        self.schemas.append(schema)
        self.lengths.append(wc.length)
        self.tails.append(wc.entries.keys[wc.entries.keys < 0].copy())
        return self.queue.pop(0)


@pytest.fixture
def indexed(code_repo: Path, real_model: BaseModel) -> Path:
    index_repository(code_repo, real_model, default_gist_model(real_model), IndexConfig())
    return code_repo


def make_agent(repo: Path, model: BaseModel, budget: int = 768, **config: object) -> Agent:
    store = Store.open(db_path(repo), read_only=True)
    cfg = AgentConfig(ask=AskConfig(budget=budget), **config)  # type: ignore[arg-type]
    session = AskSession(store, model, repo.name, cfg.ask)
    store.close()
    return Agent(session, Workspace(repo, session.repo), default_gist_model(model),
                 prompts.render("agent_system", repository=repo.name), cfg)


def kinds(schema: dict) -> set[str]:
    options = schema.get("anyOf", [schema])
    return {o["properties"]["tool"]["const"] for o in options}


def test_search_read_answer(indexed: Path, real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model)
    agent.add_question("What does top_level return?")
    policy = Scripted([{"tool": "search", "query": "top_level"},
                       {"tool": "read", "path": "pkg/sample.py", "start": 1, "end": 12},
                       {"tool": "answer", "text": "Its argument doubled.",
                        "citations": ["pkg/sample.py:1-12"]}])
    logged = []
    result = run(agent, policy, logged.append)
    assert result.status == "answered" and result.answer == "Its argument doubled."
    assert [str(c) for c in result.citations] == ["pkg/sample.py:1-12"]
    assert [s.record["step"] for s in logged] == [1, 2, 3]
    search, read = logged[0].observation, logged[1].observation
    assert "pkg/sample.py:" in search and "top_level" in search
    assert read.startswith("pkg/sample.py:1-12") and "def top_level" in read
    assert "answer" not in kinds(policy.schemas[0])  # nothing shown yet: nothing to cite
    search_schema = next(o for o in policy.schemas[0]["anyOf"]
                         if o["properties"]["tool"]["const"] == "search")
    assert search_schema["properties"]["query"]["enum"] == ["top_level"]  # named in the question
    reads = {o["properties"]["path"]["const"] for o in policy.schemas[2]["anyOf"]
             if o["properties"]["tool"]["const"] == "read"}
    assert "pkg/sample.py" in reads  # a file the tools showed
    assert "answer" in kinds(policy.schemas[2])
    assert max(policy.lengths) <= 768
    # Each step the transcript grew: the tail the model saw has more raw turns.
    assert [len(t) for t in policy.tails] == [1, 2, 3]
    telemetry = logged[1].record["telemetry"]
    assert telemetry["entries"] and 0 <= telemetry["swap_rate"] <= 1
    assert logged[0].record["focus"], "some of the repository is held at full resolution"


def test_malformed_actions_become_observations_then_give_up(indexed: Path,
                                                           real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model, max_invalid=3)
    agent.add_question("What does top_level return?")
    policy = Scripted(["not json", {"tool": "search"}, {"tool": "search", "query": "top_level"},
                       '{"tool": "answer", "text": 3}', {"tool": "fly"}, "[1, 2]"])
    steps = []
    result = run(agent, policy, steps.append)
    obs = [s.observation for s in steps]
    assert obs[0].startswith("invalid action: not JSON")
    assert obs[1] == 'invalid action: search needs "query" as a str'
    assert steps[2].action is not None and "results" in obs[2]  # the retry worked
    assert all(o.startswith("invalid action") for o in obs[3:])
    assert result.status == "gave up" and len(steps) == 6  # three invalid in a row
    assert "Result: invalid action: not JSON" in steps[0].text  # the model sees why


def test_max_steps_and_the_last_step_may_only_answer(indexed: Path,
                                                     real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model, max_steps=3)
    agent.add_question("What does top_level return?")
    policy = Scripted([{"tool": "search", "query": "top_level"},
                       {"tool": "search", "query": "main"},
                       {"tool": "search", "query": "again"}])
    result = run(agent, policy, lambda s: None)
    assert result.status == "out of steps" and result.answer is None
    assert len(policy.schemas) == 3
    assert kinds(policy.schemas[2]) == {"answer"}  # the script ignored it: invalid
    assert "anyOf" in policy.schemas[1] and kinds(policy.schemas[1]) >= {"search", "read"}


def test_a_repeated_action_is_refused_and_its_tool_left_out(indexed: Path,
                                                            real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model)
    agent.add_question("What does top_level return?")
    search = {"tool": "search", "query": "top_level"}
    policy = Scripted([search, search, {"tool": "list", "dir": "."},
                       {"tool": "answer", "text": "x", "citations": []}])
    steps = []
    run(agent, policy, steps.append)
    assert steps[1].observation.startswith("refused: this repeats step 1")
    assert "search" not in kinds(policy.schemas[2])
    assert "search" in kinds(policy.schemas[3])  # back once another tool ran


def test_paths_that_escape_are_refused(indexed: Path, real_model: BaseModel,
                                       tmp_path: Path) -> None:
    agent = make_agent(indexed, real_model, max_invalid=5)
    agent.add_question("Show me secrets.")
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET\n")
    policy = Scripted([{"tool": "read", "path": "../secret.txt", "start": 1, "end": 1},
                       {"tool": "read", "path": str(outside), "start": 1, "end": 1},
                       {"tool": "list", "dir": "../.."},
                       {"tool": "read", "path": "nothere.py", "start": 1, "end": 2},
                       {"tool": "answer", "text": "x", "citations": []}])
    steps = []
    run(agent, policy, steps.append)
    obs = [s.observation for s in steps[:4]]
    assert "'..'" in obs[0] and "absolute" in obs[1] and "'..'" in obs[2]
    assert "not an indexed file" in obs[3]
    assert not any("TOP SECRET" in o for o in obs)
    # An indexed file replaced by a symlink that leads outside is refused too.
    (indexed / "main.py").unlink()
    (indexed / "main.py").symlink_to(outside)
    with pytest.raises(ToolError, match="outside the repository"):
        agent.workspace.read("main.py", 1, 1)


def test_citations_are_checked_against_the_tree(indexed: Path, real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model)
    agent.add_question("What does top_level return?")
    n = len((indexed / "pkg/sample.py").read_text().splitlines())
    policy = Scripted([{"tool": "search", "query": "top_level"},
                       {"tool": "answer", "text": "doubled", "citations": [
                           "pkg/sample.py:1-3", f"pkg/sample.py:{n}-{n + 5}", "nope.py:1-2",
                           "../etc/passwd:1-1", "pkg/sample.py", "pkg/sample.py:1-3"]}])
    result = run(agent, policy, lambda s: None)
    assert [str(c) for c in result.citations] == ["pkg/sample.py:1-3"]
    assert len(result.dropped) == 4
    assert any(f"lines 1-{n}" in d for d in result.dropped)
    assert any("not an indexed file" in d for d in result.dropped)


def test_sessions_persist_and_continue(indexed: Path, real_model: BaseModel) -> None:
    settings = {"budget": 768}
    agent = make_agent(indexed, real_model)
    first = ask_session(agent, SessionLog(indexed, 5.0), "What does top_level return?",
                        Scripted([{"tool": "search", "query": "top_level"},
                                  {"tool": "answer", "text": "doubled",
                                   "citations": ["pkg/sample.py:1-3"]}]), settings)
    assert first.status == "answered" and first.session_id == 1
    with SessionStore.open_log(indexed) as log:
        assert log.session(1)["status"] == "answered"
        turns = log.turns(1)
    assert [t["kind"] for t in turns] == ["question", "action", "action"]
    assert json.loads(turns[1]["record"])["telemetry"]["entries"]

    again = make_agent(indexed, real_model)  # a new process, as `ask --continue` is
    policy = Scripted([{"tool": "read", "path": "main.py", "start": 1, "end": 3},
                       {"tool": "answer", "text": "it prints", "citations": ["main.py:1-3"]}])
    second = ask_session(again, SessionLog(indexed, 5.0), "And main.py?", policy, settings,
                         resume=True)
    assert second.session_id == 1 and second.status == "answered"
    assert [s.record.get("step") for s in second.steps if s.kind == "action"] == [1, 2, 3, 4]
    assert len(policy.tails[0]) == 4  # question, two steps, follow-up: the whole transcript
    assert "answer" in kinds(policy.schemas[0])  # spans shown before stay citable
    with SessionStore.open_log(indexed) as log:
        kinds_logged = [t["kind"] for t in log.turns(1)]
        assert log.last_session() == 1
    assert kinds_logged == ["question", "action", "action", "question", "action", "action"]
    with pytest.raises(Exception, match="is answered"):
        ask_session(make_agent(indexed, real_model), SessionLog(indexed, 5.0), None,
                    Scripted([]), settings, resume=True)


def test_the_transcript_is_gisted_once_it_outgrows_its_share(indexed: Path,
                                                             real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model, budget=640, tail_share=0.3, max_steps=8)
    agent.add_question("What does top_level return?")
    reads = [{"tool": "read", "path": "pkg/sample.py", "start": a, "end": a + 9}
             for a in (1, 5, 9, 13, 17, 21)]
    steps = []
    policy = Scripted([*reads, {"tool": "answer", "text": "x", "citations": []}])
    run(agent, policy, steps.append)
    tails = [s.record["telemetry"]["tail"] for s in steps]
    assert tails[0]["gisted_turns"] == 0 and tails[0]["raw_turns"] == 1
    assert tails[-1]["gisted_turns"] > 0 and tails[-1]["gists"].get(1, 0) > 0
    # The share holds once older turns are gisted; the context never passes the budget.
    assert all(t["positions"] <= int(640 * 0.3) for t in tails[2:])
    assert max(policy.lengths) <= 640
    assert agent.tail.raw_cost() > int(640 * 0.3)  # what it would cost held raw


def test_the_default_model_writes_a_valid_action_under_the_schema(indexed: Path,
                                                                  real_model: BaseModel) -> None:
    agent = make_agent(indexed, real_model, budget=384)
    agent.add_question("What does top_level return?")
    agent.refocus(1)
    text = model_policy(96)(agent.wc, agent.schema(final=False))
    action = parse_action(text)  # raises if it is not one
    assert action["tool"] in {"search", "read", "list"}
