"""`mcagent train gistnet --init`: how the CLI resolves the weights a run continues from (the
base model and the training itself replaced by stand-ins; the training path is tested in
tests/megacontext on a tiny model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import megacontext.train.gistnet as training
from mcagent import cli
from megacontext.gistnet import WEIGHTS_FOLDER, shipped_weights

runner = CliRunner()
SHIPPED_BASE = json.loads((WEIGHTS_FOLDER / "gistnet-SmolLM2-135M-Instruct-Q4_1.json")
                          .read_text())["base_model"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    """Stand-ins for the base model and the run: `.base` the base, `.configs` the
    TrainConfigs runs got."""
    configs: list = []
    base = SimpleNamespace(id=SHIPPED_BASE)

    def inputs(lib: object, model: object, device: str, dtype: str) -> tuple:
        return tmp_path, base

    def train(config: object, model: object, report: object, stop_after: object = None):
        configs.append(config)
        return SimpleNamespace(step=config.steps)

    monkeypatch.setattr(cli, "_training_inputs", inputs)
    monkeypatch.setattr(training, "train_gistnet", train)
    return SimpleNamespace(base=base, configs=configs)


def invoke(tmp_path: Path, *args: str):
    return runner.invoke(cli.app, ["train", "gistnet", "--out", str(tmp_path / "run"),
                                   "--steps", "3", *args])


def test_init_shipped_continues_the_weights_shipped_for_the_base(started: SimpleNamespace,
                                                                 tmp_path: Path) -> None:
    result = invoke(tmp_path, "--init", "shipped")
    assert result.exit_code == 0, result.output
    (config,) = started.configs
    assert config.init == shipped_weights(SHIPPED_BASE) and config.init.is_file()


def test_init_file_is_resolved_and_no_init_starts_fresh(started: SimpleNamespace, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke(tmp_path, "--init", "mine.safetensors").exit_code == 0
    assert invoke(tmp_path).exit_code == 0
    assert [c.init for c in started.configs] == [(tmp_path / "mine.safetensors").resolve(), None]


def test_init_shipped_without_weights_for_the_base_is_a_one_line_error(
        started: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(started.base, "id", "SomeOtherModel@0123")
    result = invoke(tmp_path, "--init", "shipped")
    assert result.exit_code == 1 and not started.configs
    assert result.output.strip().startswith("error: no GistNet weights ship for SomeOtherModel")
    assert "Traceback" not in result.output
