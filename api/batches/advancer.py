"""Runs OpenAI batches: validating -> in_progress -> finalizing -> completed (or failed, cancelled, expired).

Every API process runs this loop; a per-batch lock (redis-py's Lock) with a short expiry makes one process advance
a batch at a time, and another take over if it dies. Progress is kept in Redis, so nothing is
lost across restarts:

- validating: the input file is read once to count its lines;
- in_progress: lines are turned into batch-priority jobs a few at a time, only while fewer than
  BATCH_EXPAND_AHEAD of the batch's jobs are unfinished, so a 10,000-line file is never held in
  memory or queued at once. Job ids are derived from the line number and each line's entry is
  written with HSETNX, so a line re-read after a crash never becomes a second job;
- cancelling / expiry: no more lines; queued jobs are canceled, running ones asked to stop;
- finalizing: output and error JSONL are written line by line to temporary files and stored as
  files (purpose batch_output); the exact counts come from that pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec
from redis import Redis as SyncRedis
from redis.exceptions import LockError

from api.background import run_forever
from api.batches.lines import (
    LineError,
    LineReader,
    RawLine,
    count_lines,
    failure_line,
    line_error_line,
    parse_line,
    success_line,
)
from api.batches.record import BatchRecord
from api.batches.service import BatchService
from api.chat.protocol import ChatCompletionRequest
from api.chat.service import build_chat_job, completion
from api.dispatch.dispatcher import Dispatcher
from api.files.service import FileService
from api.intake.images import ImageIntake
from api.jobs.service import JobService
from shared import keys
from shared.blobstore import BlobNotFound
from shared.contract import CANCELED, EXPIRED, FINAL_BATCH_STATUSES, JobError, JobMeta, JobResult
from shared.errors import ServiceError
from shared.queue import jobs
from shared.queue.outcomes import Outcome, read_snapshot
from shared.redis_text import text, texts
from shared.settings import Settings

log = logging.getLogger("omega.api.batches")
LOCK_S = 30.0
LINES_PER_STEP = 32
ITEM_PREFIX_ERROR = "!"

# Set fields only if the batch is still in the expected status (a cancel may race a transition).
_TRANSITION = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class BatchAdvancer:
    """Moves every active OpenAI batch forward a bounded step at a time (one per lock held)."""

    def __init__(
        self,
        settings: Settings,
        redis: Any,
        sync_redis: SyncRedis,
        batches: BatchService,
        files: FileService,
        jobs: JobService,
        dispatcher: Dispatcher,
        intake: ImageIntake,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sync_redis = sync_redis
        self.batches = batches
        self.files = files
        self.jobs = jobs
        self.dispatcher = dispatcher
        self.intake = intake
        self.readers: dict[str, LineReader] = {}
        self._transition = redis.register_script(_TRANSITION)

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        await run_forever("batch runner", self._tick, log)

    async def _tick(self) -> float:
        return 0.02 if await self.tick() else 0.25

    async def tick(self) -> bool:
        busy = False
        for batch_id in texts(await self.redis.zrange(keys.BATCHES_ACTIVE, 0, -1)):
            # One process advances a batch at a time; the lock expires if that process dies.
            lock = self.redis.lock(keys.batch_lock(batch_id), timeout=LOCK_S, blocking=False, thread_local=False)
            if not await lock.acquire():
                continue
            try:
                busy |= await self.step(batch_id)
            finally:
                try:
                    await lock.release()  # token-checked: never another process's lock
                except LockError:
                    log.warning("batch %s: lock expired during a step", batch_id)
        return busy

    async def step(self, batch_id: str) -> bool:
        """Advance one batch by a bounded amount of work; True if there is more to do at once."""
        try:
            record = await self.batches.record(batch_id)
        except ServiceError:
            await self.redis.zrem(keys.BATCHES_ACTIVE, batch_id)
            return False
        status = record.status
        if status in FINAL_BATCH_STATUSES:
            await self.redis.zrem(keys.BATCHES_ACTIVE, batch_id)
            self._drop_reader(batch_id)
            return False
        if status == "validating":
            await self._validate(record)
            return True
        if status == "cancelling":
            return await self._stop(record, "cancelled")
        if status == "in_progress" and (record.text("stop_as") or time.time() > record.number("expires_at")):
            return await self._stop(record, record.text("stop_as") or "expired")
        if status == "in_progress":
            return await self._progress(record)
        if status == "finalizing":
            await self._finalize(record)
        return False

    async def _set(self, record: BatchRecord, expected: str, **fields: Any) -> bool:
        args = [expected]
        for name, value in fields.items():
            args += [name, str(value)]
        return bool(await self._transition(keys=[keys.batch_record(record.id)], args=args))

    # --- validating ----------------------------------------------------------------------------
    async def _fail(self, record: BatchRecord, code: str, message: str) -> None:
        errors = msgspec.json.encode({"object": "list", "data": [{"code": code, "message": message}]}).decode()
        await self._set(record, record.status, status="failed", failed_at=int(time.time()), errors=errors)

    def _count(self, file_id: str) -> int:
        stream = self.files.open(file_id)
        try:
            return count_lines(stream)
        finally:
            stream.close()

    async def _validate(self, record: BatchRecord) -> None:
        file_id = record.text("input_file_id") or ""
        try:
            total = await anyio.to_thread.run_sync(self._count, file_id)
        except BlobNotFound:
            await self._fail(record, "input_file_missing", f"input file {file_id} no longer exists")
            return
        if total == 0:
            await self._fail(record, "empty_file", "the input file has no requests")
        elif total > self.settings.max_batch_lines:
            await self._fail(
                record,
                "too_many_requests",
                f"{total} requests; at most {self.settings.max_batch_lines} per batch (MAX_BATCH_LINES)",
            )
        else:
            await self._set(record, "validating", status="in_progress", total=total, in_progress_at=int(time.time()))

    # --- in progress ---------------------------------------------------------------------------
    def _reader(self, record: BatchRecord) -> LineReader:
        offset, line = record.number("expanded_offset"), record.number("expanded_lines")
        reader = self.readers.get(record.id)
        if reader is None or reader.offset != offset:  # first time here, or another process moved on
            self._drop_reader(record.id)
            stream = self.files.open(record.text("input_file_id") or "", offset)
            reader = self.readers[record.id] = LineReader(stream, offset, line, self.settings.max_request_bytes)
        return reader

    def _drop_reader(self, batch_id: str) -> None:
        reader = self.readers.pop(batch_id, None)
        if reader is not None:
            reader.close()

    async def _progress(self, record: BatchRecord) -> bool:
        if not record.number("expansion_done"):
            room = self.settings.batch_expand_ahead - record.outstanding
            if room > 0:
                reader = await anyio.to_thread.run_sync(self._reader, record)
                lines = await anyio.to_thread.run_sync(reader.read, min(room, LINES_PER_STEP))
                if lines:
                    await self._expand(record, lines)
                    await self.redis.hset(
                        keys.batch_record(record.id),
                        mapping={"expanded_offset": lines[-1].end_offset, "expanded_lines": lines[-1].number},
                    )
                    return True
                await self.redis.hset(keys.batch_record(record.id), "expansion_done", 1)
                self._drop_reader(record.id)
            return False
        if record.outstanding == 0:
            await self._set(record, "in_progress", status="finalizing", finalizing_at=int(time.time()))
            return True
        return False

    async def _expand(self, record: BatchRecord, lines: list[RawLine]) -> None:
        outcomes = await asyncio.gather(*(self._line(record, line) for line in lines))
        for line, outcome in zip(lines, outcomes, strict=True):
            value = outcome if isinstance(outcome, str) else ITEM_PREFIX_ERROR + msgspec.json.encode(outcome).decode()
            if await self.redis.hsetnx(keys.batch_items(record.id), str(line.number), value):
                counter = "submitted" if isinstance(outcome, str) else "line_errors"
                await self.redis.hincrby(keys.batch_record(record.id), counter, 1)

    async def _line(self, record: BatchRecord, line: RawLine) -> str | LineError:
        """The job id a line became (submitted once, whatever happens), or its error."""
        job_id = f"{record.id}-{line.number}"
        parsed = parse_line(line, record.text("endpoint") or "", self.settings.max_request_bytes)
        if isinstance(parsed, LineError):
            return parsed
        custom_id, body = parsed
        owners = keys.batch_custom_ids(record.id)
        if not await self.redis.hsetnx(owners, custom_id, line.number):
            first = await self.redis.hget(owners, custom_id)
            if int(first or 0) != line.number:
                return LineError(
                    line.number,
                    custom_id,
                    "duplicate_custom_id",
                    f"custom_id {custom_id!r} was already used on line {int(first or 0)}",
                    "custom_id",
                )
        if await anyio.to_thread.run_sync(jobs.exists, self.sync_redis, job_id):
            return job_id
        try:
            request = msgspec.convert(body, ChatCompletionRequest)
            payload, model = await build_chat_job(
                request,
                self.settings,
                self.intake,
                None,
                job_id=job_id,
                expires_at=record.number("expires_at"),
                batch_id=record.id,
            )
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `$.")
            param = where.rstrip("`") or None
            return LineError(
                line.number, custom_id, "invalid_request", f"{param}: {message}" if param else message, param
            )
        except ServiceError as exc:
            return LineError(line.number, custom_id, exc.code or exc.error_type, exc.message, exc.param)
        meta = JobMeta(
            model=model,
            created_at=payload.created_at,
            priority="batch",
            expires_at=payload.expires_at,
            batch_id=record.id,
            custom_id=custom_id,
        )
        await self.dispatcher.submit(payload, meta, self.settings.job_result_ttl_s)
        return job_id

    # --- cancelling and expiry ---------------------------------------------------------------
    async def _stop(self, record: BatchRecord, final: str) -> bool:
        if not record.number("stop_sent"):
            await self.redis.hset(
                keys.batch_record(record.id), mapping={"expansion_done": 1, "stop_as": final, "stop_sent": 1}
            )
            self._drop_reader(record.id)
            for job_id in await self._job_ids(record.id):
                await self.jobs.stop(job_id)
            return True
        if record.outstanding == 0:
            await self._set(record, record.status, status="finalizing", finalizing_at=int(time.time()), final_as=final)
            return True
        return False

    async def _job_ids(self, batch_id: str) -> list[str]:
        values = texts(await self.redis.hvals(keys.batch_items(batch_id)))
        return [v for v in values if not v.startswith(ITEM_PREFIX_ERROR)]

    # --- finalizing ----------------------------------------------------------------------------
    def _outcome(self, job_id: str) -> tuple[JobMeta | None, Outcome | None, float]:
        snap = read_snapshot(self.sync_redis, job_id, self.settings.model_name)
        if snap is None:
            return None, None, 0.0
        return snap.meta, snap.outcome, snap.ended_at or time.time()

    def _write(self, record: BatchRecord, out_path: Path, err_path: Path) -> dict[str, int]:
        """Write the output and error files line by line; returns the exact counts."""
        items = {int(k): text(v) for k, v in self.sync_redis.hgetall(keys.batch_items(record.id)).items()}
        custom_ids = {text(v): text(k) for k, v in self.sync_redis.hgetall(keys.batch_custom_ids(record.id)).items()}
        stopped = record.text("final_as")
        counts = {"completed": 0, "failed": 0, "canceled": 0, "line_errors": 0}
        with out_path.open("w") as out, err_path.open("w") as err:
            for number in sorted(items):
                value = items[number]
                if value.startswith(ITEM_PREFIX_ERROR):
                    error = msgspec.json.decode(value[1:], type=LineError)
                    err.write(json.dumps(line_error_line(record.id, error)) + "\n")
                    counts["line_errors"] += 1
                    continue
                meta, outcome, ended = self._outcome(value)
                custom_id = meta.custom_id if meta else custom_ids.get(str(number))
                if isinstance(outcome, JobResult) and meta is not None:
                    body = completion(value, meta.model, outcome, ended - meta.created_at, created=meta.created_at)
                    out.write(json.dumps(success_line(value, custom_id or "", msgspec.to_builtins(body))) + "\n")
                    counts["completed"] += 1
                    continue
                if not isinstance(outcome, JobError):
                    code = f"batch_{stopped}" if stopped else "result_missing"
                    outcome = JobError(
                        status=500, type="server_error", code=code, message=f"no result for this request (job {value})"
                    )
                elif stopped and outcome.code in (CANCELED, EXPIRED):
                    outcome = JobError(
                        status=outcome.status,
                        type=outcome.type,
                        param=outcome.param,
                        code=f"batch_{stopped}",
                        message=f"the batch was {stopped} before this request ran",
                    )
                err.write(json.dumps(failure_line(value, custom_id, outcome.status, outcome.body()["error"])) + "\n")
                counts["canceled" if outcome.code and outcome.code.startswith("batch_") else "failed"] += 1
        return counts

    async def _finalize(self, record: BatchRecord) -> None:
        with tempfile.TemporaryDirectory(prefix="omega-batch-") as tmp:
            out_path, err_path = Path(tmp) / "output.jsonl", Path(tmp) / "errors.jsonl"
            counts = await anyio.to_thread.run_sync(self._write, record, out_path, err_path)
            fields: dict[str, Any] = dict(counts)
            if counts["completed"]:
                fields["output_file_id"] = (
                    await self.files.store_output(str(out_path), f"{record.id}_output.jsonl")
                ).id
            if err_path.stat().st_size:
                fields["error_file_id"] = (await self.files.store_output(str(err_path), f"{record.id}_error.jsonl")).id
        final = record.text("final_as") or "completed"
        fields.update(status=final, **{f"{final}_at": int(time.time())})
        if await self._set(record, "finalizing", **fields):
            await self.redis.zrem(keys.BATCHES_ACTIVE, record.id)
            await self._cleanup(record.id)

    async def _cleanup(self, batch_id: str) -> None:
        """The per-line bookkeeping is not needed once the files exist; it expires with the results."""
        ttl = self.settings.job_result_ttl_s
        for key in (keys.batch_items(batch_id), keys.batch_custom_ids(batch_id), keys.batch_counted(batch_id)):
            await self.redis.expire(key, ttl)
