"""Scheduling per step: short rows overtake long ones, cancel frees a slot, the KV budget holds,
streamed deltas add up to the answer, and a row that cannot prefill fails alone."""

from __future__ import annotations

import msgspec
import torch

from tests.workers.continuous.conftest import drive
from tests.workers.test_engine import RED, essence, job
from workers.batch import PreparedRow
from workers.continuous.scheduler import ContinuousEngine, Limits, kv_bound
from workers.engine import Engine, RowOutput


def long_row(engine: Engine, n: int = 60, seed: int = 1) -> PreparedRow:
    return engine.prepare(job(f"long {seed}", max_new_tokens=n, min_new_tokens=n, do_sample=True, seed=seed), [])


def short_row(engine: Engine, text: str = "short") -> PreparedRow:
    return engine.prepare(job(text, max_new_tokens=4, min_new_tokens=4), [])


def test_a_short_row_admitted_while_a_long_one_runs_finishes_first(engine: Engine) -> None:
    long, short = long_row(engine), short_row(engine)
    run = drive(engine, {0: [long], 5: [short]})
    assert run.order == [short.job.id, long.job.id]
    # Admitted at the very next step and ended four tokens later, not when the long row ended.
    assert run.ended_at[short.job.id] - 5 <= 4
    assert run.outputs[long.job.id].completion_tokens == 60


def test_a_canceled_row_frees_its_slot_for_a_waiting_one(engine: Engine) -> None:
    first, second, waiting = long_row(engine, seed=1), long_row(engine, seed=2), short_row(engine)
    run = drive(
        engine,
        {0: [first, second], 2: [waiting]},
        Limits(max_rows=2),
        before_step={6: lambda: setattr(second.plan, "cancel_requested", True)},
    )
    assert max(run.running) == 2
    assert run.ended_at[second.job.id] == 6 and second.plan.cancel_step is not None
    assert run.outputs[second.job.id].completion_tokens < 60
    # The waiting row got the freed slot in the same step and ended long before the first row.
    assert run.ended_at[waiting.job.id] <= 6 + 4
    assert run.order.index(waiting.job.id) < run.order.index(first.job.id)


def test_a_canceled_waiting_row_ends_without_running(engine: Engine) -> None:
    running, waiting = long_row(engine, n=10), short_row(engine)
    waiting.plan.cancel_requested = True
    run = drive(engine, {0: [running, waiting]}, Limits(max_rows=1))
    assert run.ended_at[waiting.job.id] == 0 and run.outputs[waiting.job.id].completion_tokens == 0


def test_the_kv_budget_is_never_exceeded_and_rows_are_unchanged(engine: Engine) -> None:
    jobs = [(job(f"budget row {i}", max_new_tokens=8 + 5 * i, do_sample=bool(i % 2), seed=i), []) for i in range(8)]
    rows = [engine.prepare(j, imgs) for j, imgs in jobs]
    budget = 3 * max(r.prompt_tokens + r.plan.max_new_tokens for r in rows)
    run = drive(engine, {i: [row] for i, row in enumerate(rows)}, Limits(max_rows=8, max_kv_tokens=budget))
    assert max(run.kv_slots) <= budget
    # Rows arrive one per step and all would fit in the slots: only the budget held some back.
    assert 3 <= max(run.running) < len(rows)
    alone = [engine.generate([engine.prepare(j, imgs)])[0] for j, imgs in jobs]
    assert essence([run.outputs[r.job.id] for r in rows]) == essence(alone)


def test_admission_bound_covers_every_future_step(engine: Engine) -> None:
    rows = [long_row(engine, n=30, seed=s) for s in range(3)]
    assert kv_bound(rows) == 3 * max(r.prompt_tokens + 30 for r in rows)
    run = drive(engine, {0: rows}, Limits(max_rows=3, max_kv_tokens=kv_bound(rows)))
    assert max(run.running) == 3 and max(run.kv_slots) <= kv_bound(rows)


class Collector:
    def __init__(self) -> None:
        self.deltas: dict[str, str] = {}

    def publish(self, job_id: str, delta: str) -> None:
        self.deltas[job_id] = self.deltas.get(job_id, "") + delta


def test_streamed_deltas_add_up_to_each_rows_final_text(engine: Engine) -> None:
    collector = Collector()
    streaming = Engine(engine.m, engine.settings, publisher=collector)  # type: ignore[arg-type]
    jobs = [
        msgspec.structs.replace(job("stream one", max_new_tokens=20, stop=("the",)), stream=True),
        msgspec.structs.replace(job("stream two", 1, do_sample=True, seed=6, max_new_tokens=14), stream=True),
    ]
    rows = [streaming.prepare(jobs[0], []), streaming.prepare(jobs[1], [RED])]
    run = drive(streaming, {0: [long_row(streaming)], 1: rows[:1], 3: rows[1:]})
    for row in rows:
        assert collector.deltas[row.job.id] == run.outputs[row.job.id].text != ""


def test_a_row_that_cannot_prefill_fails_alone(engine: Engine) -> None:
    good, bad = short_row(engine, "fine"), short_row(engine, "broken")
    bad.image_extras["pixel_values"] = torch.zeros(1, 3, 7, 7)  # no image token for it: LLaVA raises
    done: dict[str, RowOutput] = {}
    failed: dict[str, Exception] = {}
    ce = ContinuousEngine(
        engine, lambda r, o: done.__setitem__(r.job.id, o), lambda r, e: failed.__setitem__(r.job.id, e)
    )
    ce.submit(good)
    ce.submit(bad)
    ce.run_until_idle()
    assert set(failed) == {bad.job.id} and set(done) == {good.job.id}
    assert done[good.job.id].completion_tokens == 4


def test_draining_finishes_running_rows_and_admits_none(engine: Engine) -> None:
    running, waiting = long_row(engine, n=12), short_row(engine)
    done: list[str] = []
    ce = ContinuousEngine(engine, lambda r, o: done.append(r.job.id), lambda r, e: None, Limits(max_rows=1))
    ce.submit(running)
    ce.submit(waiting)
    ce.run_step()
    ce.admitting = False  # SIGTERM: the worker gives the waiting rows back to the queue
    ce.run_until_idle()
    assert done == [running.job.id] and list(ce.waiting) == [waiting]


def test_filter_compacts_the_cache_to_the_longest_live_row(engine: Engine) -> None:
    from workers.continuous.live import RowRules
    from workers.continuous.running import RunningBatch, prefill

    rules = RowRules(engine.m.eos_ids, engine._decode_raw, None)
    long = engine.prepare(job("a much longer prompt " * 2, 1, max_new_tokens=30, min_new_tokens=30), [RED])
    short = short_row(engine, "hi")
    batch = prefill(engine.m, [long], rules)
    for _ in range(10):
        batch.step(engine.m, rules)
    batch = RunningBatch.concatenate(batch, prefill(engine.m, [short], rules))
    assert batch.columns == long.prompt_tokens + 10  # the short row is left-padded to the long one
    batch.step(engine.m, rules)
    kept = batch.filter([1])  # the long row leaves
    assert kept is not None
    assert kept.columns == short.prompt_tokens + 1 and bool(kept.mask.all())
    for layer in kept.cache.layers:
        assert layer.keys.shape[0] == 1 and layer.keys.shape[-2] == kept.columns
