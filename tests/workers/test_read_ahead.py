"""Rows prepared ahead (workers/read_ahead.py) are the rows the batch would have prepared: same
tensors, same generated text; each is used once, only for its own payload."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import torch

from shared.blob_local import LocalBlobStore
from shared.blobstore import put_image
from shared.contract import ImagePart, JobPayload, Message, SamplingParams, TextPart
from tests.support.images import image_bytes
from workers.engine import Engine
from workers.images import ImageLoader
from workers.read_ahead import ReadAhead
from workers.runner import MicroBatchItem, MicroBatchRunner


def payload(job_id: str, text: str, blobs: list[str], **params: object) -> JobPayload:
    parts = tuple(ImagePart(b) for b in blobs) + (TextPart(text),)
    return JobPayload(
        id=job_id,
        messages=(Message("user", parts),),
        params=SamplingParams(max_new_tokens=12, **params),  # type: ignore[arg-type]
        created_at=time.time(),
    )


def test_rows_prepared_ahead_equal_rows_prepared_in_the_batch(engine: Engine, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    red = put_image(store, image_bytes("PNG", (64, 48), (220, 20, 20)))
    green = put_image(store, image_bytes("JPEG", (300, 200), (20, 220, 20)))
    jobs = [
        payload("a", "describe", [red], do_sample=True, temperature=0.8, seed=4),
        payload("b", "compare", [red, green], do_sample=True, temperature=0.9, seed=9, stop=("the",)),
        payload("c", "text only", [], seed=2),
        payload("bad", "missing image", ["0" * 64]),
    ]
    loader = ImageLoader(store, engine.settings)
    ahead = ReadAhead(engine, loader, capacity=8)
    ahead.prepare(jobs)

    fresh = ImageLoader(store, engine.settings)  # the batch's own path, for reference
    reference = {}
    for j in jobs[:3]:
        decoded = fresh.load_many(j.image_blobs)
        reference[j.id] = engine.prepare(j, [decoded[d] for d in j.image_blobs])  # type: ignore[misc]
    for j in jobs[:3]:
        row = ahead.take(j)
        assert row is not None and row.job == j
        ref = reference[j.id]
        assert torch.equal(row.input_ids, ref.input_ids)
        assert row.image_extras.keys() == ref.image_extras.keys()
        assert all(torch.equal(row.image_extras[k], ref.image_extras[k]) for k in ref.image_extras)
        assert ahead.take(j) is None  # once
    assert ahead.take(jobs[3]) is None  # could not be prepared: its batch reports the error
    assert ahead.hits == 3

    # A payload with the same id but other content never gets the row made for the first.
    ahead.prepare([jobs[0]])
    assert ahead.take(msgspec.structs.replace(jobs[0], params=SamplingParams(max_new_tokens=3))) is None


def test_a_batch_using_rows_prepared_ahead_generates_the_same_text(engine: Engine, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    blob = put_image(store, image_bytes("PNG", (80, 60), (10, 120, 200)))
    jobs = [
        payload("x1", "caption", [blob], do_sample=True, temperature=1.0, seed=31),
        payload("x2", "caption again", [blob], do_sample=True, temperature=0.7, seed=8),
        payload("x3", "no image", []),
    ]
    items = [MicroBatchItem(j, time.time()) for j in jobs]
    cold = MicroBatchRunner(engine, ImageLoader(store, engine.settings), "w").run(items)
    warm_runner = MicroBatchRunner(engine, ImageLoader(store, engine.settings), "w")
    warm_runner.read_ahead.prepare(jobs[:2])
    warm = warm_runner.run(items)
    assert warm_runner.read_ahead.hits == 2
    assert [o.text for o in warm] == [o.text for o in cold]  # type: ignore[union-attr]
