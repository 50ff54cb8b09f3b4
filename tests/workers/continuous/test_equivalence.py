"""A row's text does not depend on when it joins the running batch or who runs beside it:
greedy and seeded rows give exactly what the static engine gives for the row alone."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.workers.continuous.conftest import drive
from tests.workers.test_engine import GREEN, MIXED, RED, essence, job
from workers.engine import Engine, RowOutput

BLUE = Image.new("RGB", (120, 40), (20, 20, 220))


def alone(engine: Engine, jobs: list[tuple[object, list[Image.Image]]]) -> list[RowOutput]:
    return [engine.generate([engine.prepare(j, imgs)])[0] for j, imgs in jobs]  # type: ignore[arg-type]


def test_mixed_rows_together_match_the_static_engine_alone(engine: Engine) -> None:
    rows = [engine.prepare(j, imgs) for j, imgs in MIXED]
    run = drive(engine, {0: rows})
    assert essence([run.outputs[r.job.id] for r in rows]) == essence(alone(engine, MIXED))


def test_mixed_rows_arriving_one_per_step_match_alone(engine: Engine) -> None:
    rows = [engine.prepare(j, imgs) for j, imgs in MIXED]
    run = drive(engine, {2 * i: [row] for i, row in enumerate(rows)})
    assert essence([run.outputs[r.job.id] for r in rows]) == essence(alone(engine, MIXED))


JOINERS = [
    (job("joins late", 1, do_sample=True, temperature=0.9, top_p=0.8, seed=123, max_new_tokens=20), [BLUE]),
    (job("greedy joiner", max_new_tokens=12, repetition_penalty=1.2), []),
    (job("penalised", do_sample=True, seed=5, top_k=20, presence_penalty=0.7, frequency_penalty=0.3), []),
    (job("ends at its first token", max_new_tokens=1), []),  # retired right after its prefill
]
LONG = [
    (job("a long running row", 1, max_new_tokens=40, min_new_tokens=40, do_sample=True, seed=3), [RED]),
    (job("another long one, greedy", max_new_tokens=36, min_new_tokens=36), []),
]


@pytest.mark.parametrize("k", [1, 4, 9, 17])
def test_a_row_joined_at_step_k_gives_the_same_text_as_alone(engine: Engine, k: int) -> None:
    long_rows = [engine.prepare(j, imgs) for j, imgs in LONG]
    joiners = [engine.prepare(j, imgs) for j, imgs in JOINERS]
    run = drive(engine, {0: long_rows, k: joiners})
    # Every joiner but the one-token row (done at its prefill) decoded beside the long rows.
    assert max(run.running) == len(long_rows) + len(joiners) - 1, "the joiners never ran beside the long rows"
    got = [run.outputs[r.job.id] for r in long_rows + joiners]
    assert essence(got) == essence(alone(engine, LONG + JOINERS))


TEXT_JOBS = [
    (job("hello there", kind="generate", max_new_tokens=30, min_new_tokens=30), []),
    (job("sampled", kind="generate", do_sample=True, temperature=1.1, seed=77, max_new_tokens=24), []),
    (job("nucleus", kind="generate", do_sample=True, top_p=0.7, seed=8, stop=("the",), max_new_tokens=24), []),
    (job("a chat row", do_sample=True, seed=2, top_k=8, repetition_penalty=1.3, max_new_tokens=18), []),
]


@pytest.mark.parametrize("k", [0, 3, 11])
def test_text_only_model_rows_joined_mid_flight_match_alone(text_engine: Engine, k: int) -> None:
    first, *rest = [text_engine.prepare(j, imgs) for j, imgs in TEXT_JOBS]
    run = drive(text_engine, {0: [first], k: rest} if k else {0: [first, *rest]})
    got = [run.outputs[r.job.id] for r in [first, *rest]]
    assert essence(got) == essence(alone(text_engine, TEXT_JOBS))


def test_images_of_different_sizes_and_counts_share_the_running_batch(engine: Engine) -> None:
    jobs = [
        (job("one red", 1, max_new_tokens=24, min_new_tokens=24), [RED]),
        (job("two images", 2, do_sample=True, seed=4, max_new_tokens=20), [GREEN, BLUE]),
        (job("a wide one", 1, do_sample=True, seed=9, top_p=0.9, max_new_tokens=16), [BLUE]),
        (job("no image at all", max_new_tokens=10), []),
    ]
    rows = [engine.prepare(j, imgs) for j, imgs in jobs]
    run = drive(engine, {0: rows[:1], 2: rows[1:3], 5: rows[3:]})
    assert max(run.running) == 4
    assert essence([run.outputs[r.job.id] for r in rows]) == essence(alone(engine, jobs))


@pytest.mark.parametrize("k", [0, 5, 13])
def test_sliding_window_layers_merge_and_compact_correctly(sliding_engine: Engine, k: int) -> None:
    # Gemma 3 layers with a 6-token window: prompts and outputs are far longer, so rows joined
    # with left padding and compacted after others leave must keep exactly their own window.
    first, *rest = [sliding_engine.prepare(j, imgs) for j, imgs in TEXT_JOBS]
    run = drive(sliding_engine, {0: [first], k: rest} if k else {0: [first, *rest]})
    got = [run.outputs[r.job.id] for r in [first, *rest]]
    assert essence(got) == essence(alone(sliding_engine, TEXT_JOBS))
