"""The generation engine on the real demo model: per-row parameters, seeds, stops, limits."""

from __future__ import annotations

import itertools
import time
from typing import Any

import msgspec
import pytest
import torch
from PIL import Image

from shared.contract import ImagePart, JobPayload, Message, SamplingParams, TextPart
from shared.errors import InvalidRequest
from workers.batch import MIN_FILL, plan_groups
from workers.engine import Engine, RowOutput

RED = Image.new("RGB", (64, 48), (220, 20, 20))
GREEN = Image.new("RGB", (30, 90), (20, 220, 20))
_ids = itertools.count()


def job(text: str, images: int = 0, kind: str = "chat", **params: Any) -> JobPayload:
    params.setdefault("max_new_tokens", 16)
    parts = tuple(ImagePart(f"img{i}") for i in range(images)) + (TextPart(text),)
    if kind == "generate":
        return JobPayload(
            id=f"j{next(_ids)}", kind="generate", prompt=text, params=SamplingParams(**params), created_at=time.time()
        )
    return JobPayload(
        id=f"j{next(_ids)}", messages=(Message("user", parts),), params=SamplingParams(**params), created_at=time.time()
    )


def run(engine: Engine, *jobs: tuple[JobPayload, list[Image.Image]]) -> list[RowOutput]:
    return engine.generate([engine.prepare(j, imgs) for j, imgs in jobs])


def essence(rows: list[RowOutput]) -> list[tuple[object, ...]]:
    """What must be identical; timings are not."""
    return [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens, r.seed) for r in rows]


MIXED = [
    (job("describe", 1, do_sample=True, temperature=0.8, top_p=0.9, top_k=50, seed=42, max_new_tokens=24), [RED]),
    (job("a longer question about the picture and its colors", 1, max_new_tokens=20), [GREEN]),
    (job("text only", 0, do_sample=True, temperature=1.3, top_p=0.5, seed=7, repetition_penalty=1.3), []),
    (job("two images", 2, do_sample=True, temperature=0.7, seed=1, min_new_tokens=10, stop=("the",)), [RED, GREEN]),
    (job("penalties", 0, do_sample=True, seed=3, presence_penalty=1.0, frequency_penalty=0.5), []),
    (job("raw prompt", kind="generate", do_sample=True, seed=11, top_k=5), []),
    (job("greedy top-k one", do_sample=True, seed=5, top_k=1, max_new_tokens=5), []),
]


def test_each_row_is_the_same_alone_and_in_a_mixed_batch(engine: Engine) -> None:
    engine.min_fill = 0.0  # one generate call for the whole mixed batch, however uneven
    try:
        alone = [run(engine, item)[0] for item in MIXED]
        before = engine.generate_calls
        together = run(engine, *MIXED)
        assert engine.generate_calls == before + 1, "the batch was not one generate call"
    finally:
        engine.min_fill = MIN_FILL
    assert essence(together) == essence(alone)
    reversed_batch = run(engine, *reversed(MIXED))
    assert essence(list(reversed(reversed_batch))) == essence(alone)


def test_greedy_matches_plain_transformers_generate(engine: Engine) -> None:
    j = job("compare with plain generate", 1, max_new_tokens=12, min_new_tokens=0)
    row = engine.prepare(j, [RED])
    ours = engine.generate([row])[0]
    m = engine.m
    text = engine.prompt_text(j)
    inputs = m.processor(text=[text], images=[RED], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = m.model.generate(
            **inputs, max_new_tokens=12, do_sample=False, eos_token_id=m.eos_ids, pad_token_id=m.pad_id
        )
    tokens = [t for t in out[0, inputs["input_ids"].shape[1] :].tolist() if t not in m.eos_ids and t != m.pad_id]
    assert ours.text == m.tokenizer.decode(tokens, skip_special_tokens=True)


def test_top_k_one_equals_greedy(engine: Engine) -> None:
    greedy = run(engine, (job("same", max_new_tokens=10), []))[0]
    sampled = run(engine, (job("same", do_sample=True, temperature=1.0, top_k=1, seed=99, max_new_tokens=10), []))[0]
    assert sampled.text == greedy.text


def test_seeds_matter_and_repeat(engine: Engine) -> None:
    texts = {
        s: run(engine, (job("seeded", do_sample=True, temperature=1.2, seed=s, min_new_tokens=10), []))[0].text
        for s in (1, 2, 3, 1)
    }
    assert len(set(texts.values())) >= 2
    assert (
        run(engine, (job("seeded", do_sample=True, temperature=1.2, seed=1, min_new_tokens=10), []))[0].text == texts[1]
    )


def test_max_tokens_per_row_inside_one_batch(engine: Engine) -> None:
    rows = run(engine, *[(job(f"row {n}", max_new_tokens=n, min_new_tokens=n), []) for n in (1, 4, 9)])
    assert [r.completion_tokens for r in rows] == [1, 4, 9]
    assert all(r.finish_reason == "length" for r in rows)


def test_min_tokens_holds_back_end_of_sequence(engine: Engine) -> None:
    ended = None
    for i in range(40):
        out = run(engine, (job(f"prompt {i}", max_new_tokens=40, min_new_tokens=0), []))[0]
        if out.finish_reason == "stop" and out.completion_tokens < 20:
            ended = i
            break
    assert ended is not None, "the demo model never ended early; EOS bias too weak"
    held = run(engine, (job(f"prompt {ended}", max_new_tokens=40, min_new_tokens=25), []))[0]
    assert held.completion_tokens >= 25


def test_stop_strings_cut_text_and_end_the_row(engine: Engine) -> None:
    full = run(engine, (job("stop test", max_new_tokens=30, min_new_tokens=30), []))[0]
    stop = full.text[10:13]
    cut = run(engine, (job("stop test", max_new_tokens=30, min_new_tokens=30, stop=(stop, "zzzz")), []))[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.completion_tokens < 30


def test_left_truncation_keeps_the_end_of_the_prompt(engine: Engine) -> None:
    long_text = " ".join(f"w{i}" for i in range(300))
    row = engine.prepare(job(long_text), [])
    assert row.prompt_tokens == engine.settings.input_token_limit == 64
    assert row.truncated_tokens > 0
    assert engine.m.tokenizer.decode(row.input_ids.tolist()).endswith("ASSISTANT:")


def test_images_that_do_not_fit_are_a_400(engine: Engine) -> None:
    with pytest.raises(InvalidRequest) as err:
        engine.prepare(job("x", 5), [RED] * 5)  # 5 x 16 image tokens > 64
    assert err.value.code == "context_length_exceeded"


def test_text_posing_as_the_image_token_is_a_400(engine: Engine) -> None:
    with pytest.raises(InvalidRequest):
        engine.prepare(job("look: <image> here", 1), [RED])


def test_max_model_length_clamps_new_tokens(demo_model_dir) -> None:  # type: ignore[no-untyped-def]
    from tests.workers.conftest import engine_settings

    settings = engine_settings(demo_model_dir, MAX_MODEL_LENGTH="40", MAX_INPUT_TOKENS="100")
    from workers.loader import load_model

    small = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    row = small.prepare(job("hello there", max_new_tokens=100, min_new_tokens=100), [])
    assert row.plan.max_new_tokens == 40 - row.prompt_tokens
    assert small.generate([row])[0].completion_tokens == 40 - row.prompt_tokens


def test_model_card_redacts_the_source_by_default(engine: Engine, demo_model_dir) -> None:  # type: ignore[no-untyped-def]
    from tests.workers.conftest import engine_settings
    from workers.loader import load_model

    assert engine.m.card.path is None and engine.m.card.demo
    shown = load_model(engine_settings(demo_model_dir, REDACT_SOURCE="0"), torch.device("cpu"), lambda _: None)
    assert shown.card.path == str(demo_model_dir)


def test_attention_fallback_order() -> None:
    from workers.loader import attention_candidates

    cpu = torch.device("cpu")
    assert attention_candidates("flash_attention_2", False, cpu, torch.float32) == ["sdpa", "eager"]
    assert attention_candidates("eager", False, cpu, torch.float32) == ["eager", "sdpa"]
    assert attention_candidates("flash_attention_2", True, cpu, torch.float32) == ["flash_attention_2"]


def test_strict_attention_fails_start_up(demo_model_dir) -> None:  # type: ignore[no-untyped-def]
    from tests.workers.conftest import engine_settings
    from workers.loader import ModelLoadError, load_model

    settings = engine_settings(demo_model_dir, ATTN_IMPL="flash_attention_2", ATTN_STRICT="1")
    with pytest.raises(ModelLoadError) as err:
        load_model(settings, torch.device("cpu"), lambda _: None)
    assert "ATTN_STRICT" in str(err.value)


def test_budgets_and_lengths_split_a_batch_without_changing_any_row(engine: Engine) -> None:
    jobs = [(job("short", max_new_tokens=8, do_sample=True, seed=i), []) for i in range(3)]
    jobs += [(job("describe this", 1, max_new_tokens=8, do_sample=True, seed=9), [RED])]
    rows = [engine.prepare(j, imgs) for j, imgs in jobs]
    by_length = plan_groups(rows, min_fill=0.9)
    assert len(by_length) == 2 and [len(g) for g in by_length] == [3, 1]
    width = max(r.prompt_tokens for r in rows)
    assert len(plan_groups(rows, max_tokens=2 * (width + 8), min_fill=0)) >= 2
    assert len(plan_groups(rows, max_pixels=1, min_fill=0)) == 2  # the image row goes alone
    alone = [engine.generate([r])[0] for r in rows]
    budgeted = Engine(engine.m, msgspec.structs.replace(engine.settings, max_batch_tokens=2 * (width + 8)))
    assert essence(budgeted.generate(rows)) == essence(alone)
    assert budgeted.generate_calls >= 2


def test_static_cache_path_gives_the_same_rows(engine: Engine) -> None:
    # TORCH_COMPILE=on: a static KV cache (transformers compiles it only on GPU, so here the
    # static-cache path runs eagerly); every row must come out exactly as on the default path.
    static = Engine(engine.m, msgspec.structs.replace(engine.settings, torch_compile="on"))
    assert static.compiled
    rows = [(j, imgs) for j, imgs in MIXED]
    expected = essence(run(engine, *rows))
    assert essence(static.generate([static.prepare(j, imgs) for j, imgs in rows])) == expected


def test_a_huge_prompt_is_refused_before_rendering(engine: Engine) -> None:
    # The review's 28 MB prompt held a worker 26.9 s (rendered and tokenized in full, then cut).
    for huge in (job("x" * 28_000_000), job("x" * 28_000_000, kind="generate")):
        started = time.perf_counter()
        with pytest.raises(InvalidRequest) as err:
            engine.prepare(huge, [])
        assert err.value.code == "context_length_exceeded"
        assert time.perf_counter() - started < 1.0
    limit = engine.settings.input_char_limit
    assert engine.prepare(job("x" * limit), []).truncated_tokens > 0  # at the bound: truncated, not refused
