"""How far one Redis carries the service: jobs/s through the admission script and the workers'
bookkeeping, with no model.

A private redis-server configured as shipped (append-only, fsync on every write) is loaded by
- producers: asyncio tasks running the API's admission script (shared/queue/admission.py) over
  Q worker queues, as API processes do for every interactive request;
- synthetic workers: processes running the real MicroBatchWorker (pull, start, finish in one
  pipeline each, results on each job's stream) with a handler that answers at once.

It reports admission jobs/s as the queue count grows (the script reads every candidate queue),
drain jobs/s through the workers' bookkeeping, Redis' memory per finished job (job hash, results
stream, registry entries: what RESULT_TTL_S / JOB_RESULT_TTL_S keep) and its connections.
    python -m benchmarks.redis_scale [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from omega_vlm.redis_server import free_port, redis_binary, wait_until_reachable
from shared.contract import JobError, JobMeta, JobPayload, JobResult, Message, SamplingParams, TextPart
from shared.fleet import WorkerInfo
from shared.queue import jobs
from shared.queue.admission import Admitter
from shared.queue.worker import MicroBatch, MicroBatchWorker
from shared.serializer import MsgpackSerializer

PRODUCERS = 32  # concurrent admissions, as many requests in flight across API processes


class Instant:
    """A micro-batch handler that answers every job at once: only the bookkeeping is measured."""

    def run(self, batch: MicroBatch) -> list[JobResult | JobError]:
        return [JobResult(text="ok", finish_reason="stop", prompt_tokens=4, completion_tokens=1) for _ in batch.jobs]

    def failed(self, exc: Exception, job_id: str) -> JobError:
        return JobError(status=500, type="server_error", message=str(exc))

    def recorded(self, outcomes: list[JobResult | JobError], written: bool) -> None:
        pass


def fleet(queues: int) -> list[WorkerInfo]:
    return [
        WorkerInfo(
            id=f"bench-{i}",
            queue=f"omega.bench-{i}",
            host="bench",
            pid=i,
            device="cpu",
            device_name="cpu",
            capacity=8,
            state="ready",
            started_at=0.0,
            heartbeat_at=time.time(),
        )
        for i in range(queues)
    ]


def payload(i: int) -> JobPayload:
    return JobPayload(
        id=f"scale-{i}",
        messages=(Message("user", (TextPart(f"redis scale request {i}"),)),),
        params=SamplingParams(max_new_tokens=16),
        created_at=time.time(),
    )


async def admit_all(url: str, first: int, count: int, workers: list[WorkerInfo]) -> float:
    """Admit `count` jobs from PRODUCERS concurrent tasks; returns the wall seconds."""
    redis = Redis.from_url(url, max_connections=PRODUCERS * 2)
    sync = SyncRedis.from_url(url)
    admitter = Admitter(redis, max_queue_size=10**9)
    meta = JobMeta(model="m", created_at=time.time())
    built = [jobs.create(sync, payload(first + i), meta, 3600, 600) for i in range(count)]
    todo = iter(built)

    async def producer() -> None:
        for job in todo:  # one shared iterator: each job is admitted once
            await admitter.admit(job, workers)

    start = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(PRODUCERS)))
    wall = time.perf_counter() - start
    await redis.aclose()
    sync.close()
    return wall


def work_queue(url: str, queue: str, batch: int) -> None:
    """One synthetic worker: the real rq worker and bookkeeping, burst mode (ends when empty)."""
    conn = SyncRedis.from_url(url)
    worker = MicroBatchWorker(
        [queue],
        connection=conn,
        handler=Instant(),
        max_batch_size=batch,
        batch_timeout_ms=0,
        serializer=MsgpackSerializer,
    )
    worker.work(burst=True, logging_level="WARNING")


def drain(url: str, workers: list[WorkerInfo], batch: int) -> tuple[float, int]:
    """Every queue drained by its own worker process: (wall seconds, most connections seen)."""
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=work_queue, args=(url, w.queue, batch)) for w in workers]
    probe = SyncRedis.from_url(url)
    peak = 0
    start = time.perf_counter()
    for process in processes:
        process.start()
    while any(process.is_alive() for process in processes):
        peak = max(peak, int(probe.info("clients")["connected_clients"]) - 1)  # not the probe itself
        time.sleep(0.1)
    wall = time.perf_counter() - start
    probe.close()
    return wall, peak


@dataclass
class PrivateRedis:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, folder: Path, fsync: str) -> PrivateRedis:
        port = free_port()
        argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        argv += ["--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--loglevel", "warning"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_reachable(f"redis://127.0.0.1:{port}/0")
        return cls(port, process)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def measure(quick: bool, fsync: str = "always") -> list[str]:
    per_run = 1500 if quick else 12000
    queue_counts = (1, 16, 64) if quick else (1, 16, 64, 256)
    with tempfile.TemporaryDirectory() as tmp:
        server = PrivateRedis.start(Path(tmp), fsync)
        try:
            sync = SyncRedis.from_url(server.url)
            rows = [
                "| worker queues | admission jobs/s | worker bookkeeping jobs/s (a worker per queue, micro-batch 8) |"
            ]
            rows.append("|---|---|---|")
            memory: list[float] = []
            keys_per_job: list[float] = []
            connections: dict[int, int] = {}
            first = 0
            for count in queue_counts:
                workers = fleet(count)
                sync.flushdb()
                base = int(sync.info("memory")["used_memory"])
                admit_s = asyncio.run(admit_all(server.url, first, per_run, workers))
                drain_s = None
                if count <= 16:
                    drain_s, peak = drain(server.url, workers, 8)
                    connections[count] = peak
                    memory.append((int(sync.info("memory")["used_memory"]) - base) / per_run)
                    keys_per_job.append(sync.dbsize() / per_run)
                drained = f"{per_run / drain_s:.0f}" if drain_s is not None else "not run (16 processes at most)"
                rows.append(f"| {count} | {per_run / admit_s:.0f} | {drained} |")
                first += per_run
            maxclients = int(sync.config_get("maxclients").get("maxclients") or 0)
        finally:
            server.stop()
    return [
        f"One redis-server (`appendonly yes`, `appendfsync {fsync}`"
        f"{', as shipped' if fsync == 'always' else ''}), {per_run} jobs per row, "
        f"{PRODUCERS} concurrent admissions from one asyncio process; the synthetic workers run the real "
        "MicroBatchWorker (pull, start and finish pipelines, a result on each job's stream) with a "
        "handler that answers at once. Clients, workers and Redis share this machine's cores.",
        "",
        *rows,
        "",
        f"- Redis memory per finished job: **{max(memory) / 1024:.1f} KiB** (job hash, results stream, "
        f"finished-registry entry; {max(keys_per_job):.1f} keys per job), held for RESULT_TTL_S / JOB_RESULT_TTL_S.",
        "- Connections while the workers drained: "
        + ", ".join(f"{n} worker(s): {peak}" for n, peak in connections.items())
        + f" (Redis allows maxclients={maxclients}). Each API process holds up to 256 command connections "
        "plus one per waiting synchronous request (blocking pool, up to 4096).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and queue counts (a smoke run)")
    parser.add_argument("--appendfsync", default="always", choices=("always", "everysec"))
    args = parser.parse_args()
    print("\n".join(measure(args.quick, args.appendfsync)))


if __name__ == "__main__":
    main()
