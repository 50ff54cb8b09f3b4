"""Every Redis key and queue name of the service's own, in one place (rq's keys: shared/queue/names.py)."""

from __future__ import annotations

PREFIX = "omega"

# Sorted set: worker id -> unix time of its last heartbeat.
WORKERS = f"{PREFIX}:workers"

# rq's function path for a chat/generate job. Workers run jobs in batches and never import it by
# name; it exists so that a stray plain `rq worker` on our queue fails loudly instead of silently.
JOB_FUNC = "workers.rq_entry.run_outside_batch_worker"


def worker_info(worker_id: str) -> str:
    """String key: the worker's msgpack `WorkerInfo`, expiring unless the heartbeat renews it."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_metrics(worker_id: str) -> str:
    """String key: the worker's Prometheus exposition, merged into the API's /metrics."""
    return f"{PREFIX}:metrics:{worker_id}"


def worker_queue(worker_id: str) -> str:
    """rq queue name of one worker process (one per GPU)."""
    return f"{PREFIX}.{worker_id}"


def queue_worker(queue_name: str) -> str:
    """The worker id a queue of ours belongs to (inverse of `worker_queue`)."""
    return queue_name.removeprefix(f"{PREFIX}.")


# --- jobs ---------------------------------------------------------------------------------
# List of job ids of batch-priority work not yet on a worker queue (fed by api.dispatch.feeder).
BATCH_LANE = f"{PREFIX}:lane:batch"
# Ids the feeder has taken from the lane but not yet enqueued (recovered after a crash).
BATCH_LANE_FEEDING = f"{PREFIX}:lane:batch:feeding"
FEEDER_LOCK = f"{PREFIX}:lock:feeder"
# List of ids of interactive jobs (/v1/jobs) accepted while no worker was live; the feeder moves
# them onto worker queues, ahead of the batch lane, once one is (api.dispatch.feeder).
AWAITING_WORKER = f"{PREFIX}:lane:awaiting-worker"


def lane_for(priority: str) -> str:
    """The list a job not yet on a worker queue waits in: the batch lane, or awaiting a worker."""
    return BATCH_LANE if priority == "batch" else AWAITING_WORKER


# Set of job ids whose cancellation was requested while they may be running.
CANCEL_REQUESTS = f"{PREFIX}:cancel"


def job_stream(job_id: str) -> str:
    """Redis stream of a streaming job's text deltas (entries {"d": text})."""
    return f"{PREFIX}:stream:{job_id}"


def idempotency(key_digest: str) -> str:
    return f"{PREFIX}:idempotency:{key_digest}"


# --- files and batches --------------------------------------------------------------------
FILES_INDEX = f"{PREFIX}:files"  # sorted set: file id -> created_at
BATCHES_INDEX = f"{PREFIX}:batches"  # sorted set: batch id -> created_at
BATCHES_ACTIVE = f"{PREFIX}:batches:active"  # sorted set of batches not yet final


def file_record(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}"


def file_blob(file_id: str) -> str:
    """Blob-store key of a file's bytes."""
    return f"files/{file_id}"


def batch_record(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_items(batch_id: str) -> str:
    """Hash: input line number -> the job id it became, or `!` + the JSON `LineError` of a line
    that never became a job (written once per line with HSETNX)."""
    return f"{PREFIX}:batch:{batch_id}:items"


def batch_custom_ids(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:custom-ids"


def batch_counted(batch_id: str) -> str:
    """Set of the job ids a batch's counters already hold: a job run twice (at least once, e.g.
    after a Redis failover) is counted once."""
    return f"{PREFIX}:batch:{batch_id}:counted"


def batch_lock(batch_id: str) -> str:
    return f"{PREFIX}:lock:batch:{batch_id}"
