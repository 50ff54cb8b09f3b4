"""A stopping worker bounds its own drain: after SIGTERM it finishes its rows for at most
WORKER_STOP_GRACE_S (+ workers/main.py DRAIN_OVERRUN_S), then leaves by itself.

Seen here: a test's `make run` supervisor died while its worker decoded 32 rows of 8,000 tokens;
PR_SET_PDEATHSIG sent the worker SIGTERM, nobody was left to kill it at the grace's end, and it
drained for 35 minutes on a core the next runs needed. What it leaves running is not lost: the
janitor puts the job back on a queue."""

from __future__ import annotations

import signal
import time

from redis import Redis
from rq.job import Job

from shared.serializer import MsgpackSerializer
from tests.support.procs import wait_for
from tests.support.stack import StackFactory
from workers.main import DRAIN_OVERRUN_S, EXIT_DRAIN_OVERDUE

GRACE_S = 1.0


def test_a_worker_told_to_stop_leaves_by_itself_when_its_rows_outlast_the_grace(stacks: StackFactory) -> None:
    stack = stacks.get("drain-deadline", workers=1, WORKER_STOP_GRACE_S=str(GRACE_S), MAX_NEW_TOKENS_DEFAULT="8000")
    worker = stack.workers[0]
    with stack.client() as c:
        body = {"messages": [{"role": "user", "content": "a very long answer"}], "max_tokens": 8000, "min_tokens": 8000}
        job = c.post("/v1/jobs", json=body).json()
        wait_for(lambda: c.get(job["poll_url"]).json()["status"] == "running", 60, "the job to run")
        worker.signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert worker.process is not None
        code = worker.process.wait(GRACE_S + DRAIN_OVERRUN_S + 30)
        took = time.monotonic() - stopped
        assert code == EXIT_DRAIN_OVERDUE, worker.log()[-2000:]
        assert took >= GRACE_S + DRAIN_OVERRUN_S - 1, took  # the rows had their grace first
        assert "exiting now; the janitor requeues them" in worker.log()
        # Not lost: once a worker is live again, the janitor puts the job on its queue, one attempt up.
        stack.start_worker(1)
        redis = Redis.from_url(stack.redis_url)
        wait_for(lambda: attempts(redis, job["id"]) == 1, 120, "the job to be put back on a live queue")
        assert c.delete(job["poll_url"]).status_code == 200


def attempts(redis: Redis, job_id: str) -> int:
    return int(Job.fetch(job_id, connection=redis, serializer=MsgpackSerializer).meta.get("attempts", 0))
