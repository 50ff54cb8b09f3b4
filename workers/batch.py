"""A batch is a value: prepared rows, grouped into shape-compatible groups, collated into tensors.

Each row is processed on its own (so a bad row fails alone and is truncated on its own), then
rows are left-padded into one tensor batch. Sequence-aligned tensors (input ids, masks, token
types) are padded; per-image tensors (pixel values, grid sizes) are concatenated along the first
dimension, which is how every HF VLM family batches them. Rows whose per-image tensors have
different trailing shapes cannot share a tensor, so they go to separate groups (generate calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from shared.contract import JobPayload
from workers.sampling import RowPlan


@dataclass
class PreparedRow:
    job: JobPayload
    input_ids: torch.Tensor  # 1-D, after truncation
    plan: RowPlan
    seq_extras: dict[str, torch.Tensor] = field(default_factory=dict)  # [tokens, ...], aligned with input_ids
    image_extras: dict[str, torch.Tensor] = field(default_factory=dict)  # first dim = images/patches
    truncated_tokens: int = 0
    pixels: int = 0  # of the decoded images, for the batch pixel budget
    # Rows join a group only with rows of the same layout: a model whose image inputs have one
    # entry per batch row (Mllama) cannot batch a row with images and one without.
    layout: str = ""
    # Per-image tensors that may be zero-padded to the group's largest (see PADDED_PIXELS).
    paddable: tuple[str, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def signature(self) -> dict[str, tuple[int, ...]]:
        """Trailing shapes that must match to concatenate; a paddable tensor needs only its rank."""
        return {k: (v.dim(),) if k in self.paddable else tuple(v.shape[1:]) for k, v in self.image_extras.items()}


def group_compatible(rows: Sequence[PreparedRow]) -> list[list[PreparedRow]]:
    """Split rows into groups whose per-image tensors can be concatenated."""
    groups: list[tuple[dict[str, tuple[int, ...]], list[PreparedRow]]] = []
    for row in rows:
        sig = row.signature()
        for group_sig, members in groups:
            if members[0].layout != row.layout:
                continue
            if all(group_sig.get(k, shape) == shape for k, shape in sig.items()):
                group_sig.update(sig)
                members.append(row)
                break
        else:
            groups.append((dict(sig), [row]))
    return [members for _, members in groups]


# Below this share of real (not padding) prompt tokens, a group is split by length: the padded
# positions cost prefill compute and KV-cache memory for every row of the batch.
MIN_FILL = 0.3


def _fits(rows: Sequence[PreparedRow], max_tokens: int, max_pixels: int, min_fill: float) -> bool:
    width = max(r.prompt_tokens for r in rows)
    longest = max(r.plan.max_new_tokens for r in rows)
    if max_tokens and len(rows) > 1 and len(rows) * (width + longest) > max_tokens:
        return False
    if max_pixels and len(rows) > 1 and sum(r.pixels for r in rows) > max_pixels:
        return False
    return sum(r.prompt_tokens for r in rows) >= min_fill * len(rows) * width


def plan_groups(
    rows: Sequence[PreparedRow], max_tokens: int = 0, max_pixels: int = 0, min_fill: float = MIN_FILL
) -> list[list[PreparedRow]]:
    """Generate calls for these rows: shape-compatible, within the token budget (rows x (prompt +
    new tokens), the KV-cache size) and pixel budget, and of similar prompt lengths. Every row's
    output is the same whichever group it lands in."""
    planned: list[list[PreparedRow]] = []
    for group in group_compatible(rows):
        current: list[PreparedRow] = []
        for row in sorted(group, key=lambda r: r.prompt_tokens):
            if current and not _fits([*current, row], max_tokens, max_pixels, min_fill):
                planned.append(current)
                current = []
            current.append(row)
        if current:
            planned.append(current)
    return planned


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad tensors of one rank to their largest trailing shape, at the end of each dimension
    (as the family's own processor pads a batch: more tiles, taller, wider)."""
    shape = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors), strict=True)]
    out = []
    for tensor in tensors:
        if list(tensor.shape[1:]) == shape:
            out.append(tensor)
            continue
        padded = tensor.new_zeros((tensor.shape[0], *shape))
        padded[(slice(None), *(slice(0, n) for n in tensor.shape[1:]))] = tensor
        out.append(padded)
    return out


def _sequence_tensors(rows: Sequence[PreparedRow], width: int) -> dict[str, torch.Tensor]:
    """Zeros for each per-token input: [rows, width, largest trailing shape]."""
    out: dict[str, torch.Tensor] = {}
    for key in sorted({k for r in rows for k in r.seq_extras}):
        tensors = [r.seq_extras[key] for r in rows if key in r.seq_extras]
        trailing = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors), strict=True)]
        out[key] = torch.zeros((len(rows), width, *trailing), dtype=tensors[0].dtype)
    return out


@dataclass
class CollatedBatch:
    inputs: dict[str, torch.Tensor]
    prompt_width: int
    pad_lengths: list[int]


def collate(rows: Sequence[PreparedRow], pad_id: int, device: torch.device, float_dtype: torch.dtype) -> CollatedBatch:
    """Left-pad sequence tensors and concatenate image tensors of one compatible group."""
    width = max(r.prompt_tokens for r in rows)
    pads = [width - r.prompt_tokens for r in rows]
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    seq_tensors = _sequence_tensors(rows, width)
    for i, (row, pad) in enumerate(zip(rows, pads, strict=True)):
        input_ids[i, pad:] = row.input_ids
        attention[i, pad:] = 1
        for key, tensor in row.seq_extras.items():
            # Left-padded along the tokens; zero-padded at the end of any further dimension.
            index: tuple[int | slice, ...] = (i, slice(pad, None), *(slice(0, n) for n in tensor.shape[1:]))
            seq_tensors[key][index] = tensor
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention, **seq_tensors}
    image_keys = sorted({k for r in rows for k in r.image_extras})
    for key in image_keys:
        inputs[key] = torch.cat(_padded([r.image_extras[key] for r in rows if key in r.image_extras]), dim=0)
    moved = {
        k: v.to(device, dtype=float_dtype if v.is_floating_point() else v.dtype, non_blocking=True)
        for k, v in inputs.items()
    }
    return CollatedBatch(moved, width, pads)
