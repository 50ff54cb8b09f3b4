"""Each row's own positions: its real tokens count from 0 whatever padding lies to its left.

Text models (LLaVA's Llama, Gemma, …) take (B, L) position ids. M-RoPE models (the Qwen2-VL
family) take 3-D (temporal, height, width) ids at prefill, from the model's own `get_rope_index`;
after the prompt every axis advances together from the row's text position plus its rope delta
(the offset its image grid left), which is why the delta is kept per row from its own prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PrefillPositions:
    position_ids: torch.Tensor  # (B, L), or (4, B, L) for M-RoPE: text ids then the three axes
    next_positions: torch.Tensor  # (B,) the position of each row's first generated token


def _rope_index(model: Any) -> Any:
    inner = getattr(model, "model", None)
    return getattr(inner, "get_rope_index", None)


def uses_mrope(model: Any) -> bool:
    return _rope_index(model) is not None


def prefill_positions(model: Any, inputs: dict[str, torch.Tensor]) -> PrefillPositions:
    mask = inputs["attention_mask"]
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    lengths = mask.long().sum(-1)
    rope_index = _rope_index(model)
    has_grid = "image_grid_thw" in inputs or "video_grid_thw" in inputs
    if rope_index is None or not has_grid or "mm_token_type_ids" not in inputs:
        # A text-only row of an M-RoPE model has all three axes equal to its text position,
        # which the model derives from 2-D ids itself; its rope delta is 0.
        return PrefillPositions(text, lengths)
    grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in inputs}
    axes, deltas = rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], attention_mask=mask, **grids
    )
    return PrefillPositions(torch.cat([text.unsqueeze(0), axes], dim=0), lengths + deltas.view(-1).to(lengths))


def decode_positions(next_positions: torch.Tensor, mrope: bool) -> torch.Tensor:
    """Position ids of one decoding step: (B, 1), or (3, B, 1) for M-RoPE."""
    ids = next_positions.unsqueeze(1)
    return ids.unsqueeze(0).expand(3, -1, -1) if mrope else ids
