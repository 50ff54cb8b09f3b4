"""Fixtures for the continuous engine: a tiny text-only causal LM beside the demo LLaVA, and a
driver that runs a ContinuousEngine step by step with rows arriving at chosen steps."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.workers.conftest import engine_settings
from workers.batch import PreparedRow
from workers.continuous.scheduler import ContinuousEngine, Limits
from workers.engine import Engine, RowOutput
from workers.loader import load_model


def _text_config(family: str, tokenizer: Any) -> Any:
    from transformers import Gemma3TextConfig, LlamaConfig

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": 0.3,  # peaked logits, as the demo model's: stable greedy and seeded text
    }
    if family == "gemma3":
        # A window far shorter than the prompts, so the sliding layers really drop columns.
        layers = ["sliding_attention", "full_attention", "sliding_attention"]
        return Gemma3TextConfig(num_hidden_layers=3, layer_types=layers, sliding_window=6, head_dim=16, **common)
    return LlamaConfig(num_hidden_layers=2, **common)


def build_text_model(demo_model_dir: Path, out_dir: Path, family: str = "llama") -> Path:
    """A tiny random text-only causal LM (Llama, or Gemma 3 with sliding-window layers) that
    shares the demo model's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(_text_config(family, tokenizer)).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # The demo tokenizer remembers it belonged to a LLaVA processor; this folder has none.
    config_file = out_dir / "tokenizer_config.json"
    saved = json.loads(config_file.read_text())
    saved.pop("processor_class", None)
    config_file.write_text(json.dumps(saved))
    return out_dir


def _text_engine(demo_model_dir: Path, folder: Path, family: str) -> Engine:
    build_text_model(demo_model_dir, folder, family)
    settings = engine_settings(folder, MAX_INPUT_TOKENS="256")
    return Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)


@pytest.fixture(scope="session")
def text_engine(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return _text_engine(demo_model_dir, tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def sliding_engine(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return _text_engine(demo_model_dir, tmp_path_factory.mktemp("gemma3"), "gemma3")


@dataclass
class Drive:
    """What a driven run produced: outputs by job id, the step each row ended at, the order."""

    outputs: dict[str, RowOutput] = field(default_factory=dict)
    ended_at: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    kv_slots: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)


def drive(
    engine: Engine,
    arrivals: Mapping[int, Iterable[PreparedRow]],
    limits: Limits | None = None,
    before_step: Mapping[int, object] | None = None,
) -> Drive:
    """Run a ContinuousEngine; rows in arrivals[k] are submitted before scheduling step k."""
    seen = Drive()
    step = 0

    def done(row: PreparedRow, output: RowOutput) -> None:
        seen.outputs[row.job.id] = output
        seen.ended_at[row.job.id] = step
        seen.order.append(row.job.id)

    def failed(row: PreparedRow, exc: Exception) -> None:
        raise AssertionError(f"row {row.job.id} failed: {exc}") from exc

    ce = ContinuousEngine(engine, done, failed, limits)
    last = max(arrivals, default=0)
    while step <= last or not ce.idle:
        for row in arrivals.get(step, ()):
            ce.submit(row)
        action = (before_step or {}).get(step)
        if callable(action):
            action()
        ce.run_step()
        seen.kv_slots.append(ce.batch.kv_slots() if ce.batch else 0)
        seen.running.append(ce.running)
        step += 1
        assert step < 5000, "the engine never went idle"
    return seen
