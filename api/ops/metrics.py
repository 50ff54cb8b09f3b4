"""GET /metrics: one Prometheus scrape of any API process shows the whole fleet.

- the API's own HTTP metrics (Litestar's Prometheus middleware: requests by route and status,
  latency histograms) and rejections by reason (counted in api/errors.py, in the default registry);
- fleet gauges read from Redis at scrape time: waiting and in-flight jobs per queue, the age of
  the oldest waiting job, the batch lane, workers by state;
- every live worker's own metrics (batch sizes, generate seconds, tokens, time to first token,
  images, GPU memory), which workers publish to Redis with their heartbeat; they are merged here
  into one family each, labelled by `worker`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from api.ops.service import OpsService
from shared import keys
from shared.fleet import WorkerInfo
from shared.queue import names
from shared.redis_text import text as as_text

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: list[str | float] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name="omega-vlm", prefix="omega_api", group_path=True, buckets=LATENCY_BUCKETS, exclude=["/metrics"]
    )


def _age(stamp: Any, now: float) -> float:
    if not stamp:
        return 0.0
    try:
        return max(0.0, now - datetime.fromisoformat(as_text(stamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0.0


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge_worker_metrics(expositions: dict[str, bytes]) -> list[Metric]:
    """One family per metric name, with each worker's samples labelled by its id."""
    merged: dict[str, Metric] = {}
    for worker, text in sorted(expositions.items()):
        for family in text_string_to_metric_families(as_text(text)):
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                target.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)
    return list(merged.values())


class FleetMetrics:
    def __init__(self, svc: OpsService) -> None:
        self.svc = svc

    async def families(self) -> list[Metric]:
        svc, redis = self.svc, self.svc.redis
        workers = await svc.fleet.live_workers(fresh=True, include_failed=True)
        live = [w for w in workers if w.state in ("loading", "ready")]
        loads = await svc.fleet.loads(live)
        stranded = await svc.fleet.stranded(live)
        async with redis.pipeline(transaction=False) as pipe:
            for load in loads:
                pipe.lindex(names.queue_key(load.worker.queue), 0)
            pipe.llen(keys.AWAITING_WORKER)
            pipe.llen(keys.BATCH_LANE)
            pipe.lindex(keys.BATCH_LANE, 0)
            pipe.mget([keys.worker_metrics(w.id) for w in live] or ["-"])
            replies = await pipe.execute()
        heads, awaiting, lane_length, lane_head, snapshots = replies[: len(loads)], *replies[-4:]
        async with redis.pipeline(transaction=False) as pipe:
            for head in heads:
                pipe.hget(names.job_key(as_text(head)) if head else "-", "enqueued_at")
            pipe.hget(names.job_key(as_text(lane_head)) if lane_head else "-", "created_at")
            stamps = await pipe.execute()
        now = time.time()
        families: list[Metric] = []
        waiting = GaugeMetricFamily(
            "omega_queue_waiting_jobs", "Jobs waiting on a worker queue", labels=["queue", "worker"]
        )
        running = GaugeMetricFamily(
            "omega_queue_in_flight_jobs", "Jobs a worker is running", labels=["queue", "worker"]
        )
        oldest = GaugeMetricFamily(
            "omega_queue_oldest_job_age_seconds", "Age of the oldest waiting job", labels=["queue", "worker"]
        )
        for load, stamp in zip(loads, stamps, strict=False):
            labels = [load.worker.queue, load.worker.id]
            waiting.add_metric(labels, load.waiting)
            running.add_metric(labels, load.in_flight)
            oldest.add_metric(labels, _age(stamp, now) if load.waiting else 0.0)
        families += [waiting, running, oldest]
        families.append(
            GaugeMetricFamily(
                "omega_batch_lane_jobs", "Batch-priority jobs not yet on a worker queue", value=lane_length
            )
        )
        families.append(
            GaugeMetricFamily(
                "omega_batch_lane_oldest_job_age_seconds",
                "Age of the oldest job in the batch lane",
                value=_age(stamps[-1], now) if lane_length else 0.0,
            )
        )
        families.append(
            GaugeMetricFamily(
                "omega_awaiting_worker_jobs", "Jobs accepted while no worker was live, waiting for one", value=awaiting
            )
        )
        families.append(
            GaugeMetricFamily(
                "omega_stranded_jobs", "Jobs on gone workers' queues, until the janitor moves them", value=stranded
            )
        )
        families.append(
            GaugeMetricFamily(
                "omega_queue_waiting_jobs_total",
                "All waiting work: worker queues, the batch lane, jobs awaiting a worker and stranded jobs "
                "(autoscaling signal)",
                value=sum(q.waiting for q in loads) + lane_length + awaiting + stranded,
            )
        )
        families += self._workers(workers)
        expositions = {w.id: raw for w, raw in zip(live, snapshots or [], strict=False) if raw}
        return families + merge_worker_metrics(expositions)

    @staticmethod
    def _workers(workers: list[WorkerInfo]) -> list[Metric]:
        states = GaugeMetricFamily("omega_workers", "Workers by state", labels=["state"])
        for state in ("loading", "ready", "failed"):
            states.add_metric([state], sum(1 for w in workers if w.state == state))
        capacity = GaugeMetricFamily("omega_worker_capacity", "A worker's batch size", labels=["worker", "device"])
        batch_time = GaugeMetricFamily(
            "omega_worker_avg_batch_seconds", "Moving average of a batch's wall time", labels=["worker", "device"]
        )
        for w in workers:
            capacity.add_metric([w.id, w.device], w.capacity)
            batch_time.add_metric([w.id, w.device], w.avg_batch_seconds)
        return [states, capacity, batch_time]

    async def render(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(await self.families()))
        return generate_latest(REGISTRY) + generate_latest(registry)


class MetricsController(Controller):
    path = "/metrics"
    tags = ["health"]

    @get("", summary="Prometheus metrics of this API process and the whole worker fleet", include_in_schema=False)
    async def metrics(self, ops_service: NamedDependency[OpsService]) -> Response[bytes]:
        return Response(await FleetMetrics(ops_service).render(), media_type=CONTENT_TYPE)
