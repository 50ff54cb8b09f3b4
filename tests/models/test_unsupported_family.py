"""A model folder of a type the worker cannot serve is a start-up error naming the type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.settings_sources import load_settings
from workers.loader import ModelLoadError, load_model
from workers.tiny_models.tokenizer import train_tokenizer


def test_an_encoder_decoder_folder_fails_start_up_naming_its_type(tmp_path: Path) -> None:
    from transformers import T5Config

    T5Config(vocab_size=256, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    train_tokenizer([], bos=None, eos="</s>", pad="<pad>").save_pretrained(tmp_path)
    settings = load_settings(environ={"MODEL_PATH": str(tmp_path)})
    with pytest.raises(ModelLoadError) as err:
        load_model(settings, torch.device("cpu"), lambda _: None)
    assert "'t5'" in str(err.value) and "not served" in str(err.value)
