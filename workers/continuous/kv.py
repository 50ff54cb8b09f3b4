"""Merge and slice transformers' dynamic KV caches along the batch, TGI-style.

Every row of a running batch is right-aligned: its cached tokens end at the last column and
left padding (masked out) fills the rest. `merge` left-pads the shorter batch's layers and stacks
rows; `select` keeps some rows and drops leading columns that only padding uses (compaction).
Full-attention layers hold every column; sliding-window layers hold the last min(columns,
window - 1) and count columns in `cumulative_length`, which sizes their attention mask. Because
padding is only ever on the left, a row's real tokens stay contiguous, so a window measured in
columns is the same window of real tokens the row would have alone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

_SUPPORTED = (DynamicLayer, DynamicSlidingWindowLayer)


class UnsupportedCache(TypeError):
    """The model's cache has layers (linear attention, quantised, static) that cannot be merged."""


def check_supported(cache: Any) -> None:
    for layer in cache.layers:
        if type(layer) not in _SUPPORTED:
            raise UnsupportedCache(f"continuous batching cannot merge {type(layer).__name__} cache layers")


def _stack_right_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a`'s rows then `b`'s in one new tensor, each right-aligned and zero on its left: one
    allocation and one copy of each (padding then concatenating would copy the padded one twice)."""
    width = max(a.shape[-2], b.shape[-2])
    out = a.new_empty((a.shape[0] + b.shape[0], *a.shape[1:-2], width, a.shape[-1]))
    for rows, part in ((slice(0, a.shape[0]), a), (slice(a.shape[0], None), b)):
        start = width - part.shape[-2]
        if start:
            out[rows, ..., :start, :].zero_()
        out[rows, ..., start:, :].copy_(part)
    return out


def merge(first: Any, second: Any, columns: int) -> Any:
    """`first`'s rows then `second`'s, right-aligned; `columns` is the merged batch's width.
    Consumes both: `first` is updated in place and returned."""
    for a, b in zip(first.layers, second.layers, strict=True):
        if not (a.is_initialized and b.is_initialized):
            continue  # a layer that shares another's KV (no tensors of its own)
        a.keys = _stack_right_aligned(a.keys, b.keys)
        a.values = _stack_right_aligned(a.values, b.values)
        if isinstance(a, DynamicSlidingWindowLayer):
            a.cumulative_length = columns
    return first


def select(cache: Any, rows: torch.Tensor, columns: int) -> Any:
    """Keep `rows` (indices) and only the last `columns` columns; in place, returns `cache`."""
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        start = max(0, layer.keys.shape[-2] - columns)
        layer.keys = layer.keys[rows, :, start:].contiguous()
        layer.values = layer.values[rows, :, start:].contiguous()
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = columns
    return cache


def columns_of(cache: Any) -> int:
    """Width of the cache in columns (the longest full layer; a sliding layer's count)."""
    widths = [
        layer.cumulative_length if isinstance(layer, DynamicSlidingWindowLayer) else layer.keys.shape[-2]
        for layer in cache.layers
        if layer.is_initialized
    ]
    return max(widths, default=0)


Snapshot = list[tuple[Any, dict[str, Any]]]


def snapshot(cache: Any) -> Snapshot:
    """What a forward may change in `cache`, for `restore`. A forward only rebinds each layer's
    tensors (`torch.cat` makes new ones) and a sliding layer's column count, never writes into
    the tensors, so each layer's attributes (references, no copies) are the whole state."""
    return [(layer, dict(vars(layer))) for layer in cache.layers]


def restore(saved: Snapshot) -> None:
    """The cache as it was at `snapshot`: a forward that raised halfway leaves no column behind."""
    for layer, attributes in saved:
        layer.__dict__.clear()
        layer.__dict__.update(attributes)


def copy_rows(cache: Any, rows: torch.Tensor, columns: int) -> Any:
    """A new cache of `rows` and the last `columns` columns; `cache` is left as it is."""
    copied = copy.copy(cache)
    copied.layers = [copy.copy(layer) for layer in cache.layers]
    return select(copied, rows, columns)
