"""What a worker tells the fleet about itself, renewed by its heartbeat.

A worker writes its `WorkerInfo` under `keys.worker_info(id)` with a TTL and scores itself in the
`keys.WORKERS` sorted set by heartbeat time. The API reads both to route jobs to live workers and
to answer /health; it also takes the chat template from here, so `/v1/apply_template` renders
exactly what the worker feeds the model.
"""

from __future__ import annotations

from typing import Literal

import msgspec

WorkerState = Literal["loading", "ready", "failed", "stopping"]


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    path: str | None  # None when REDACT_SOURCE hides it
    demo: bool
    dtype: str  # e.g. "torch.bfloat16", as the seeds' /health shows it
    attn: str
    chat_template: str
    template_kwargs: dict[str, str] = {}
    supports_images: bool = True
    image_token: str | None = None
    max_model_length: int = 0
    transformers_version: str = ""


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    queue: str
    host: str
    pid: int
    device: str
    device_name: str
    capacity: int  # MAX_BATCH_SIZE of this worker
    state: WorkerState
    started_at: float
    heartbeat_at: float
    error: str | None = None
    model: ModelCard | None = None
    # Moving average of one micro-batch's wall time: the API's wait estimates use it (the wire
    # name predates the word "micro-batch" and stays, so old and new processes read each other).
    avg_batch_seconds: float = 0.0
    # The continuous engine's load, renewed with each heartbeat (defaults: what an older or a
    # static worker means): rows decoding now, slots free for more, KV tokens the running rows
    # may reach (the figure MAX_BATCH_TOKENS bounds).
    engine: str = "static"
    running: int = 0
    free_slots: int = 0
    kv_tokens: int = 0

    @property
    def rq_name(self) -> str:
        """The rq worker name of this process (a restart on the same device gets a new one)."""
        return f"{self.id}.{self.pid}"

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.model is not None


_info_decoder = msgspec.msgpack.Decoder(WorkerInfo)


def encode_info(info: WorkerInfo) -> bytes:
    return msgspec.msgpack.encode(info)


def decode_info(data: bytes | str) -> WorkerInfo | None:
    """None for a record this version cannot read (e.g. written by a much newer worker)."""
    try:
        return _info_decoder.decode(data.encode() if isinstance(data, str) else data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
