"""Model adapter on the real default model (converted once into the user cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megacontext.adapter import BaseModel, ModelConfig, load_base_model
from megacontext.errors import ModelNotFound

pytestmark = pytest.mark.model


def test_default_model_identity_and_tables(real_model: BaseModel) -> None:
    assert real_model.id.startswith("SmolLM2-135M-Instruct-Q4_1@")
    assert tuple(real_model.embeddings.shape) == (49152, 576)
    assert 1.0 < real_model.token_norm < 10.0


def test_special_token_text_stays_text(real_model: BaseModel) -> None:
    enc = real_model.encode(["say <|im_start|> and <|endoftext|>"])[0]
    assert 1 not in enc.ids and 0 not in enc.ids, "file text never becomes control tokens"
    assert real_model.tokenizer.decode(enc.ids.tolist()) == "say <|im_start|> and <|endoftext|>"
    assert enc.offsets.shape == (len(enc.ids), 2)


def test_embeddings_are_the_models_input_embeddings(real_model: BaseModel) -> None:
    lm = real_model.causal_lm()
    torch.testing.assert_close(lm.get_input_embeddings().weight, real_model.embeddings)


def test_cached_load_is_the_same_model(real_model: BaseModel) -> None:
    again = load_base_model(ModelConfig(cache_dir=real_model._folder.parent.parent))
    assert again.id == real_model.id


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        load_base_model(ModelConfig(name=str(tmp_path / "no-such-model"), cache_dir=tmp_path))


def test_the_gguf_conversion_bar_is_quiet_only_while_converting() -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from megacontext.adapter import _quiet_gguf_bar

    bar = gguf_utils.tqdm
    with _quiet_gguf_bar():
        assert gguf_utils.tqdm([1, 2]).disable
    assert gguf_utils.tqdm is bar  # restored after the conversion
