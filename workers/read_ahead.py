"""Preparing the rows of the jobs waiting next while the current micro-batch generates.

A row's preparation (images fetched and decoded, prompt rendered, tokenised, pixels resized and
normalised by the processor) does not depend on its batch-mates, so it can be done for the jobs
waiting on the queue while the current micro-batch is on the device. The micro-batch that takes those jobs
then finds their rows ready. Preparation here uses a processor and tokenizer of its own (the
model's are in use by the decoding loop) and runs one call at a time.

A row prepared here is used at most once and only for the very payload it was made from; a job
whose preparation fails here is simply prepared again with its micro-batch, which reports the error.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

from PIL import Image

from shared.contract import JobPayload
from workers.batch import PreparedRow
from workers.engine import Engine, Tools
from workers.images import ImageLoader

log = logging.getLogger("omega.worker.read_ahead")


class ReadAhead:
    def __init__(self, engine: Engine, images: ImageLoader, capacity: int) -> None:
        self.engine = engine
        self.images = images
        self.capacity = capacity
        self._rows: OrderedDict[str, PreparedRow] = OrderedDict()
        self._lock = threading.Lock()  # the store
        self._busy = threading.Lock()  # one preparation at a time: the tools are not shareable
        self._tools: Tools | None = None
        self.hits = 0  # rows a micro-batch found ready (tests, metrics)

    def prepare(self, payloads: Sequence[JobPayload]) -> None:
        todo = [p for p in payloads if not self._has(p.id)][: self.capacity]
        self.images.prefetch(d for p in todo for d in p.image_blobs)  # the loader's threads start now
        with self._busy:
            if self._tools is None:
                self._tools = self.engine.private_tools()
            loaded = self.images.load_many(d for p in todo for d in p.image_blobs)
            for payload in todo:
                images = [i for i in (loaded[d] for d in payload.image_blobs) if isinstance(i, Image.Image)]
                if len(images) != len(payload.image_blobs):
                    continue  # a missing or bad image: its micro-batch reports it
                try:
                    row = self.engine.prepare(payload, images, self._tools)
                except Exception:  # an invalid job: its micro-batch reports it
                    log.debug("read-ahead could not prepare job %s", payload.id, exc_info=True)
                    continue
                self._put(payload.id, row)

    def take(self, payload: JobPayload) -> PreparedRow | None:
        """The row prepared for exactly this payload, once; None if there is none."""
        with self._lock:
            row = self._rows.pop(payload.id, None)
        if row is None or row.job != payload:
            return None
        self.hits += 1
        return row

    def _has(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._rows

    def _put(self, job_id: str, row: PreparedRow) -> None:
        with self._lock:
            self._rows[job_id] = row
            while len(self._rows) > self.capacity:  # jobs taken by another worker, canceled, ...
                self._rows.popitem(last=False)
