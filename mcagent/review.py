"""Review a change: its hunks become the tail, the repository is refocused onto them, and
the model reports findings (path, line, severity, message, optional replacement).

One pass: diff → focus (the scorer reads the changed lines, so the changed code and the
code it names come into full resolution) → assemble → findings decoded under a JSON schema
(each on a line the diff shows of a changed file; severities the three levels) → checks.
A finding on a line the diff shows may become an inline comment; one elsewhere in a
changed file (a policy not held to the schema) is kept for the summary; one past the end
of its file, one repeating an earlier finding's message, and one whose message only echoes
the prompt's own words (a small model's habit), are dropped with a note.

The change is untrusted input (a pull request's author wrote it): it reaches the model as
data between markers, the prompt says to treat it so, the tools behind a review are none,
and whatever leaves through `mcagent.github` is sanitised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.diff import FileDiff
from mcagent.github import SEVERITIES, Finding
from megacontext.ask import SLOT, AskSession
from megacontext.working_context import WorkingContext

USER_TEMPLATE = ("Repository {name} ({files} files; parts out of focus are compressed):\n"
                 "{slot}\n\nThe change to review:\n<<<change\n{change}\nchange>>>\n\n"
                 "Report the findings as one JSON object.")
Generate = Callable[[WorkingContext, dict], str]  # (context, schema) -> JSON text


@dataclass(frozen=True)
class ReviewConfig:
    budget: int = 2048  # positions the model sees: template + repository + change
    change_share: float = 0.4  # the change may take at most this share of the budget
    max_findings: int = 5
    max_tokens: int = 640  # longest findings object the model may write


@dataclass
class ReviewResult:
    files: list[FileDiff]
    findings: list[Finding]  # checked; on changed files
    inline: list[Finding]  # those on lines the diff shows (a pull request may comment there)
    dropped: list[str] = field(default_factory=list)  # findings refused, and why
    notes: list[str] = field(default_factory=list)  # e.g. the change was cut to fit
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}
        hunks = sum(len(f.hunks) for f in self.files)
        found = ", ".join(f"{n} {s}" for s, n in reversed(counts.items()) if n) or "no findings"
        return f"mcagent reviewed {len(self.files)} file(s), {hunks} hunk(s): {found}."

    def worst(self) -> str | None:
        levels = [SEVERITIES.index(f.severity) for f in self.findings]
        return SEVERITIES[max(levels)] if levels else None


def reviewable(files: list[FileDiff]) -> list[FileDiff]:
    """Files with text hunks on the head side (deleted and binary files have nothing to
    comment on)."""
    return [f for f in files if f.path and not f.binary and f.hunks]


def review(session: AskSession, files: list[FileDiff], system: str, generate: Generate,
           config: ReviewConfig = ReviewConfig()) -> ReviewResult:
    """Focus on the change, let the model report, check what it reported."""
    result = ReviewResult(reviewable(files), [], [])
    timings = result.timings
    change = _change_text(session, result, config)
    before, after = session.model.chat_ids(system, USER_TEMPLATE.format(
        name=session.name, files=len(session.repo.paths), slot=SLOT, change=change), SLOT)
    room = config.budget - len(before) - len(after)
    if room < 1:
        result.notes.append(f"--budget {config.budget} leaves no room for the repository")
        room = 1
    entries = session.focus(change, room, timings)
    wc = WorkingContext(session.model, before, after)
    wc.entries = session.entries(entries)
    t = time.perf_counter()
    text = generate(wc, findings_schema(result.files, config))
    timings["generate"] = time.perf_counter() - t
    result.tokens = {"context": wc.length, "budget": config.budget, "entries": len(entries)}
    _check(session, text, result, _said(system + "\n" + USER_TEMPLATE))
    return result


def findings_schema(files: list[FileDiff], config: ReviewConfig) -> dict:
    """What the model may write: at most `max_findings` findings, each on a line the diff
    shows of a changed file (one alternative per file, its lines enumerated)."""
    def finding(f: FileDiff) -> dict:
        return {
            "type": "object",
            "properties": {
                "path": {"const": f.path},
                "line": {"enum": sorted(f.commentable())},
                "severity": {"enum": list(SEVERITIES)},
                # Bounded, so a model that repeats itself still closes its JSON.
                "message": {"type": "string", "maxLength": 240},
                "suggestion": {"type": "string", "maxLength": 240},
            },
            "required": ["path", "line", "severity", "message"],
            "additionalProperties": False,
        }

    items = [finding(f) for f in files]
    return {"type": "object", "properties": {"findings": {
        "type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items},
        "maxItems": config.max_findings}},
        "required": ["findings"], "additionalProperties": False}


def _change_text(session: AskSession, result: ReviewResult, config: ReviewConfig) -> str:
    """The hunks, file by file, cut to the change's share of the budget."""
    limit = int(config.budget * config.change_share)
    parts, used = [], 0
    for f in result.files:
        for h in f.hunks:
            text = h.text()
            n = len(session.model.tokenizer.encode(text, add_special_tokens=False).ids)
            if used + n > limit:
                result.notes.append(f"the change is longer than {limit} tokens "
                                    f"({config.change_share:.0%} of the budget): later hunks "
                                    "were left out")
                return "\n".join(parts)
            parts.append(text)
            used += n
    return "\n".join(parts)


def _said(text: str) -> str:
    """Text as findings are compared: lower case, one space, no closing punctuation."""
    return " ".join(text.lower().split()).rstrip(" .:;!")


def _check(session: AskSession, text: str, result: ReviewResult, prompt: str) -> None:
    """Keep findings on real lines of changed files; note what was dropped (`prompt`: the
    instructions' own words, which a finding that only echoes them repeats)."""
    try:
        items = json.loads(text)["findings"]
    except (json.JSONDecodeError, KeyError, TypeError):
        result.dropped.append(f"the model's reply was not a findings object: {text[:200]!r}")
        return
    shown = {f.path: f.commentable() for f in result.files}
    lengths = _line_counts(session, set(shown))
    seen: set[str] = set()
    for item in items:
        path, line = item.get("path"), item.get("line")
        if path not in shown or not isinstance(line, int):
            result.dropped.append(f"{path}:{line}: not a line of a changed file")
            continue
        if line > lengths.get(path, 0):
            result.dropped.append(f"{path}:{line}: past the end of the file "
                                  f"({lengths.get(path, 0)} lines)")
            continue
        finding = Finding(path, line, item.get("severity", "info"),
                          str(item.get("message", "")).strip(), item.get("suggestion"))
        said = _said(finding.message)
        if not said or said in seen or said in prompt:
            result.dropped.append(f"{path}:{line}: " + (
                "says nothing" if not said else "repeats an earlier finding"
                if said in seen else "only echoes the prompt"))
            continue
        seen.add(said)
        result.findings.append(finding)
        if line in shown[path]:
            result.inline.append(finding)


def _line_counts(session: AskSession, paths: set[str]) -> dict[str, int]:
    """Lines of these files as indexed (the index is brought up to date before a review)."""
    repo = session.repo
    out: dict[str, int] = {}
    for fid, path in repo.paths.items():
        if path in paths:
            at = repo.file_id == fid
            out[path] = int(repo.line_end[at].max()) if at.any() else 0
    return out
