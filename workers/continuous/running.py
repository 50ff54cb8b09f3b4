"""The running decode batch as a value: `prefill` makes one, `concatenate` merges two, `filter`
keeps some rows, `step` decodes one token for every row.

Rows are right-aligned in one left-padded KV cache (transformers' `DynamicCache`, see `kv`); the
2-D attention mask masks each row's padding, and each row carries its own next position, so a
row computes exactly what it would alone however much padding it has. `filter` compacts: the
row select copies the cache anyway, so the leading columns no remaining row uses are dropped in
the same copy and padding never outgrows the longest live row.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workers.batch import PreparedRow, collate
from workers.continuous import kv
from workers.continuous.live import LiveRow, RowRules
from workers.continuous.positions import decode_positions, prefill_positions, uses_mrope
from workers.continuous.step_sampler import StepSampler
from workers.loader import LoadedModel


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return torch.nn.functional.pad(mask, (missing, 0)) if missing > 0 else mask


@functools.cache
def _keeps_logits(model_class: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def prepares_mask(model: Any, cache: Any) -> bool:
    """Whether a decoding step may hand the model its 4-D attention mask ready-made.

    For one query position, transformers' SDPA mask is exactly the 2-D padding mask as booleans
    of shape (B, 1, 1, columns) (causality masks nothing: every cached column is in the past),
    and a 4-D mask is used as given. Building it here skips transformers' per-step mask
    machinery (about a tenth of a demo-model step on CPU). Only where that equality is plain:
    SDPA attention, full-attention layers only (a sliding layer needs its own window mask),
    and no M-RoPE (whose text model derives more from the mask).
    """
    config = model.config.get_text_config()
    return (
        getattr(config, "_attn_implementation", None) == "sdpa"
        and getattr(config, "is_causal", True)
        and not uses_mrope(model)
        and all(type(layer) is DynamicLayer for layer in cache.layers)
    )


def _forward_kwargs(model: Any) -> dict[str, Any]:
    # Only the last position's logits are needed; generate asks for the same.
    return {"use_cache": True, **({"logits_to_keep": 1} if _keeps_logits(model.__class__) else {})}


@dataclass
class RunningBatch:
    rows: list[LiveRow]
    cache: Any  # transformers DynamicCache, one row per live row, right-aligned
    mask: torch.Tensor  # (B, columns) 1 where a row has a real token
    next_positions: torch.Tensor  # (B,) position of each row's next input token
    last_tokens: torch.Tensor  # (B,) the token each row feeds to the next step
    mrope: bool
    ready_mask: bool = False  # hand the model a 4-D mask (see `prepares_mask`)
    _padded: bool | None = field(default=None, repr=False)
    _sampler: StepSampler | None = field(default=None, repr=False)

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def kv_slots(self) -> int:
        """Token slots the cache holds now, padding included (rows x columns)."""
        return len(self.rows) * self.columns

    def sampler(self, rules: RowRules) -> StepSampler:
        if self._sampler is None:
            self._sampler = StepSampler(self.rows, sorted(rules.eos), self.mask.device)
        return self._sampler

    # --- joining and leaving -------------------------------------------------------------
    @classmethod
    def concatenate(cls, first: RunningBatch, second: RunningBatch) -> RunningBatch:
        """One batch of `first`'s rows then `second`'s; consumes both."""
        width = max(first.columns, second.columns)
        mask = torch.cat([_left_pad(first.mask, width), _left_pad(second.mask, width)], dim=0)
        return cls(
            rows=first.rows + second.rows,
            cache=kv.merge(first.cache, second.cache, width),
            mask=mask,
            next_positions=torch.cat([first.next_positions, second.next_positions]),
            last_tokens=torch.cat([first.last_tokens, second.last_tokens]),
            mrope=first.mrope or second.mrope,
            ready_mask=first.ready_mask and second.ready_mask,
        )

    def filter(self, keep: Sequence[int], consume: bool = True) -> RunningBatch | None:
        """The batch of the rows at `keep` (None if none), compacted; consumes this one unless
        `consume` is False (then the cache is copied: both batches stay usable)."""
        if not keep:
            return None
        index = torch.tensor(list(keep), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        first_used = int(used[0]) if used.numel() else mask.shape[1]
        columns = mask.shape[1] - first_used
        select = kv.select if consume else kv.copy_rows
        return RunningBatch(
            rows=[self.rows[i] for i in keep],
            cache=select(self.cache, index, columns),
            mask=mask[:, first_used:].contiguous(),
            next_positions=self.next_positions.index_select(0, index),
            last_tokens=self.last_tokens.index_select(0, index),
            mrope=self.mrope,
            ready_mask=self.ready_mask,
        )

    # --- decoding ------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, m: LoadedModel, rules: RowRules) -> None:
        """One forward for every row, one token each, appended by the row rules.

        All or nothing: if the forward or the sampler raises, the batch is left as it was before
        (cache, mask, positions; the sampler is rebuilt from the rows' tokens), so the step can
        be run again, or on part of the rows, with the outputs of an uninterrupted run."""
        assert not any(r.done for r in self.rows), "finished rows must be filtered out before a step"
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        saved = kv.snapshot(self.cache)
        try:
            out = m.model(
                input_ids=self.last_tokens.unsqueeze(1),
                attention_mask=self._step_mask(mask),
                position_ids=decode_positions(self.next_positions, self.mrope),
                cache=self.cache,
                **_forward_kwargs(m.model),
            )
            chosen = self.sampler(rules).choose(out.logits[:, -1, :])
        except BaseException:
            kv.restore(saved)
            self._sampler = None  # its step counts may have moved on: rebuilt from the rows' tokens
            raise
        self.mask = mask
        self.next_positions = self.next_positions + 1
        self._accept(chosen, rules)

    def _step_mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The mask of this step as the model gets it (the new column is never padding, so
        whether any row is padded only changes when rows join or leave)."""
        if not self.ready_mask:
            return mask
        if self._padded is None:
            self._padded = not bool(mask.all())
        # No padding: None is what transformers makes of an all-ones mask for one query.
        return mask[:, None, None, :].bool() if self._padded else None

    def _take(self, logits: torch.Tensor, rules: RowRules) -> None:
        self._accept(self.sampler(rules).choose(logits), rules)

    def _accept(self, chosen: torch.Tensor, rules: RowRules) -> None:
        tokens: list[int] = chosen.tolist()  # the step's one host sync, for every row at once
        now = time.perf_counter()
        for live, token in zip(self.rows, tokens, strict=True):
            plan = live.plan
            if plan.first_token_at is None:
                plan.first_token_at = now
            rules.accept(live, token)
        self.last_tokens = chosen


@torch.inference_mode()
def prefill(m: LoadedModel, rows: Sequence[PreparedRow], rules: RowRules) -> RunningBatch:
    """Run the prompts (with their images) of shape-compatible rows; each gets its first token."""
    started = time.perf_counter()
    collated = collate(rows, m.pad_id, m.device, m.dtype)
    inputs = collated.inputs
    positions = prefill_positions(m.model, inputs)
    cache = DynamicCache(config=m.model.config)
    kv.check_supported(cache)
    out = m.model(**inputs, position_ids=positions.position_ids, cache=cache, **_forward_kwargs(m.model))
    batch = RunningBatch(
        rows=[LiveRow(row, started) for row in rows],
        cache=out.cache if getattr(out, "cache", None) is not None else cache,
        mask=inputs["attention_mask"],
        next_positions=positions.next_positions.to(m.device),
        last_tokens=torch.zeros(len(rows), dtype=torch.long, device=m.device),
        mrope=uses_mrope(m.model),
        ready_mask=prepares_mask(m.model, cache),
    )
    batch._take(out.logits[:, -1, :], rules)
    return batch
