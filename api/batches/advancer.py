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
  files (purpose batch_output); the exact counts come from that pass. A cancelled or expired
  batch accounts for every input line: lines never expanded get a `batch_cancelled` /
  `batch_expired` error row.

Isolation: an exception while turning one line into a job, or while writing one result, becomes
that line's error row. An exception while advancing one batch is logged and counted on the
batch (after MAX_STEP_ERRORS it is failed) and the loop goes on with the other batches. Only an
outage (Redis or the blob store unreachable, Redis full) stops the whole tick: nothing can
progress then, and no batch is blamed for it.
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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
from api.batches.prejudge import Prejudge, Refused, first_checks, service_error_line
from api.batches.record import BatchRecord
from api.batches.service import BatchService
from api.chat.service import build_chat_job, completion
from api.dispatch.dispatcher import Dispatcher
from api.errors import redis_is_full
from api.files.service import FileService
from api.intake.images import ImageIntake
from api.jobs.service import JobService
from shared import keys
from shared.blobstore import BlobNotFound, BlobStoreUnavailable
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
MAX_STEP_ERRORS = 5  # unexpected errors advancing one batch before it is failed
# (status, type) of a line a stopped batch never ran, as canceled_error / expired_error give jobs.
UNRUN_ERRORS = {"cancelled": (409, "canceled_error"), "expired": (408, "expired_error")}

# Set fields only if the batch is still in the expected status (a cancel may race a transition).
_TRANSITION = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def stopped_error(stopped: str, status: int, error_type: str) -> JobError:
    """The error of a request that never ran (or was stopped) because its batch was cancelled or expired."""
    return JobError(
        status=status,
        type=error_type,
        code=f"batch_{stopped}",
        message=f"the batch was {stopped} before this request ran",
    )


def is_outage(exc: BaseException) -> bool:
    """Trouble no batch is to blame for: Redis or the blob store unreachable, or Redis full."""
    if redis_is_full(exc):
        return True
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, BlobStoreUnavailable, OSError, TimeoutError))


# A line parsed: (custom_id, body), why it is not a request, why its request is refused (judged
# in the helper process without being parsed here: api/batches/prejudge.py), or what parsing raised.
Parsed = tuple[str, dict[str, Any]] | LineError | Refused | Exception


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
        self.prejudge = Prejudge(settings)
        self._transition = redis.register_script(_TRANSITION)

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await run_forever("batch runner", self._tick, log)
        finally:
            self.prejudge.close()

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
                busy |= await self._isolated_step(batch_id)
            finally:
                try:
                    await lock.release()  # token-checked: never another process's lock
                except LockError:
                    log.warning("batch %s: lock expired during a step", batch_id)
        return busy

    async def _isolated_step(self, batch_id: str) -> bool:
        """`step`, with anything but an outage kept to this batch: logged, counted, and after
        MAX_STEP_ERRORS the batch fails; the caller goes on with the other batches."""
        try:
            return await self.step(batch_id)
        except Exception as exc:
            if is_outage(exc):
                raise
            log.exception("batch %s: advancing it failed", batch_id)
            errors = int(await self.redis.hincrby(keys.batch_record(batch_id), "step_errors", 1))
            if errors >= MAX_STEP_ERRORS:
                await self._give_up(batch_id, exc)
            return False

    async def _give_up(self, batch_id: str, exc: Exception) -> None:
        """A batch that keeps failing: stop it and write what it has, or fail it outright if even
        that (validating or finalizing) is what fails."""
        self._drop_reader(batch_id)
        fields = {text(k): text(v) for k, v in (await self.redis.hgetall(keys.batch_record(batch_id))).items()}
        record = BatchRecord(fields)
        if record.status == "in_progress" and not record.text("stop_as"):
            log.error("batch %s: stopping it after %d errors", batch_id, MAX_STEP_ERRORS)
            await self.redis.hset(keys.batch_record(batch_id), mapping={"stop_as": "failed", "step_errors": 0})
            return
        log.error("batch %s: failing it after %d errors", batch_id, MAX_STEP_ERRORS)
        await self._fail(record, "internal_error", f"the batch could not be processed ({type(exc).__name__})")
        await self.redis.zrem(keys.BATCHES_ACTIVE, batch_id)

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

    async def _lane_room(self) -> int:
        """Jobs the batch lane can still take (BATCH_LANE_MAX): beyond it lines wait unexpanded
        in their file, and the batch waits; it is never refused."""
        return self.settings.batch_lane_max - int(await self.redis.llen(keys.BATCH_LANE))

    async def _progress(self, record: BatchRecord) -> bool:
        if not record.number("expansion_done"):
            room = min(self.settings.batch_expand_ahead - record.outstanding, await self._lane_room())
            if room > 0:
                reader = await anyio.to_thread.run_sync(self._reader, record)
                lines = await anyio.to_thread.run_sync(
                    reader.read, min(room, LINES_PER_STEP), self.settings.max_request_bytes
                )
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
        parsed = await self._parse_each(record, lines)
        results = await asyncio.gather(
            *(self._line(record, line, p) for line, p in zip(lines, parsed, strict=True)), return_exceptions=True
        )
        outages: list[BaseException] = []
        for line, result in zip(lines, results, strict=True):
            if isinstance(result, BaseException):
                if is_outage(result) or not isinstance(result, Exception):
                    outages.append(result)  # this line is read again when the step is retried
                    continue
                log.error("batch %s line %d: %r", record.id, line.number, result)
                result = LineError(line.number, None, "internal_error", "the request could not be processed")
            outcome = result
            value = outcome if isinstance(outcome, str) else ITEM_PREFIX_ERROR + msgspec.json.encode(outcome).decode()
            if await self.redis.hsetnx(keys.batch_items(record.id), str(line.number), value):
                counter = "submitted" if isinstance(outcome, str) else "line_errors"
                await self.redis.hincrby(keys.batch_record(record.id), counter, 1)
        if outages:
            raise outages[0]

    async def _parse_each(self, record: BatchRecord, lines: list[RawLine]) -> list[Parsed]:
        """Each line parsed in its own turn of the event loop. Parsing holds the GIL (a thread
        would not help), so a line over PREJUDGE_BYTES is first judged in the helper process and
        parsed here only if its request passes the first checks; one turn per line keeps a step
        of such lines from stalling every other request behind all of them at once."""
        endpoint = record.text("endpoint") or ""
        parsed: list[Parsed] = []
        for line in lines:
            try:
                verdict = await self.prejudge.judge(line, endpoint) if self.prejudge.wants(line) else None
                if verdict is None:  # small, or passed the first checks: parsed here to become a job
                    parsed.append(parse_line(line, endpoint, self.settings.max_request_bytes))
                else:
                    parsed.append(verdict)
            except Exception as exc:  # becomes this line's error row (_expand)
                parsed.append(exc)
            await asyncio.sleep(0)
        return parsed

    async def _line(self, record: BatchRecord, line: RawLine, parsed: Parsed) -> str | LineError:
        """The job id a line became (submitted once, whatever happens), or its error."""
        job_id = f"{record.id}-{line.number}"
        if isinstance(parsed, Exception):
            raise parsed
        if isinstance(parsed, LineError):
            return parsed
        custom_id, body = (parsed.custom_id, None) if isinstance(parsed, Refused) else parsed
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
        if isinstance(parsed, Refused):
            return parsed.error
        assert body is not None
        try:
            return await self._submit(record, line, custom_id, body, job_id)
        except Exception as exc:
            if is_outage(exc):
                raise
            log.exception("batch %s line %d: could not become a job", record.id, line.number)
            return LineError(
                line.number, custom_id, "internal_error", f"the request could not be processed ({type(exc).__name__})"
            )

    async def _submit(
        self, record: BatchRecord, line: RawLine, custom_id: str, body: dict[str, Any], job_id: str
    ) -> str | LineError:
        request = first_checks(line.number, custom_id, body, self.settings)
        if isinstance(request, LineError):
            return request
        try:
            payload, model = await build_chat_job(
                request,
                self.settings,
                self.intake,
                None,
                job_id=job_id,
                expires_at=record.number("expires_at"),
                batch_id=record.id,
            )
        except ServiceError as exc:
            return service_error_line(line.number, custom_id, exc)
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
                try:
                    kind, row = self._row(record, value, custom_ids.get(str(number)), stopped)
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    # One unreadable result must not cost the batch its other results.
                    log.exception("batch %s line %d: its result could not be written", record.id, number)
                    kind, row = "failed", self._unreadable_row(value, custom_ids.get(str(number)))
                (out if kind == "completed" else err).write(json.dumps(row) + "\n")
                counts[kind] += 1
            if stopped:
                for kind, row in self._unexpanded_rows(record, stopped):
                    err.write(json.dumps(row) + "\n")
                    counts[kind] += 1
        return counts

    def _row(
        self, record: BatchRecord, value: str, custom_id: str | None, stopped: str | None
    ) -> tuple[str, dict[str, Any]]:
        """(count it belongs to, output or error row) of one recorded line."""
        if value.startswith(ITEM_PREFIX_ERROR):
            error = msgspec.json.decode(value[1:], type=LineError)
            return "line_errors", line_error_line(record.id, error)
        meta, outcome, ended = self._outcome(value)
        custom_id = meta.custom_id if meta else custom_id
        if isinstance(outcome, JobResult) and meta is not None:
            body = completion(value, meta.model, outcome, ended - meta.created_at, created=meta.created_at)
            return "completed", success_line(value, custom_id or "", msgspec.to_builtins(body))
        if not isinstance(outcome, JobError):
            code = f"batch_{stopped}" if stopped else "result_missing"
            outcome = JobError(
                status=500, type="server_error", code=code, message=f"no result for this request (job {value})"
            )
        elif stopped and outcome.code in (CANCELED, EXPIRED):
            outcome = stopped_error(stopped, outcome.status, outcome.type)
        kind = "canceled" if outcome.code and outcome.code.startswith("batch_") else "failed"
        return kind, failure_line(value, custom_id, outcome.status, outcome.body()["error"])

    @staticmethod
    def _unreadable_row(job_id: str, custom_id: str | None) -> dict[str, Any]:
        error = JobError(
            status=500, type="server_error", code="result_unreadable", message="the result could not be read"
        )
        return failure_line(job_id, custom_id, error.status, error.body()["error"])

    def _unexpanded_rows(self, record: BatchRecord, stopped: str) -> list[tuple[str, dict[str, Any]]]:
        """Rows for the input lines a stopped batch never turned into jobs, so that the output and
        error files together account for every line of the input."""
        try:
            stream = self.files.open(record.text("input_file_id") or "", record.number("expanded_offset"))
        except BlobNotFound:
            log.warning("batch %s: input file gone; its unexpanded lines get no rows", record.id)
            return []
        # A line over the limit is its line_too_large row here too, never joined and parsed whole.
        offset, expanded = record.number("expanded_offset"), record.number("expanded_lines")
        reader = LineReader(stream, offset, expanded, self.settings.max_request_bytes)
        rows: list[tuple[str, dict[str, Any]]] = []
        try:
            while lines := reader.read(LINES_PER_STEP):
                for line in lines:
                    rows.append(self._unexpanded_row(record, line, stopped))
        finally:
            reader.close()
        return rows

    def _unexpanded_row(self, record: BatchRecord, line: RawLine, stopped: str) -> tuple[str, dict[str, Any]]:
        job_id = f"{record.id}-{line.number}"
        maybe_submitted = line.number <= record.number("expanded_lines") + LINES_PER_STEP
        if maybe_submitted and jobs.exists(self.sync_redis, job_id):
            # Submitted by a step that died before recording it: its result counts like any other.
            return self._row(record, job_id, None, stopped)
        parsed = parse_line(line, record.text("endpoint") or "", self.settings.max_request_bytes)
        if isinstance(parsed, LineError):
            return "line_errors", line_error_line(record.id, parsed)
        error = stopped_error(stopped, *UNRUN_ERRORS.get(stopped, (500, "server_error")))
        return "canceled", failure_line(job_id, parsed[0], error.status, error.body()["error"])

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
