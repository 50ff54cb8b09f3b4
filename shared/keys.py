"""Every Redis key and queue name the service uses, in one place."""

from __future__ import annotations

from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.results import Result

PREFIX = "omega"

# Sorted set: worker id -> unix time of its last heartbeat.
WORKERS = f"{PREFIX}:workers"

# rq's function path for a chat/generate job. Workers run jobs in batches and never import it by
# name; it exists so that a stray plain `rq worker` on our queue fails loudly instead of silently.
JOB_FUNC = "workers.rq_entry.run_outside_batch_worker"


def worker_info(worker_id: str) -> str:
    """String key: the worker's msgpack `WorkerInfo`, expiring unless the heartbeat renews it."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_queue(worker_id: str) -> str:
    """rq queue name of one worker process (one per GPU)."""
    return f"{PREFIX}.{worker_id}"


def rq_queue_key(queue_name: str) -> str:
    """rq's list key for a queue name (taken from rq so the two never drift apart)."""
    return str(Queue.redis_queue_namespace_prefix) + queue_name


def rq_started_key(queue_name: str) -> str:
    return str(StartedJobRegistry.key_template.format(queue_name))


def rq_results_key(job_id: str) -> str:
    """rq's results stream for a job; the API blocks on it with XREAD."""
    return str(Result.get_key(job_id))


def stat_counter(name: str) -> str:
    return f"{PREFIX}:stats:{name}"
