"""The matrix can fail: engine input handling broken on purpose makes a family's case fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from PIL import Image

import workers.engine
from shared.contract import JobPayload
from tests.models.test_family_matrix import check_batched_matches_alone, check_matches_transformers
from workers.batch import CollatedBatch, PreparedRow, collate
from workers.engine import Engine, Tools
from workers.tiny_models.families import FAMILIES

BROKEN = (AssertionError, RuntimeError, ValueError)  # a wrong answer or a crash: either fails the case


@pytest.mark.parametrize("family", ["qwen2_5_vl", "glm4v"])
def test_a_transposed_image_grid_is_caught(family: str, family_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """(t, h, w) read as (t, w, h): the same patch count, so nothing crashes, but the vision
    tower's positions and the M-RoPE ids of the image tokens are wrong."""
    prepare = Engine.prepare

    def transposed(self: Engine, job: JobPayload, images: Sequence[Image.Image], tools: Tools | None = None) -> Any:
        row = prepare(self, job, images, tools)
        if "image_grid_thw" in row.image_extras:
            row.image_extras["image_grid_thw"] = row.image_extras["image_grid_thw"][:, [0, 2, 1]]
        return row

    check_matches_transformers(family_engine, FAMILIES[family])  # passes as built
    monkeypatch.setattr(Engine, "prepare", transposed)
    with pytest.raises(BROKEN):
        check_matches_transformers(family_engine, FAMILIES[family])


@pytest.mark.parametrize("family", ["gemma3", "qwen3_vl"])
def test_token_types_padded_on_the_wrong_side_are_caught(
    family: str, family_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token-type ids (Gemma 3's bidirectional image attention, Qwen's M-RoPE image spans) padded
    on the right while the tokens are padded on the left: only batched rows go wrong."""

    def misaligned(rows: Sequence[PreparedRow], pad_id: int, device: torch.device, dtype: torch.dtype) -> CollatedBatch:
        batch = collate(rows, pad_id, device, dtype)
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in batch.inputs:
                for i, pad in enumerate(batch.pad_lengths):
                    batch.inputs[key][i] = torch.roll(batch.inputs[key][i], -pad)
        return batch

    monkeypatch.setattr(workers.engine, "collate", misaligned)
    with pytest.raises(BROKEN):
        check_batched_matches_alone(family_engine, FAMILIES[family])
