"""The code stays ruff clean (the suite enforces it, so CI does too)."""

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra")
def test_ruff_clean() -> None:
    root = Path(__file__).parent.parent
    result = subprocess.run(["ruff", "check", "."], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
