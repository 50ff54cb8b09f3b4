"""rq's Redis key names for our queues and jobs, taken from rq itself so the two never drift apart.

Nothing outside shared/queue/ spells an rq key: callers ask here.
"""

from __future__ import annotations

from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from shared import keys

# rq's set of every queue's key (`rq:queues`).
QUEUES: str = Queue.redis_queues_keys
_QUEUE_PREFIX: str = Queue.redis_queue_namespace_prefix


def queue_key(queue_name: str) -> str:
    """rq's list of a queue's waiting job ids."""
    return _QUEUE_PREFIX + queue_name


def queue_name(key: str) -> str:
    """The queue name of one of rq's queue keys (inverse of `queue_key`)."""
    return key.removeprefix(_QUEUE_PREFIX)


def is_ours(queue_name: str) -> bool:
    """Whether a queue is one of our worker queues (rq's set may list others)."""
    return queue_name.startswith(f"{keys.PREFIX}.")


def intermediate_key(queue_name: str) -> str:
    """rq's list of ids a worker has pulled (LMOVE) but not yet started."""
    return str(IntermediateQueue.get_intermediate_queue_key(queue_key(queue_name)))


def started_key(queue_name: str) -> str:
    """rq's started registry of a queue (entries `job_id:execution_id`): what is in flight."""
    return str(StartedJobRegistry.key_template.format(queue_name))


def other_registry_keys(queue_name: str) -> list[str]:
    """rq's registries of a queue besides the started one (removed with a retired queue)."""
    registries = (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry, DeferredJobRegistry)
    return [str(r.key_template.format(queue_name)) for r in (*registries, ScheduledJobRegistry)]


def job_key(job_id: str) -> str:
    """rq's hash of one job."""
    return str(Job.redis_job_namespace_prefix) + job_id


def results_key(job_id: str) -> str:
    """rq's results stream of a job; every final state appends to it, and waiters XREAD it."""
    return str(Result.get_key(job_id))
