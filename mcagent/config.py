"""Settings for one command, built once at the edge: CLI flags > `.mcagent.toml` >
`[tool.mcagent]` in pyproject.toml > defaults."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs

from megacontext.adapter import ModelConfig
from megacontext.indexer import IndexConfig

# setting name -> (type, help); the names a config file may use.
KNOWN = {
    "model": (str, "base model: a local Hugging Face folder or hub id (default: SmolLM2)"),
    "max_file_bytes": (int, "files larger than this are skipped"),
    "cache_dir": (str, "where converted models are cached"),
    "lock_wait": (float, "seconds to wait while another mcagent process holds the index"),
}
LOCK_WAIT = 60.0  # what commands wait for the index by default (a watcher's batch, an index)


class ConfigError(Exception):
    """A config file that cannot be used (the base error of `mcagent`)."""


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know, resolved."""

    root: Path  # the repository
    model: ModelConfig
    index: IndexConfig


def load_settings(root: Path, **flags: object) -> Settings:
    """Resolve settings for the repository at root; flags that are None do not override."""
    values: dict[str, object] = {}
    values.update(_from_file(root / "pyproject.toml", ("tool", "mcagent")))
    values.update(_from_file(root / ".mcagent.toml", ()))
    values.update({k: v for k, v in flags.items() if v is not None})
    cache_dir = Path(str(values.get("cache_dir") or platformdirs.user_cache_dir("mcagent")))
    model = ModelConfig(name=values.get("model"), cache_dir=cache_dir.expanduser())
    lock_wait = float(values.get("lock_wait", LOCK_WAIT))  # type: ignore[arg-type]
    index = IndexConfig(lock_wait=lock_wait)
    if "max_file_bytes" in values:
        index = replace(index, walk=replace(index.walk,
                                            max_file_bytes=int(values["max_file_bytes"])))
    return Settings(root=root, model=model, index=index)


def _from_file(path: Path, table: tuple[str, ...]) -> dict[str, object]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read {path}: {e}; fix or remove it") from None
    for key in table:
        data = data.get(key, {})
    for key, value in data.items():
        if key not in KNOWN:
            raise ConfigError(f"unknown setting {key!r} in {path}; known: {', '.join(KNOWN)}")
        kind = KNOWN[key][0]
        if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise ConfigError(f"setting {key!r} in {path} must be a {kind.__name__}")
    return dict(data)
