"""M-RoPE (the Qwen2.5-VL family): each row continues from its own prefill's rope offset.

A tiny Qwen2_5_VLForConditionalGeneration from a config (random weights, the demo tokenizer);
rows are built by hand (image placeholders, per-image patch grids, mm_token_type_ids), as its
processor would make them. Images of different grids give different rope deltas, so a row that
continued from the wrong offset would drift from the static engine's text.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.contract import JobPayload, SamplingParams
from shared.fleet import ModelCard
from tests.workers.conftest import engine_settings
from tests.workers.continuous.conftest import drive
from tests.workers.test_engine import essence
from workers.batch import PreparedRow
from workers.engine import Engine
from workers.loader import LoadedModel

PATCH, MERGE, TEMPORAL = 4, 2, 2
_ids = itertools.count()


def _model(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "initializer_range": 0.3,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "window_size": 16,
            "fullatt_block_indexes": [1],
        },
        image_token_id=image_id,
        video_token_id=tokenizer.unk_token_id,
        vision_start_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(2)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def mrope_engine(demo_model_dir: Path) -> Engine:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = _model(tokenizer)
    settings = engine_settings(demo_model_dir, MAX_INPUT_TOKENS="256")
    card = ModelCard(path=None, demo=False, dtype="torch.float32", attn="sdpa", chat_template="")
    loaded = LoadedModel(
        tokenizer,
        tokenizer,
        model,
        torch.device("cpu"),
        torch.float32,
        "sdpa",
        True,
        model.config.image_token_id,
        [tokenizer.eos_token_id],
        tokenizer.pad_token_id,
        card,
    )
    return Engine(loaded, settings)


def row(engine: Engine, text: str, grids: list[tuple[int, int]], **params: Any) -> PreparedRow:
    """`text`, then one image placeholder run per (h, w) patch grid, then the answer prompt."""
    tok = engine.m.tokenizer
    image_id = engine.m.image_token_id
    ids: list[int] = tok(text, add_special_tokens=True)["input_ids"]
    for h, w in grids:  # each image run opens with a text token, as vision_start does
        ids += [engine.m.model.config.vision_start_token_id] + [image_id] * (h * w // MERGE**2)
    ids += tok(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor(ids)
    params.setdefault("max_new_tokens", 16)
    job = JobPayload(
        id=f"q{next(_ids)}", prompt=text, kind="generate", params=SamplingParams(**params), created_at=time.time()
    )
    plan = engine._plan(job, len(ids))
    image_extras: dict[str, torch.Tensor] = {}
    if grids:
        generator = torch.Generator().manual_seed(len(ids))
        patches = sum(h * w for h, w in grids)
        image_extras = {
            "pixel_values": torch.randn(patches, 3 * TEMPORAL * PATCH * PATCH, generator=generator),
            "image_grid_thw": torch.tensor([[1, h, w] for h, w in grids]),
        }
    types = {"mm_token_type_ids": (input_ids == image_id).long()}
    return PreparedRow(job, input_ids, plan, types, image_extras, pixels=sum(h * w for h, w in grids))


def rows(engine: Engine) -> list[PreparedRow]:
    return [
        row(engine, "a long caption of a tall image", [(8, 4)], max_new_tokens=30, min_new_tokens=30),
        row(engine, "wide", [(4, 12)], do_sample=True, seed=21, top_p=0.9, max_new_tokens=20),
        row(engine, "two images", [(4, 4), (8, 8)], do_sample=True, seed=5, max_new_tokens=18),
        row(engine, "only text on a vision model", [], max_new_tokens=12),
    ]


@pytest.mark.parametrize("k", [0, 4, 9])
def test_mrope_rows_joined_mid_flight_match_the_static_engine(mrope_engine: Engine, k: int) -> None:
    expected = essence([mrope_engine.generate([r])[0] for r in rows(mrope_engine)])
    first, *rest = rows(mrope_engine)
    run = drive(mrope_engine, {0: [first], k: rest} if k else {0: [first, *rest]})
    assert max(run.running) == 4
    assert essence([run.outputs[r.job.id] for r in [first, *rest]]) == expected


def test_rope_deltas_differ_between_the_rows(mrope_engine: Engine) -> None:
    # Guard for the test above: the rows really have different rope offsets.
    from workers.batch import collate
    from workers.continuous.positions import prefill_positions

    m = mrope_engine.m
    batch = collate(rows(mrope_engine), m.pad_id, m.device, m.dtype)
    positions = prefill_positions(m.model, batch.inputs)
    lengths = batch.inputs["attention_mask"].sum(-1)
    assert len(set((positions.next_positions - lengths).tolist())) >= 3
