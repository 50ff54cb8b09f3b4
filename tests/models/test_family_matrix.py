"""Every supported family through the real worker path, on its tiny model.

Each family's declared capabilities (workers/tiny_models/families.py, also the README's table)
are asserted here: what a family supports must work, and what it does not must be a 400.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch
from PIL import Image

from shared import keys
from shared.blob_local import LocalBlobStore
from shared.blobstore import put_image
from shared.contract import ImagePart, JobError, JobPayload, JobResult, Message, TextPart
from shared.errors import InvalidRequest
from shared.prompt import render_prompt
from tests.models.cases import SQUARE, TALL, WIDE, essence, job, png, with_blobs
from tests.models.conftest import family_settings
from tests.support.procs import RedisServer, wait_for
from workers.batch import MIN_FILL
from workers.engine import Engine, RowOutput
from workers.images import ImageLoader
from workers.loader import load_model
from workers.runner import MicroBatchItem, MicroBatchRunner
from workers.streaming import DeltaPublisher
from workers.tiny_models.families import FAMILIES
from workers.tiny_models.spec import Family

KEYS = [key for key, f in FAMILIES.items() if f.available]
by_family = pytest.mark.parametrize("family", KEYS)


def run(engine: Engine, *items: tuple[JobPayload, list[Image.Image]]) -> list[RowOutput]:
    return engine.generate([engine.prepare(j, images) for j, images in items])


@by_family
def test_loads_with_the_worker_loader(family: str, family_engine: Engine, families_root: Path) -> None:
    m = family_engine.m
    assert m.model.config.architectures == [FAMILIES[family].architecture]
    assert m.dtype == torch.float32 and m.attn in ("sdpa", "eager")
    assert m.supports_images == FAMILIES[family].images
    # flash-attention is absent on a CPU: the loader falls back instead of failing.
    settings = family_settings(families_root, family, ATTN_IMPL="flash_attention_2", DTYPE="bf16")
    fallback = load_model(settings, torch.device("cpu"), lambda _: None)
    assert fallback.attn == "sdpa" and fallback.dtype == torch.bfloat16
    images = [WIDE] if FAMILIES[family].supports("image") else []
    out = run(Engine(fallback, settings), (job("in bf16", len(images), max_new_tokens=4, min_new_tokens=4), images))
    assert out[0].completion_tokens == 4


@by_family
def test_requests_through_the_batch_runner(family: str, family_engine: Engine, tmp_path: Path) -> None:
    """Text, one image and several images in one micro-batch: a result each, or a declared 400."""
    spec = FAMILIES[family]
    store = LocalBlobStore(tmp_path)
    blobs = [put_image(store, png(image)) for image in (WIDE, TALL)]
    jobs = {"text": job("describe a dog"), "image": job("what is it", 1), "multi-image": job("compare them", 2)}
    runner = MicroBatchRunner(family_engine, ImageLoader(store, family_engine.settings), "matrix")
    items = [MicroBatchItem(with_blobs(p, blobs), 0.0) for p in jobs.values()]
    outcomes = dict(zip(jobs, runner.run(items), strict=True))
    for name, outcome in outcomes.items():
        if spec.supports(name):
            assert isinstance(outcome, JobResult), f"{spec.name} {name}: {outcome}"
            assert outcome.completion_tokens > 0
        else:
            assert isinstance(outcome, JobError) and outcome.status == 400, f"{spec.name} {name}: {outcome}"


def _mixed(spec: Family) -> list[tuple[JobPayload, list[Image.Image]]]:
    rows: list[tuple[JobPayload, list[Image.Image]]] = []
    if spec.supports("text"):
        rows += [
            (job("a short question", max_new_tokens=12), []),
            (job("sampled text", do_sample=True, temperature=0.9, top_p=0.9, seed=5, max_new_tokens=12), []),
        ]
    if spec.supports("image"):
        rows += [
            (job("describe the wide picture", 1, max_new_tokens=12), [WIDE]),
            (job("and the tall one", 1, do_sample=True, temperature=0.8, seed=7, max_new_tokens=12), [TALL]),
            (
                job("three at once", 3, do_sample=True, temperature=1.0, top_k=20, seed=3, max_new_tokens=12),
                [SQUARE, WIDE, TALL],
            ),
        ]
    return rows


def check_batched_matches_alone(engine: Engine, spec: Family) -> None:
    """Rows of mixed image sizes and sampling settings give, batched, exactly what they give alone."""
    rows = _mixed(spec)
    alone = [run(engine, row)[0] for row in rows]
    engine.min_fill = 0.0  # as few generate calls as shapes allow, however uneven
    try:
        before = engine.generate_calls
        together = run(engine, *rows)
        calls = engine.generate_calls - before
    finally:
        engine.min_fill = MIN_FILL
    assert calls == spec.generate_calls
    assert essence(together) == essence(alone)
    assert len({r.text for r in alone}) > 1, "the tiny model says the same thing to everything"


def plain_generate(engine: Engine, payload: JobPayload, images: list[Image.Image], max_new_tokens: int) -> str:
    """The family's own way: its processor's output straight into `model.generate`, greedy."""
    m = engine.m
    text = engine.prompt_text(payload)
    if m.supports_images:
        inputs = m.processor(
            text=[text], images=[images] if images else None, return_tensors="pt", add_special_tokens=False
        )
    else:
        inputs = m.tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = m.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=m.eos_ids, pad_token_id=m.pad_id
        )
    tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    ends = [i for i, t in enumerate(tokens) if t in m.eos_ids]
    return str(m.tokenizer.decode(tokens[: ends[0]] if ends else tokens, skip_special_tokens=True))


def check_matches_transformers(engine: Engine, spec: Family) -> None:
    """A greedy row inside a mixed batch gives what plain transformers gives for it alone: grids,
    pixel values, position ids and masks reach the model as the family expects."""
    images = [TALL, WIDE] if spec.supports("multi-image") else []
    target = job("compare with plain generate", len(images), max_new_tokens=12)
    other = (
        (job("another row, longer than the first one", 1, max_new_tokens=12), [SQUARE])
        if spec.images
        else (
            job("another row, longer than the first one", max_new_tokens=12),
            [],
        )
    )
    engine.min_fill = 0.0
    try:
        ours = run(engine, (target, images), other)[0]
    finally:
        engine.min_fill = MIN_FILL
    assert ours.text == plain_generate(engine, target, images, 12)


@by_family
def test_mixed_sizes_batched_give_the_same_text_as_alone(family: str, family_engine: Engine) -> None:
    check_batched_matches_alone(family_engine, FAMILIES[family])


@by_family
def test_a_batched_row_equals_plain_transformers_generate(family: str, family_engine: Engine) -> None:
    check_matches_transformers(family_engine, FAMILIES[family])


@by_family
def test_streamed_text_equals_the_final_text(family: str, family_engine: Engine, redis_server: RedisServer) -> None:
    """The deltas a streaming row publishes to Redis add up to the non-streamed text."""
    images = [WIDE] if FAMILIES[family].images else []
    plain = run(family_engine, (job("stream this", len(images), max_new_tokens=16), images))[0]
    conn = redis_server.client(db=11)
    publisher = DeltaPublisher(conn)
    streaming = Engine(family_engine.m, family_engine.settings, publisher)
    payload = job("stream this", len(images), stream=True, max_new_tokens=16)
    streamed = run(streaming, (payload, images))[0]
    assert streamed.text == plain.text

    def deltas() -> list[str]:
        return [fields[b"d"].decode() for _, fields in conn.xrange(keys.job_stream(payload.id))]

    # The publisher writes from its own thread: wait until it has written as much text as the row made.
    with contextlib.suppress(TimeoutError):  # the assertion below says what arrived
        wait_for(lambda: len("".join(deltas())) >= len(plain.text), 10, "the streamed deltas")
    assert "".join(deltas()) == plain.text and len(deltas()) > 1


@by_family
def test_apply_template_equals_the_processors_rendering(family: str, family_engine: Engine) -> None:
    m = family_engine.m
    if getattr(m.processor, "chat_template", None) is None and getattr(m.tokenizer, "chat_template", None) is None:
        pytest.skip(f"{FAMILIES[family].name} ships no chat template (prompts are task prefixes)")
    images = 2 if FAMILIES[family].images else 0
    question = [{"type": "image"}] * images + [{"type": "text", "text": "what differs between them?"}]
    conversation: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": question},
        {"role": "assistant", "content": [{"type": "text", "text": "The colours."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the sizes?"}]},
    ]
    messages = tuple(
        Message(
            c["role"],
            tuple(
                ImagePart(f"i{i}") if p["type"] == "image" else TextPart(p["text"]) for i, p in enumerate(c["content"])
            ),
        )
        for c in conversation
    )
    if not FAMILIES[family].images:  # text models' templates take plain string content
        conversation = [{"role": c["role"], "content": c["content"][-1]["text"]} for c in conversation]
    expected = m.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    try:
        ours = render_prompt(m.card.chat_template, m.card.template_kwargs, messages)
    except InvalidRequest:
        pytest.fail("the service's renderer rejected what the processor renders")
    assert ours == expected


@by_family
def test_left_truncation_never_cuts_an_image(family: str, family_engine: Engine) -> None:
    long_text = " ".join(f"word{i}" for i in range(400))
    tight = Engine(family_engine.m, msgspec.structs.replace(family_engine.settings, max_input_tokens=128))
    if FAMILIES[family].supports("text"):
        text_row = tight.prepare(job(long_text), [])
        assert text_row.prompt_tokens == 128 and text_row.truncated_tokens > 0
    if not FAMILIES[family].images:
        return
    with pytest.raises(InvalidRequest) as err:
        tight.prepare(job(long_text, 1), [WIDE])
    assert err.value.code == "context_length_exceeded"
    # A long system turn before the image: cut from the left, the image and every per-token
    # input (token types, Mllama's cross-attention mask) kept in step, unless the family puts
    # its images first (PaliGemma), which is a 400 again.
    late = job("what is it", 1, system=long_text, max_new_tokens=4)
    roomy = Engine(family_engine.m, msgspec.structs.replace(family_engine.settings, max_input_tokens=4096))
    full = roomy.prepare(late, [WIDE])
    first_image = int((full.input_ids == family_engine.m.image_token_id).nonzero()[0])
    if first_image < full.prompt_tokens - 128:
        with pytest.raises(InvalidRequest):
            tight.prepare(late, [WIDE])
        return
    kept = tight.prepare(late, [WIDE])
    assert kept.truncated_tokens > 0 and all(v.shape[0] == 128 for v in kept.seq_extras.values())
    assert tight.generate([kept])[0].completion_tokens > 0


@by_family
def test_images_to_a_text_model_or_stray_image_tokens_are_a_400(family: str, family_engine: Engine) -> None:
    m = family_engine.m
    if not FAMILIES[family].images:
        with pytest.raises(InvalidRequest):
            family_engine.prepare(job("look", 1), [WIDE])
        return
    if getattr(m.processor, "chat_template", None) is None:
        pytest.skip("PaliGemma's processor places the images itself; a literal image token is their place")
    token = m.card.image_token
    assert token
    with pytest.raises(InvalidRequest):
        family_engine.prepare(job(f"look: {token} here", 1), [WIDE])
