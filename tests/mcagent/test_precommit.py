"""The pre-commit hook end to end: `pre-commit try-repo` installs mcagent from this
repository into the hook's own environment and runs it on a fixture repository's staged
change (the hook's environment sees the installed packages, so nothing heavy downloads)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.model


@pytest.mark.skipif(shutil.which("pre-commit") is None, reason="pre-commit is not installed")
def test_pre_commit_try_repo_runs_the_hook(tmp_path: Path) -> None:
    repo = tmp_path / "work"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    git(repo, "add", "calc.py")
    env = {**os.environ, "VIRTUALENV_SYSTEM_SITE_PACKAGES": "1",
           "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    proc = subprocess.run(["pre-commit", "try-repo", str(ROOT), "mcagent-review"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "mcagent review" in out and "Passed" in out
    assert "mcagent reviewed 1 file(s), 1 hunk(s)" in out, out
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a - b\n", \
        "the hook never modifies files"
