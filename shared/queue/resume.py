"""A worker resuming its queue after its loop was interrupted (a Redis outage or failover), and
whenever it is idle (`QueueWorker.reconcile`).

The interrupted loop may have started jobs it never ran: the start pipeline reached Redis (and,
after a failover, the promoted replica) but its reply did not reach the worker. Those jobs carry
this worker's name, so the janitor, which requeues only jobs of dead workers, would never touch
them. When the loop restarts nothing is in hand, so every job still started under this worker's
name is abandoned: it goes back to the front of its queue and runs again (at least once). The
same holds whenever the worker is between units of work: after a failover the promoted replica may
show jobs started whose finish it never got, although the worker's loop carried on.
"""

from __future__ import annotations

import logging

from rq.job import JobStatus as RqStatus
from rq.registry import StartedJobRegistry
from rq.worker import SimpleWorker

from shared.queue import jobs
from shared.serializer import MsgpackSerializer

log = logging.getLogger("omega.worker.rq")


def requeue_own_started(worker: SimpleWorker) -> int:
    """Put back every job still started under this worker's name; returns how many."""
    moved = 0
    for queue in worker.queues:
        registry = StartedJobRegistry(queue.name, connection=worker.connection, serializer=MsgpackSerializer)
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            job = jobs.fetch(worker.connection, job_id)
            if job is not None and job.worker_name != worker.name:
                continue  # another process's: the janitor's to judge
            if job is not None and job.get_status() == RqStatus.STARTED:
                # Queued again before it leaves the registry: a crash here loses nothing.
                jobs.enqueue_on(worker.connection, queue.name, job, at_front=True)
                moved += 1
            # Gone, or ended already (an entry a retried start left behind): nothing to run.
            worker.connection.zrem(registry.key, f"{job_id}:{execution_id}")
    if moved:
        log.warning("put %d job(s) started under this worker's name but not in its hands back on the queue", moved)
    return moved
