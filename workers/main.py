"""Worker process entry: one process per GPU (or per CPU worker), model resident, one rq queue."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import torch
from redis import Redis
from redis.exceptions import RedisError

from shared import keys, load_failures
from shared.blobstore import create_blob_store
from shared.exit_codes import EXIT_DRAIN_OVERDUE, EXIT_START_FAILED
from shared.fleet import WorkerInfo
from shared.logs import StartupHeartbeat, configure_logging, progress
from shared.queue.continuous import FEED_SOCKET_TIMEOUT_S
from shared.queue.worker import DEQUEUE_WAIT_S, QueueWorker
from shared.redis_connect import RedisTarget, sync_client
from shared.settings import Settings
from workers import metrics
from workers import progress as loop_progress
from workers.continuous.serving import StepServer, continuous_worker
from workers.decode_floor import decode_floor
from workers.demo_model import ensure_demo_model
from workers.engine import Engine
from workers.fleet_member import FleetMember
from workers.images import ImageLoader
from workers.loader import load_model
from workers.micro_batches import model_worker
from workers.model_source import ModelLoadError
from workers.probes import ProbeState, start_probes
from workers.progress import waiting as progress_waiting
from workers.runner import MicroBatchRunner
from workers.streaming import DeltaPublisher

log = logging.getLogger("omega.worker")


def device_label(device: torch.device, index: int) -> str:
    """'cuda0' / 'cpu1': stable per machine, so a restarted worker resumes its own queue."""
    return f"cuda{device.index or 0}" if device.type == "cuda" else f"cpu{index}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return "cpu"


# Longer than any reply the worker waits for: its blocking pulls (DEQUEUE_WAIT_S, the batch window).
SOCKET_MARGIN_S = 20.0


def redis_client(settings: Settings, socket_timeout: float | None = None) -> Redis:
    # Bounded timeouts: a dead Redis, or a connection whose peer vanished without a reset, must
    # surface as an error, never as a wait forever. With Sentinel, a connection error (or a
    # READONLY reply from a demoted primary) makes the next connection ask for the primary again;
    # the worker's wait for jobs then puts back what the failover left in flight (`reconcile`).
    longest_wait_s = max(float(DEQUEUE_WAIT_S), settings.batch_timeout_ms / 1000.0)
    return sync_client(
        RedisTarget.from_settings(settings),
        socket_connect_timeout=3,
        socket_timeout=socket_timeout if socket_timeout is not None else longest_wait_s + SOCKET_MARGIN_S,
        health_check_interval=15,
        retry_on_timeout=False,
    )


# A stopping worker's own deadline comes this long after WORKER_STOP_GRACE_S, so that a supervisor
# (`up`, Kubernetes) that is there kills it first, as it always did.
DRAIN_OVERRUN_S = 10.0


def bound_the_drain(seconds: float) -> None:
    """After SIGTERM the running rows finish, but not for ever: when nobody is left to kill this
    process at the grace's end (its supervisor died, and PR_SET_PDEATHSIG sent the SIGTERM), it
    leaves by itself. What it was running is not lost: its heartbeat stops, and the janitor puts
    its started jobs back on a queue (counted as an attempt, as a kill would be)."""

    def overdue() -> None:
        log.error("still finishing rows %.0f s after SIGTERM: exiting now; the janitor requeues them", seconds)
        logging.shutdown()
        os._exit(EXIT_DRAIN_OVERDUE)

    timer = threading.Timer(seconds, overdue)
    timer.daemon = True
    timer.start()


def run_worker(settings: Settings, device: torch.device, index: int = 0, cpu_threads: int | None = None) -> int:
    """Load the model on `device` and serve this worker's queue until SIGTERM/SIGINT."""
    label = device_label(device, index)
    configure_logging(settings, f"worker-{label}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif cpu_threads:
        torch.set_num_threads(cpu_threads)
    # WORKER_NAME (the pod name in Kubernetes) names the queue; a restart under the same name
    # resumes it, and the janitor retires the queues of names gone for good.
    worker_id = f"{settings.worker_name or socket.gethostname()}-{label}"
    queue_name = keys.worker_queue(worker_id)
    redis = redis_client(settings)
    info = WorkerInfo(
        id=worker_id,
        queue=queue_name,
        host=socket.gethostname(),
        pid=os.getpid(),
        device=str(device),
        device_name=device_name(device),
        capacity=settings.max_batch_size,
        engine=settings.engine,
        free_slots=settings.max_batch_size,
        state="loading",
        started_at=time.time(),
        heartbeat_at=time.time(),
        # A restart after a failed start: the API does not route here until this start succeeds.
        error=_previous_failure(redis, worker_id),
    )
    member = FleetMember(redis, info, period_s=settings.worker_heartbeat_s, ttl_s=settings.worker_ttl_s)
    member.start()
    probes = ProbeState(settings.worker_stall_s)
    probe_server = start_probes(probes, settings.host, settings.worker_probe_port, index)
    number = (device.index or 0) if device.type == "cuda" else index
    tag = f"[startup][{device.type}:{number}]"
    import transformers

    log.info("[server] transformers %s from %s", transformers.__version__, transformers.__file__)
    try:
        with StartupHeartbeat(settings.progress_logs and settings.log_format == "text"):  # dots are not JSON
            if settings.uses_demo_model:  # built here, by the first worker to start (`up` does not)
                ensure_demo_model(settings.demo_model_dir, lambda: progress(f"{tag} Generating the demo model…"))
            loaded = load_model(settings, device, lambda msg: progress(f"{tag} {msg}"))
            engine = Engine(loaded, settings, DeltaPublisher(redis))
            progress(f"{tag} Warmup…")
            engine.warmup()
            progress(f"{tag} torch.compile={'on' if engine.compiled else 'off'}")
    except Exception as exc:
        log.error("worker %s failed to start: %s", worker_id, exc, exc_info=settings.debug)
        reason = failure_reason(exc, settings)
        member.update(state="failed", error=reason)
        member.stop()
        _record_failure(redis, worker_id, reason)
        return EXIT_START_FAILED
    progress(f"{tag} Ready.")
    if loaded.card.demo:
        log.warning("serving the generated DEMO model: random weights, its output is meaningless")
    images = ImageLoader(create_blob_store(settings), settings, floor=decode_floor(loaded.processor))
    rq_options: dict[str, Any] = {
        "name": info.rq_name,
        "max_batch_size": settings.max_batch_size,
        "batch_timeout_ms": settings.batch_timeout_ms,
        "default_result_ttl": settings.result_ttl_s,
        "worker_ttl": max(30, int(settings.worker_ttl_s * 3)),
        "job_monitoring_interval": max(5, int(settings.worker_heartbeat_s * 2)),
    }
    worker: QueueWorker
    if settings.engine == "continuous":
        server = StepServer(
            engine,
            images,
            redis,
            worker_id,
            on_load=lambda load: member.set_load(load.running, load.free_slots, load.kv_tokens),
            on_row=member.record_micro_batch,
        )
        # The feeder thread's own client: its blocking pulls are bounded, so a socket timeout
        # turns a connection to a vanished primary into an error it retries, never a hang.
        feed = redis_client(settings, socket_timeout=FEED_SOCKET_TIMEOUT_S)
        cworker = continuous_worker([queue_name], connection=redis, server=server, feed_connection=feed, **rq_options)
        # /livez also fails when the feeder thread died or stopped coming back from its pulls.
        probes.stalled_s = lambda: max(loop_progress.stalled_s(), cworker.pull_stalled_s())
        worker = cworker
    else:
        runner = MicroBatchRunner(engine, images, worker_id)
        worker = model_worker(
            [queue_name],
            connection=redis,
            runner=runner,
            on_micro_batch=lambda _size, seconds: member.record_micro_batch(seconds),
            **rq_options,
        )
    member.on_beat = worker.maintain_running_heartbeats
    worker.on_wait = progress_waiting  # /livez sees a wait for jobs that never returns

    # SIGUSR1 (Kubernetes' preStop): drain. The API stops routing here and the janitor moves the
    # waiting jobs to other workers; the micro-batch in hand finishes; SIGTERM then stops the process.
    def drain(*_: object) -> None:
        member.update(state="stopping")
        probes.set_state("stopping")

    signal.signal(signal.SIGUSR1, drain)
    worker.on_stop_requested = lambda: bound_the_drain(settings.worker_stop_grace_s + DRAIN_OVERRUN_S)
    member.metrics = lambda: publish_metrics(device)
    member.update(state="ready", model=loaded.card, error=None)
    probes.set_state("ready")
    _clear_failure(redis, worker_id)
    log.info(
        "worker %s ready on queue %s (%s, %s, attn=%s, engine=%s)",
        worker_id,
        queue_name,
        info.device_name,
        loaded.card.dtype,
        loaded.attn,
        settings.engine,
    )
    try:
        serve(worker, settings)
    finally:
        probes.set_state("stopping")
        member.leave()
        if probe_server is not None:
            probe_server.stop()
    return 0


def failure_reason(exc: Exception, settings: Settings) -> str:
    """What /health and 503s say. REDACT_SOURCE hides messages that may name paths, except the
    loader's own plain errors (ModelLoadError names the setting to change and redacts itself)."""
    if isinstance(exc, ModelLoadError):
        return str(exc)
    if not settings.redact_source:
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def _previous_failure(redis: Redis, worker_id: str) -> str | None:
    try:
        return load_failures.previous(redis, worker_id)
    except RedisError:
        return None


def _record_failure(redis: Redis, worker_id: str, reason: str) -> None:
    try:
        load_failures.record(redis, worker_id, reason)
    except RedisError as exc:
        log.warning("could not record the failed start in Redis: %s", exc)


def _clear_failure(redis: Redis, worker_id: str) -> None:
    try:
        load_failures.clear(redis, worker_id)
    except RedisError as exc:
        log.warning("could not clear the earlier failed start in Redis: %s", exc)


def publish_metrics(device: torch.device) -> bytes:
    if device.type == "cuda":
        metrics.GPU_MEMORY.labels("allocated").set(torch.cuda.memory_allocated(device))
        metrics.GPU_MEMORY.labels("reserved").set(torch.cuda.memory_reserved(device))
    return metrics.snapshot()


def serve(worker: QueueWorker, settings: Settings) -> None:
    """rq's work loop, started again whenever it ends for any reason but a stop request
    (rq leaves its loop on Redis errors): the worker outlives a Redis outage."""
    while not worker.shutdown_requested:
        try:
            worker.restart_record()
            worker.reconcile()  # pulled or started before an interruption, never run
            worker.work(logging_level="DEBUG" if settings.debug else "WARNING")
        except (RedisError, OSError, ValueError) as exc:
            log.warning("worker loop interrupted (%s); reconnecting", exc)
        if not worker.shutdown_requested:
            time.sleep(1)
