"""Iteration-level scheduling: rows join and leave the running batch at every decoding step.

`ContinuousEngine.run_step` (1) retires rows that ended (EOS, stop string, max_tokens, cancel)
and hands each `RowOutput` to `on_done` at once, (2) admits waiting rows, first come first
served, while slots (max_batch_size) and the KV budget allow, prefilling them as one group and
merging it into the running batch, (3) decodes one token for every running row.

KV budget: with right-aligned rows the cache holds rows x (longest live row) slots, so a set of
rows can never need more than len(rows) x max(prompt + max_tokens); admission keeps that bound
within MAX_BATCH_TOKENS (0: no limit), which also bounds the sum of prompt + max_tokens. A row
alone is always admitted, as the static engine runs a row alone whatever its size.

Prefill policy: at most one prefill group per step, of shape-compatible rows, whose padded
prompt tokens stay under `prefill_tokens` (one row at least), so running rows wait for at most
one bounded prefill between two of their tokens.

A decoding step that raises fails no row on its own account: a step is all or nothing
(`RunningBatch.step`), so it is run once more (a transient fault); if it raises again, a device
out-of-memory returns the newest-admitted half of the rows to the front of the waiting rows
(they prefill again from their prompts later; tokens they already streamed are not sent twice),
and any other error is narrowed down by bisection: the step runs on each half of the batch, and
a half that raises is split again, so only the rows that raise alone fail (with the error), and
every other row takes its token as if nothing had happened.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from workers import progress
from workers.batch import PreparedRow
from workers.continuous.live import LiveRow, RowRules
from workers.continuous.running import RunningBatch, prefill
from workers.engine import Engine, RowOutput

log = logging.getLogger("omega.worker.continuous")

# Padded prompt tokens one step may prefill. Measured on the demo model (benchmarks/
# continuous_core.py, 4-token rows arriving every 30 ms beside 256-token rows): a cap of one row
# per step (40) let waiting rows queue behind one another, short p50 578 ms; 2048, which
# prefills every arrived row at once, 137 ms, with the longest step (the wait it imposes on
# running rows) 62 ms either way. Bigger groups are cheaper per row than one prefill each.
PREFILL_TOKENS = 2048


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_kv_tokens: int = 0  # 0: no limit
    max_pixels: int = 0  # of one prefill group; 0: no limit
    prefill_tokens: int = PREFILL_TOKENS


def _longest(rows: Sequence[LiveRow] | Sequence[PreparedRow]) -> int:
    """The most KV columns any of these rows can reach (prompt + max_tokens)."""
    prepared = [r.row if isinstance(r, LiveRow) else r for r in rows]
    return max((r.prompt_tokens + r.plan.max_new_tokens for r in prepared), default=0)


def kv_bound(rows: Sequence[LiveRow] | Sequence[PreparedRow]) -> int:
    """The most KV slots these rows can ever hold together (rows x longest possible row)."""
    return len(rows) * _longest(rows)


class RowStepError(RuntimeError):
    """A decoding step raises for this row alone (found by bisection); the cause is chained."""


def _out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ContinuousEngine:
    def __init__(
        self,
        engine: Engine,
        on_done: Callable[[PreparedRow, RowOutput], None],
        on_failed: Callable[[PreparedRow, Exception], None],
        limits: Limits | None = None,
        on_admitted: Callable[[list[PreparedRow]], None] | None = None,
    ) -> None:
        s = engine.settings
        self.on_admitted = on_admitted  # before a group's prefill: the worker starts their jobs
        self.engine = engine
        self.on_done = on_done
        self.on_failed = on_failed
        self.limits = limits or Limits(s.max_batch_size, s.max_batch_tokens, s.max_batch_pixels)
        on_delta = engine.publisher.publish if engine.publisher is not None else None
        self.rules = RowRules(engine.m.eos_ids, engine._decode_raw, on_delta)
        self.waiting: deque[PreparedRow] = deque()
        self.batch: RunningBatch | None = None
        self.admitting = True  # False while draining (SIGTERM): running rows finish, none join
        self.steps = 0  # decoding forwards run (observable: tests, metrics)
        self.prefills = 0
        self.shrunk = 0  # times the batch gave rows back for want of device memory
        self.row_cap = 0  # after a shrink: the rows that fitted (0: no cap)

    # --- what the worker reads -------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.batch.rows) if self.batch else 0

    @property
    def max_rows(self) -> int:
        """Slots: MAX_BATCH_SIZE, or fewer since the batch last ran out of device memory (until
        it next empties)."""
        return self.row_cap or self.limits.max_rows

    @property
    def free_slots(self) -> int:
        return max(0, self.max_rows - self.running)

    @property
    def kv_tokens(self) -> int:
        """Token slots the running rows may reach (the figure the budget is kept on)."""
        return kv_bound(self.batch.rows) if self.batch else 0

    @property
    def idle(self) -> bool:
        """Nothing to run: no running rows, and no waiting rows that may still be admitted."""
        return self.batch is None and (not self.waiting or not self.admitting)

    def submit(self, row: PreparedRow) -> None:
        self.waiting.append(row)

    # --- one scheduling iteration ----------------------------------------------------------
    @torch.inference_mode()
    def run_step(self) -> None:
        progress.beat()  # the worker's /livez: the loop advanced (workers/progress.py)
        self._retire()
        self._admit()
        self._retire()  # rows whose first token already ended them
        if self.batch is not None:
            self._decode(self.batch)
            self.steps += 1
            self._check_budget()
            self._retire()
        if self.batch is None:
            self.row_cap = 0  # an empty batch: the memory it held is free again
        if self.idle:
            progress.rest()  # idle is alive, however long it lasts

    # --- one decoding step, with its failures isolated -------------------------------------
    def _decode(self, batch: RunningBatch) -> None:
        m = self.engine.m
        try:
            batch.step(m, self.rules)
            return
        except Exception as exc:
            log.warning("a decoding step of %d row(s) failed (%s); running it again", len(batch.rows), exc)
            _free_device_cache(m.device)
        try:
            batch.step(m, self.rules)
            return
        except Exception as exc:
            error = exc
        if _out_of_memory(error) and len(batch.rows) > 1:
            self._shrink(batch, error)
        else:
            self.batch = self._bisect(batch, error)

    def _bisect(self, batch: RunningBatch, error: Exception) -> RunningBatch | None:
        """`batch` failed its step with `error`: run the step on each half, split a half that
        fails again, fail the rows that fail alone; the batch of the rows that stepped."""
        if len(batch.rows) == 1:
            row = batch.rows[0].row
            log.error("a decoding step fails for job %s alone (%s): failing it", row.job.id, error)
            failure = RowStepError(f"a decoding step fails for this request alone ({type(error).__name__})")
            failure.__cause__ = error
            self.on_failed(row, failure)
            return None
        middle = len(batch.rows) // 2
        parts: list[RunningBatch] = []
        for keep in (range(middle), range(middle, len(batch.rows))):
            half = batch.filter(list(keep), consume=False)
            assert half is not None
            try:
                half.step(self.engine.m, self.rules)
                parts.append(half)
            except Exception as exc:
                stepped = self._bisect(half, exc)
                if stepped is not None:
                    parts.append(stepped)
        merged: RunningBatch | None = None
        for part in parts:
            merged = part if merged is None else RunningBatch.concatenate(merged, part)
        return merged

    def _shrink(self, batch: RunningBatch, error: Exception) -> None:
        """Out of device memory twice: the newest-admitted half of the rows goes back to the front
        of the waiting rows (their KV cache is freed; they prefill again when they fit), the
        rest decode on at the next step."""
        keep = (len(batch.rows) + 1) // 2
        back = batch.rows[keep:]
        log.warning(
            "out of device memory decoding %d rows (%s): %d go back to waiting", len(batch.rows), error, len(back)
        )
        self.batch = batch.filter(list(range(keep)))
        self.row_cap = keep  # admitting them again at once would run out of memory again
        for live in reversed(back):
            self.rules.restart(live)
            self.waiting.appendleft(live.row)
        _free_device_cache(self.engine.m.device)
        self.shrunk += 1

    def fail_running(self, exc: Exception) -> None:
        """A decoding step raised: it ran every row at once, so no row can be told apart; each
        running row fails (waiting rows stay waiting) and the batch is dropped."""
        rows, self.batch = (self.batch.rows if self.batch else []), None
        for live in rows:
            self.on_failed(live.row, exc)

    def run_until_idle(self) -> None:
        while not self.idle:
            self.run_step()

    def _retire(self) -> None:
        for row in [r for r in self.waiting if r.plan.cancel_requested]:
            self.waiting.remove(row)
            row.plan.cancel_step = 0
            self.on_done(row, self.engine._finish(row, [], time.perf_counter()))
        if self.batch is None:
            return
        for live in self.batch.rows:
            self.rules.check_cancel(live)
        done = [live for live in self.batch.rows if live.done]
        if not done:
            return
        self.batch = self.batch.filter([i for i, live in enumerate(self.batch.rows) if not live.done])
        for live in done:
            self.on_done(live.row, self.engine._finish(live.row, live.tokens, live.started))

    # --- admission -----------------------------------------------------------------------
    def _group(self) -> list[PreparedRow]:
        """The waiting rows, first come first served, that may prefill together now."""
        running = self.batch.rows if self.batch else []
        group: list[PreparedRow] = []
        for row in self.waiting:
            candidate = [*group, row]
            if len(running) + len(candidate) > self.max_rows:
                break
            if not self._fits(running, candidate):
                break
            group = candidate
        return group

    def _fits(self, running: list[LiveRow], group: list[PreparedRow]) -> bool:
        lim = self.limits
        if len(group) > 1:
            signatures = [r.signature() for r in group]
            first = signatures[0]
            if any(first.get(k, shape) != shape for sig in signatures[1:] for k, shape in sig.items()):
                return False  # image tensors that cannot be stacked: the next step prefills it
            width = max(r.prompt_tokens for r in group)
            if len(group) * width > lim.prefill_tokens:
                return False
            if lim.max_pixels and sum(r.pixels for r in group) > lim.max_pixels:
                return False
        rows = len(running) + len(group)
        if lim.max_kv_tokens and rows > 1:
            return rows * max(_longest(running), _longest(group)) <= lim.max_kv_tokens
        return True

    def _admit(self) -> None:
        group = self._group() if self.admitting else []
        if not group:
            return
        for _ in group:
            self.waiting.popleft()
        if self.on_admitted is not None:
            self.on_admitted(group)
        for admitted in self._prefill(group):
            self.batch = admitted if self.batch is None else RunningBatch.concatenate(self.batch, admitted)
        self._check_budget()

    def _prefill(self, group: list[PreparedRow]) -> list[RunningBatch]:
        """Prefilled batches of the group; a group that fails is retried row by row, so only a
        row that fails alone fails."""
        try:
            batches = [prefill(self.engine.m, group, self.rules)]
            self.prefills += 1
            return batches
        except Exception as exc:
            if len(group) == 1:
                self.on_failed(group[0], exc)
                return []
            log.warning("prefill of %d rows failed (%s): retrying them one by one", len(group), exc)
            return [b for row in group for b in self._prefill([row])]

    def _check_budget(self) -> None:
        if self.batch is None or len(self.batch.rows) == 1:
            return
        limit = self.limits.max_kv_tokens
        assert self.running <= self.limits.max_rows, "more running rows than slots"
        assert not limit or self.batch.kv_slots() <= limit, f"KV cache {self.batch.kv_slots()} > budget {limit}"
        assert not limit or self.kv_tokens <= limit, f"KV bound {self.kv_tokens} > budget {limit}"
