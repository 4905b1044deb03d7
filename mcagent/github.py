"""Post a code review to a GitHub pull request: inline comments plus one sticky summary.

The review bot turns its findings into GitHub objects through four REST endpoints (list,
create and edit issue comments; create a pull request review). The choices, and why:

* **One sticky summary.** The summary is an issue comment that begins with the hidden
  `MARKER`. Every run looks for it across every page of comments and edits it, so a pull
  request pushed to twenty times carries one summary, not twenty.
* **Inline only on diff lines.** GitHub accepts review comments only on lines inside the pull
  request's diff hunks. `Commentable` holds those head-side lines per path; a finding anywhere
  else is listed in the summary instead.
* **422 fallback.** Should GitHub still refuse the review (422: a line it does not count as
  part of the diff, a head that moved meanwhile), the review is not retried: its comments go
  into the summary, so no finding is lost and the job does not fail.
* **Untrusted content is sanitised.** Findings come from a model that read the pull request,
  which anyone may write; an injected instruction can make it echo secrets. Every body sent
  passes through `sanitize` with the token and the values the CLI collected from the process
  environment (library code never reads `os.environ`). Error messages never hold the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import httpx

MARKER = "<!-- mcagent-review -->"  # hidden in the rendered comment; finds the summary again
REDACTED = "[redacted]"
MIN_SECRET = 6  # shorter values ("1", "true", "/root") are too common to be worth redacting
MAX_BODY = 65_000  # GitHub refuses comment bodies over 65,536 characters
PER_PAGE = 100  # the most comments GitHub returns per page
SEVERITIES = ("info", "warning", "error")
REPOSITORY = re.compile(r"[\w.-]+/[\w.-]+")
OUTSIDE_DIFF = "Findings outside the diff:"
FELL_BACK = "GitHub refused the inline comments (422), so every finding is listed here:"
HINTS = {  # HTTP status -> what the user can do about it
    401: "check GITHUB_TOKEN",
    403: "check the token's permissions (pull-requests: write, issues: write) and the rate limit",
    404: "check the repository, the pull request number and that the token can see them",
    422: "GitHub refused the content; review comments must sit on lines of the diff",
}

# For each path, the head-side line numbers inside the pull request's diff hunks.
Commentable = dict[str, set[int]]


class GitHubError(Exception):
    """A GitHub request failed; the message says what to do next and never holds the token."""


class Unprocessable(GitHubError):
    """GitHub answered 422: it understood the request but refused its content."""


@dataclass(frozen=True, kw_only=True)
class GitHubConfig:
    """Where the pull request lives and how to reach it; built once by the CLI."""

    api_url: str = "https://api.github.com"  # REST root; GitHub Enterprise: https://HOST/api/v3
    repository: str  # "owner/name", as in GITHUB_REPOSITORY
    token: str = field(repr=False)  # GITHUB_TOKEN; kept out of repr, messages and bodies
    timeout: float = 30.0  # seconds one HTTP request may take

    def __post_init__(self) -> None:
        if not REPOSITORY.fullmatch(self.repository):
            raise GitHubError(f"repository {self.repository!r} is not owner/name: "
                              "check GITHUB_REPOSITORY")
        if not self.token:
            raise GitHubError("no GitHub token: set GITHUB_TOKEN")


@dataclass(frozen=True)
class Finding:
    """One problem the reviewer found, anchored to a line of the head version of a file."""

    path: str  # repository-relative
    line: int  # 1-based line in the new (head) version of the file
    severity: str  # "info" | "warning" | "error"
    message: str
    suggestion: str | None = None  # replacement text for that line, shown as a suggestion

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES or self.line < 1:
            raise ValueError(f"bad finding {self.path}:{self.line} ({self.severity!r})")


@dataclass(frozen=True)
class IssueComment:
    id: int
    body: str


@dataclass(frozen=True)
class ReviewComment:
    """An inline comment of a review, on the head side of the diff."""

    path: str
    line: int
    body: str

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "side": "RIGHT", "body": self.body}


@dataclass(frozen=True)
class PostReport:
    """What `post_review` did."""

    summary_comment_id: int
    summary_created: bool  # False: an existing summary comment was edited
    inline: int  # findings posted as inline review comments
    in_summary: int  # findings listed in the summary instead
    fell_back: bool  # GitHub refused the review (422), so its comments went into the summary


class GitHubClient:
    """The four REST endpoints the review bot uses, over one `httpx.Client`."""

    def __init__(self, config: GitHubConfig) -> None:
        self.config = config
        self._repo = f"/repos/{config.repository}"
        self._http = httpx.Client(base_url=config.api_url, timeout=config.timeout, headers={
            "Authorization": f"Bearer {config.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        })

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def issue_comments(self, pr: int) -> list[IssueComment]:
        """Every issue comment of pull request `pr`, oldest first, across all pages."""
        comments: list[IssueComment] = []
        url: str | None = f"{self._repo}/issues/{pr}/comments"
        params: dict[str, int] | None = {"per_page": PER_PAGE}
        while url is not None:
            response = self._request("GET", url, params=params)
            comments += [_issue_comment(item) for item in response.json()]
            url, params = self._next_page(response), None  # the next link carries the query
        return comments

    def create_issue_comment(self, pr: int, body: str) -> IssueComment:
        response = self._request("POST", f"{self._repo}/issues/{pr}/comments", {"body": body})
        return _issue_comment(response.json())

    def edit_issue_comment(self, comment_id: int, body: str) -> IssueComment:
        url = f"{self._repo}/issues/comments/{comment_id}"
        return _issue_comment(self._request("PATCH", url, {"body": body}).json())

    def create_review(self, pr: int, commit_id: str, body: str,
                      comments: list[ReviewComment]) -> int:
        """Create a COMMENT review on `commit_id`; its id. 422 raises `Unprocessable`."""
        payload = {"commit_id": commit_id, "event": "COMMENT", "body": body,
                   "comments": [comment.as_json() for comment in comments]}
        return int(self._request("POST", f"{self._repo}/pulls/{pr}/reviews", payload).json()["id"])

    def _next_page(self, response: httpx.Response) -> str | None:
        """The `Link: rel="next"` URL, refused when it leaves the API (the token would follow)."""
        url = response.links.get("next", {}).get("url")
        if url is not None and not url.startswith(self.config.api_url.rstrip("/") + "/"):
            raise GitHubError(f"GitHub's next-page link leaves {self.config.api_url}: "
                              "check the API URL")
        return url

    def _request(self, method: str, url: str, payload: dict[str, Any] | None = None,
                 params: dict[str, int] | None = None) -> httpx.Response:
        """Send one request; a transport failure or a non-2xx answer raises `GitHubError`."""
        try:
            response = self._http.request(method, url, json=payload, params=params)
        except httpx.HTTPError as exc:
            message = (f"could not reach GitHub at {self.config.api_url} ({type(exc).__name__}):"
                       " check the network and the API URL")
            raise GitHubError(sanitize(message, [self.config.token])) from exc
        if not response.is_success:
            raise _status_error(response, self.config.token)
        return response


def _issue_comment(item: dict[str, Any]) -> IssueComment:
    return IssueComment(id=int(item["id"]), body=item.get("body") or "")


def _status_error(response: httpx.Response, token: str) -> GitHubError:
    """The error for a non-2xx answer: the request, GitHub's own words, what to do next."""
    status = response.status_code
    said = _github_message(response)
    hint = HINTS.get(status, "retry later" if status >= 500 else "see GitHub's message")
    text = (f"GitHub API answered {status} for {response.request.method} "
            f"{response.request.url.path}{said}: {hint}")
    error = Unprocessable if status == 422 else GitHubError
    return error(sanitize(text, [token]))


def _github_message(response: httpx.Response) -> str:
    """GitHub's `message` field as ` (one line)`, or "" when the answer has none."""
    try:
        data = response.json()
    except ValueError:
        return ""
    message = data.get("message") if isinstance(data, dict) else None
    return f" ({' '.join(str(message).split())[:200]})" if message else ""


def sanitize(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each secret (6+ characters) replaced by `[redacted]`.

    Occurrences are marked first and each run of marked characters replaced once, so
    overlapping secrets leave no fragment behind. Each line of a multi-line secret (a key
    file) counts as a secret too, since a model may quote one line of it.
    """
    needles = {part for s in secrets for part in (s, *s.splitlines()) if len(part) >= MIN_SECRET}
    hidden = [False] * len(text)
    for needle in needles:
        start = text.find(needle)
        while start != -1:
            hidden[start:start + len(needle)] = [True] * len(needle)
            start = text.find(needle, start + 1)
    runs = groupby(zip(text, hidden, strict=True), key=lambda pair: pair[1])
    return "".join(REDACTED if masked else "".join(ch for ch, _ in run) for masked, run in runs)


def post_review(client: GitHubClient, pr: int, head_sha: str, findings: list[Finding],
                summary: str, commentable: Commentable, secrets: list[str]) -> PostReport:
    """Post `findings` on pull request `pr`: one review on diff lines, then the sticky summary."""
    secrets = [client.config.token, *secrets]
    inline = [f for f in findings if f.line in commentable.get(f.path, set())]
    fell_back = _post_inline(client, pr, head_sha, inline, secrets)
    leftover = findings if fell_back else [f for f in findings if f not in inline]
    body = summary_body(summary, leftover, fell_back, secrets)
    comment_id, created = upsert_summary(client, pr, body)
    return PostReport(summary_comment_id=comment_id, summary_created=created,
                      inline=len(findings) - len(leftover), in_summary=len(leftover),
                      fell_back=fell_back)


def _post_inline(client: GitHubClient, pr: int, head_sha: str, inline: list[Finding],
                 secrets: list[str]) -> bool:
    """Create one review holding `inline` (none when empty); True when GitHub refused it."""
    if not inline:
        return False
    comments = [ReviewComment(f.path, f.line, _clean(inline_body(f), secrets)) for f in inline]
    body = _clean(f"mcagent left {len(comments)} comment(s) on changed lines; "
                  "the summary comment lists everything else.", secrets)
    try:
        client.create_review(pr, head_sha, body, comments)
    except Unprocessable:
        return True  # the caller lists these findings in the summary and reports fell_back
    return False


def inline_body(finding: Finding) -> str:
    """`**severity**: message`, plus a suggestion block when the finding has a replacement."""
    body = f"**{finding.severity}**: {finding.message}"
    if finding.suggestion is None:
        return body
    # A fence longer than any backtick run inside, so a suggestion holding ``` stays whole.
    runs = [len(run) for run in re.findall(r"`+", finding.suggestion)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return "\n".join([body, "", f"{fence}suggestion", *finding.suggestion.splitlines(), fence])


def summary_body(summary: str, leftover: list[Finding], fell_back: bool,
                 secrets: list[str]) -> str:
    """The sticky comment: MARKER, the summary, then each finding not posted inline."""
    lines = [summary.rstrip()]
    if leftover:
        lines += ["", FELL_BACK if fell_back else OUTSIDE_DIFF, ""]
        lines += [f"- {f.path}:{f.line} **{f.severity}**: {' '.join(f.message.split())}"
                  for f in leftover]
    # The marker is ours, not untrusted, and stays whole even when a secret happens to
    # contain "mcagent-review": a broken marker would mean a second summary next run.
    return MARKER + "\n" + _clean("\n".join(lines), secrets)


def upsert_summary(client: GitHubClient, pr: int, body: str) -> tuple[int, bool]:
    """Edit the comment holding MARKER, or create one when there is none: (id, created)."""
    existing = next((c for c in client.issue_comments(pr) if MARKER in c.body), None)
    if existing is not None:
        return client.edit_issue_comment(existing.id, body).id, False
    return client.create_issue_comment(pr, body).id, True


def _clean(text: str, secrets: list[str]) -> str:
    """Sanitised, then cut to GitHub's size limit (in that order, so no secret is cut short)."""
    text = sanitize(text, secrets)
    return text if len(text) <= MAX_BODY else text[:MAX_BODY] + "\n\n(truncated)"
