"""A decoding step that raises fails only the rows that make it raise.

The fault is real code on a real tiny model: a forward pre-hook on the model that raises when a
condition on the step's own inputs holds (a row's position past a threshold: only the row with
the long prompt gets there; or more rows than "fit": an out-of-memory error). Every other row
must end with the text of a run without the fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from msgspec.structs import replace

from tests.workers.test_engine import job
from workers.batch import PreparedRow
from workers.continuous.scheduler import ContinuousEngine, Limits
from workers.engine import Engine, RowOutput

POISON_POSITION = 80  # the long-prompt row's positions start past this; the others stay below


@contextmanager
def faulty_decode(engine: Engine, raises: Any) -> Iterator[list[int]]:
    """The model raises `raises(kwargs)` (an exception or None) on decoding steps (one new token
    per row); yields a list that counts the faults raised."""
    raised: list[int] = []

    def hook(_module: torch.nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None or ids.shape[1] != 1:
            return  # a prefill
        error = raises(kwargs)
        if error is not None:
            raised.append(int(ids.shape[0]))
            raise error

    handle = engine.m.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield raised
    finally:
        handle.remove()


def poison_position(kwargs: dict[str, Any]) -> Exception | None:
    positions = kwargs["position_ids"]
    if int(positions.max()) >= POISON_POSITION:
        return RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    return None


def run(
    engine: Engine,
    arrivals: Mapping[int, list[PreparedRow]],
    limits: Limits | None = None,
    on_delta: Callable[[str, str], None] | None = None,
) -> tuple[dict[str, RowOutput], dict[str, Exception], ContinuousEngine]:
    outputs: dict[str, RowOutput] = {}
    failures: dict[str, Exception] = {}
    ce = ContinuousEngine(
        engine,
        lambda row, out: outputs.__setitem__(row.job.id, out),
        lambda row, exc: failures.__setitem__(row.job.id, exc),
        limits,
    )
    ce.rules.on_delta = on_delta  # the worker's publisher, as a list here
    step = 0
    while step <= max(arrivals) or not ce.idle:
        for row in arrivals.get(step, []):
            ce.submit(row)
        ce.run_step()
        step += 1
        assert step < 2000, "the engine never went idle"
    return outputs, failures, ce


def rows(engine: Engine, stream: bool = False) -> list[PreparedRow]:
    """Four ordinary rows (seeded sampling and greedy), fresh each call (rows carry state)."""
    specs: list[tuple[str, dict[str, Any]]] = [
        ("first ordinary row", {"do_sample": True, "seed": 3}),
        ("second", {}),
        ("a third one, sampled", {"do_sample": True, "seed": 9, "temperature": 1.2}),
        ("fourth", {"repetition_penalty": 1.3}),
    ]
    return [
        engine.prepare(
            replace(job(text, max_new_tokens=12 + 3 * i, min_new_tokens=12 + 3 * i, **params), stream=stream), []
        )
        for i, (text, params) in enumerate(specs)
    ]


def poison_row(engine: Engine) -> PreparedRow:
    row = engine.prepare(job("word " * 120, max_new_tokens=10, min_new_tokens=10), [])
    assert row.prompt_tokens >= POISON_POSITION
    return row


def texts(outputs: dict[str, RowOutput], ids: list[str]) -> list[tuple[str, int]]:
    return [(outputs[i].text, outputs[i].completion_tokens) for i in ids]


def test_a_row_whose_step_raises_fails_alone_and_the_others_are_unchanged(text_engine: Engine) -> None:
    clean = rows(text_engine)
    reference, none_failed, _ = run(text_engine, {0: clean[:2], 3: clean[2:]})
    assert not none_failed

    again = rows(text_engine)
    poison = poison_row(text_engine)
    with faulty_decode(text_engine, poison_position) as raised:
        # The poison row arrives with the first two and shares every step with the others.
        outputs, failures, _ = run(text_engine, {0: [again[0], poison, again[1]], 3: again[2:]})
    assert list(failures) == [poison.job.id]
    assert "illegal memory access" in str(failures[poison.job.id].__cause__)
    assert raised, "the fault never fired"
    ids = [r.job.id for r in again]
    assert texts(outputs, ids) == texts(reference, [r.job.id for r in clean])


def test_a_transient_step_fault_is_run_again_and_changes_nothing(text_engine: Engine) -> None:
    clean = rows(text_engine)
    reference, _, _ = run(text_engine, {0: clean})
    fired: list[bool] = []

    def once(kwargs: dict[str, Any]) -> Exception | None:
        if fired or int(kwargs["position_ids"].max()) < 15:
            return None
        fired.append(True)
        return RuntimeError("a transient fault (injected)")

    again = rows(text_engine)
    with faulty_decode(text_engine, once) as raised:
        outputs, failures, _ = run(text_engine, {0: again})
    assert raised == [4] and not failures
    assert texts(outputs, [r.job.id for r in again]) == texts(reference, [r.job.id for r in clean])


def test_out_of_memory_gives_the_newest_rows_back_instead_of_failing_them(text_engine: Engine) -> None:
    clean = rows(text_engine)
    reference, _, _ = run(text_engine, {0: clean})

    def too_many(kwargs: dict[str, Any]) -> Exception | None:
        if kwargs["input_ids"].shape[0] > 2:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return None

    again = rows(text_engine, stream=True)
    deltas: dict[str, list[str]] = {}
    with faulty_decode(text_engine, too_many) as raised:
        outputs, failures, ce = run(
            text_engine,
            {0: again[:3], 2: again[3:]},
            on_delta=lambda job_id, text: deltas.setdefault(job_id, []).append(text),
        )
    assert not failures
    assert ce.shrunk >= 1 and raised
    assert texts(outputs, [r.job.id for r in again]) == texts(reference, [r.job.id for r in clean])
    # A row sent back streamed its first tokens once: its deltas still add up to its text.
    for row in again:
        streamed = "".join(deltas.get(row.job.id, []))
        assert outputs[row.job.id].text.startswith(streamed), (streamed, outputs[row.job.id].text)
        assert len(deltas.get(row.job.id, [])) <= outputs[row.job.id].completion_tokens
