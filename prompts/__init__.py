"""Prompts are data: Markdown templates shipped with the package, loaded by one function."""

from __future__ import annotations

import string
from importlib import resources


def names() -> list[str]:
    """Every prompt shipped with the package."""
    return sorted(p.name[:-3] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".md"))


def render(name: str, **variables: str) -> str:
    """The prompt `name` with its `$variables` filled in; a missing variable is an error."""
    text = resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    return string.Template(text).substitute(variables)


def variables(name: str) -> set[str]:
    """The `$variables` a prompt expects."""
    text = resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    return {m.group("named") or m.group("braced")
            for m in string.Template.pattern.finditer(text)
            if m.group("named") or m.group("braced")}
