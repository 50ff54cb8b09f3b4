"""The ops slice's work: the /health report (every field of the seeds' example, plus the fleet) and
the rendered chat template; /metrics and /v1/models read the fleet and settings through it."""

from __future__ import annotations

import time

import anyio.to_thread
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.chat.convert import check_model, check_size, image_refs, job_messages
from api.dispatch.fleet_view import FleetView, QueueLoad
from api.intake.images import ImageIntake
from api.ops.protocol import (
    ApplyTemplateRequest,
    ApplyTemplateResponse,
    BatchConfig,
    HealthReport,
    VLMConfig,
    WorkerReport,
)
from shared import keys, load_failures
from shared.blobstore import BlobStore
from shared.errors import InvalidRequest, ServiceError, ServiceUnavailable
from shared.fleet import WorkerInfo
from shared.prompt import render_prompt
from shared.settings import Settings

DEMO_NOTE = "demo model: random weights, its output is meaningless; set MODEL_PATH to serve a real model"


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
        engine=w.engine,
        running=w.running,
        free_slots=w.free_slots,
        kv_tokens=w.kv_tokens,
    )


class OpsService:
    """What the ops routes read: the settings, the fleet, Redis and the blob store."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        fleet: FleetView,
        blob_store: BlobStore,
        intake: ImageIntake,
        started_at: float,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.fleet = fleet
        self.blob_store = blob_store
        self.intake = intake
        self.started_at = started_at  # when this API process started: /v1/models' `created`

    async def _recorded_load_failure(self) -> str | None:
        """Why no worker could load the model, after the failed workers' own records expired."""
        try:
            return await load_failures.latest(self.redis)
        except (RedisError, TimeoutError):
            return None

    async def health(self) -> HealthReport:
        s = self.settings
        redis_state = "ok"
        try:
            workers: list[WorkerInfo] = await self.fleet.live_workers(fresh=True, include_failed=True)
            loads = await self.fleet.loads([w for w in workers if w.state != "failed"])
            lane = int(await self.redis.llen(keys.BATCH_LANE)) + int(await self.redis.llen(keys.AWAITING_WORKER))
            lane += await self.fleet.stranded([w for w in workers if w.state != "failed"])
        except (RedisError, TimeoutError):
            workers, loads, lane, redis_state = [], [], 0, "unavailable"
        blob_state = "ok"
        try:
            await anyio.to_thread.run_sync(self.blob_store.check)
        except ServiceError:
            blob_state = "unavailable"
        ready = [w for w in workers if w.ready]
        failed = [w for w in workers if w.state == "failed" or (w.state == "loading" and w.error)]
        startup_error = await self._recorded_load_failure() if not ready and not failed else None
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
            accepting=redis_state == "ok" and blob_state == "ok",
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

    async def apply_template(self, data: ApplyTemplateRequest) -> ApplyTemplateResponse:
        """The exact prompt text a worker would feed the model, from a live worker's template."""
        model = check_model(data.model, self.settings)
        check_size(data.messages, self.settings)
        refs = image_refs(data.messages)
        self.intake.check_refs(refs)
        card = next((w.model for w in await self.fleet.live_workers() if w.model is not None), None)
        if card is None:
            raise ServiceUnavailable("no worker has loaded the model yet; retry shortly", code="no_workers")
        if refs and not card.supports_images:
            raise InvalidRequest("this model does not accept images", param="messages", code="images_not_supported")
        # Images only need their place in the template, not their bytes.
        messages = job_messages(data.messages, ["template"] * len(refs))
        # Jinja is Python code: in a thread it yields the GIL every few ms, so the loop stays live.
        prompt = await anyio.to_thread.run_sync(render_prompt, card.chat_template, card.template_kwargs, messages)
        return ApplyTemplateResponse(prompt=prompt, model=model)
