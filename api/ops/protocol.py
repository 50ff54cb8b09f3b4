"""The ops slice's wire types: /health, /v1/models and /v1/apply_template."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from api.chat.protocol import ChatMessage


# --- /health ------------------------------------------------------------------------------
class BatchConfig(msgspec.Struct):
    max_batch_size: int
    batch_timeout_ms: float


class VLMConfig(msgspec.Struct):
    max_model_length: int
    max_image_size: int
    max_images_per_request: int
    allow_remote_images: bool


class WorkerReport(msgspec.Struct):
    id: str
    queue: str
    device: str
    device_name: str
    state: str
    capacity: int
    waiting: int
    in_flight: int
    heartbeat_age_seconds: float
    # The continuous engine's load as of the worker's last heartbeat (a static worker: 0, 0, 0).
    engine: str = "static"
    running: int = 0
    free_slots: int = 0
    kv_tokens: int = 0


class HealthReport(msgspec.Struct):
    model_name: str
    model_path: str | None
    demo_model: bool
    note: str | None
    devices: list[str]
    device_names: list[str]
    visible_cuda_devices: int
    queues: list[int]
    ready: bool  # the fleet can serve: Redis, blob store and at least one ready worker
    startup_ok: bool
    startup_error: str | None
    overloaded: bool
    max_queue_size: int
    dtype: str | None
    attn: str | None
    batch: BatchConfig
    vlm_config: VLMConfig
    workers: list[WorkerReport]
    # All waiting work: every worker queue, the batch lane and the jobs awaiting a worker (what
    # an autoscaler scales on).
    waiting_jobs: int
    redis: str
    blob_store: str
    # This API process can accept and store requests (Redis and blob store reachable): /readyz.
    accepting: bool = True


# --- /v1/models ---------------------------------------------------------------------------
class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "omega-vlm"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


# --- /v1/apply_template -------------------------------------------------------------------
class ApplyTemplateRequest(msgspec.Struct, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    model: str | None = None


class ApplyTemplateResponse(msgspec.Struct):
    prompt: str
    model: str
