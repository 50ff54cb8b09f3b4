"""GET /health (every field of the seeds' example, plus the fleet), /livez and /readyz probes."""

from __future__ import annotations

import time

import anyio.to_thread
import msgspec
from litestar import Controller, Response, get
from litestar.di import Provide
from redis.exceptions import RedisError

from api.fleet_view import QueueLoad
from api.services import Services, get_services
from shared import keys, load_failures
from shared.errors import ServiceError
from shared.fleet import WorkerInfo

DEMO_NOTE = "demo model: random weights, its output is meaningless; set MODEL_PATH to serve a real model"


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


class HealthReport(msgspec.Struct):
    model_name: str
    model_path: str | None
    demo_model: bool
    note: str | None
    devices: list[str]
    device_names: list[str]
    visible_cuda_devices: int
    queues: list[int]
    ready: bool
    startup_ok: bool
    startup_error: str | None
    overloaded: bool
    max_queue_size: int
    dtype: str | None
    attn: str | None
    batch: BatchConfig
    vlm_config: VLMConfig
    workers: list[WorkerReport]
    # All waiting work: every worker queue plus the batch lane (what an autoscaler scales on).
    waiting_jobs: int
    redis: str
    blob_store: str


def _worker_report(load: QueueLoad, now: float) -> WorkerReport:
    w = load.worker
    return WorkerReport(
        id=w.id,
        queue=w.queue,
        device=w.device,
        device_name=w.device_name,
        state=w.state,
        capacity=w.capacity,
        waiting=load.waiting,
        in_flight=load.in_flight,
        heartbeat_age_seconds=round(now - w.heartbeat_at, 3),
    )


async def _recorded_load_failure(svc: Services) -> str | None:
    """Why no worker could load the model, after the failed workers' own records expired."""
    try:
        return await load_failures.latest(svc.redis)
    except (RedisError, TimeoutError):
        return None


async def build_report(svc: Services) -> HealthReport:
    s = svc.settings
    redis_state = "ok"
    try:
        workers: list[WorkerInfo] = await svc.fleet.live_workers(fresh=True, include_failed=True)
        loads = await svc.fleet.loads([w for w in workers if w.state != "failed"])
        lane = int(await svc.redis.llen(keys.BATCH_LANE))
    except (RedisError, TimeoutError):
        workers, loads, lane, redis_state = [], [], 0, "unavailable"
    blob_state = "ok"
    try:
        await anyio.to_thread.run_sync(svc.blob_store.check)
    except ServiceError:
        blob_state = "unavailable"
    ready = [w for w in workers if w.ready]
    failed = [w for w in workers if w.state == "failed" or (w.state == "loading" and w.error)]
    startup_error = await _recorded_load_failure(svc) if not ready and not failed else None
    card = ready[0].model if ready else None
    demo = card.demo if card else s.uses_demo_model
    now = time.time()
    return HealthReport(
        model_name=s.model_name,
        model_path=card.path if card else (None if s.redact_source else s.resolved_model_path),
        demo_model=demo,
        note=DEMO_NOTE if demo else None,
        devices=[w.device for w in ready],
        device_names=[w.device_name for w in ready],
        visible_cuda_devices=sum(1 for w in ready if w.device.startswith("cuda")),
        queues=[q.waiting for q in loads],
        ready=bool(ready) and redis_state == "ok" and blob_state == "ok",
        startup_ok=not failed and startup_error is None,
        startup_error=failed[0].error if failed else startup_error,
        overloaded=bool(loads) and all(q.waiting >= s.max_queue_size for q in loads),
        max_queue_size=s.max_queue_size,
        dtype=card.dtype if card else None,
        attn=card.attn if card else None,
        batch=BatchConfig(max_batch_size=s.max_batch_size, batch_timeout_ms=s.batch_timeout_ms),
        vlm_config=VLMConfig(
            max_model_length=s.max_model_length,
            max_image_size=s.max_image_size,
            max_images_per_request=s.max_images_per_request,
            allow_remote_images=s.allow_remote_images,
        ),
        workers=[_worker_report(q, now) for q in loads],
        waiting_jobs=sum(q.waiting for q in loads) + lane,
        redis=redis_state,
        blob_store=blob_state,
    )


class HealthController(Controller):
    path = "/"
    tags = ["health"]
    dependencies = {"svc": Provide(get_services, sync_to_thread=False)}

    @get("/health", summary="Service health (open even when API_KEY is set)")
    async def health(self, svc: Services) -> HealthReport:
        return await build_report(svc)

    @get("/livez", summary="Liveness probe: the API process answers", include_in_schema=False)
    async def livez(self) -> dict[str, bool]:
        return {"alive": True}

    @get("/readyz", summary="Readiness probe: Redis reachable and a worker ready", include_in_schema=False)
    async def readyz(self, svc: Services) -> Response[dict[str, object]]:
        report = await build_report(svc)
        body: dict[str, object] = {
            "ready": report.ready,
            "redis": report.redis,
            "blob_store": report.blob_store,
            "workers_ready": len(report.devices),
        }
        return Response(body, status_code=200 if report.ready else 503)
