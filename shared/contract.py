"""The contract between the API and the workers: what a job carries and what comes back.

Jobs hold image *references* (content-addressed blob keys), never pixels, and travel as msgpack
(see `shared.serializer`), never pickle. Unknown fields are ignored on decode so that API and
worker images can roll out separately.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class TextPart(msgspec.Struct, tag="text", tag_field="type", frozen=True):
    text: str


class ImagePart(msgspec.Struct, tag="image", tag_field="type", frozen=True):
    blob: str  # sha256 hex of the image bytes in the blob store


Part = TextPart | ImagePart


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: tuple[Part, ...]

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.content if isinstance(p, ImagePart))


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """Per-row generation parameters, already resolved against the server defaults."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Accepted for OpenAI/seeds compatibility; only beam search uses it and rows decode one beam.
    length_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


JobKind = Literal["chat", "generate"]
Priority = Literal["interactive", "batch"]

# Error codes that are final states of their own rather than failures (see api.jobs).
CANCELED = "job_canceled"
EXPIRED = "job_expired"

# --- vocabulary: each defined here once -------------------------------------------------------
# A job's state as clients see it (GET /v1/jobs), derived from its queue status and its outcome.
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]
FINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset({"succeeded", "failed", "canceled", "expired"})
# What DELETE /v1/jobs/{id} did.
CancelReason = Literal["canceled_before_start", "stopped_while_running", "finished_before_cancel", "cancel_requested"]
# An OpenAI batch's status (the Batch API's own words; "cancelled" with two l's, as OpenAI spells it).
BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
FINAL_BATCH_STATUSES: frozenset[BatchStatus] = frozenset({"failed", "completed", "expired", "cancelled"})
# A batch that takes no new jobs: its waiting jobs are canceled instead of run.
STOPPING_BATCH_STATUSES: frozenset[BatchStatus] = frozenset({"cancelling", "cancelled", "expired", "failed"})
# Which of an OpenAI batch's counters a job that ended bumps.
BatchCounter = Literal["completed", "failed", "canceled"]


class JobPayload(msgspec.Struct, frozen=True, kw_only=True):
    """One request, as a worker runs it. `prompt` is raw text (kind generate), else `messages`."""

    id: str
    kind: JobKind = "chat"
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    params: SamplingParams
    created_at: float
    # A job not started by this unix time is never run; it ends "expired".
    expires_at: float | None = None
    batch_id: str | None = None  # the OpenAI batch this job belongs to (its counters), if any
    # Publish the text as it is generated (keys.job_stream); the result still carries all of it.
    stream: bool = False

    @property
    def image_blobs(self) -> tuple[str, ...]:
        return tuple(p.blob for m in self.messages for p in m.images)


FinishReason = Literal["stop", "length"]


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    truncated_prompt_tokens: int = 0
    queue_seconds: float = 0.0
    generation_seconds: float = 0.0
    first_token_seconds: float | None = None
    # The micro-batch (what one worker ran at once) this job ran in; the msgpack names stay
    # "batch_id"/"batch_size" so workers and APIs of either version read each other's results.
    micro_batch_id: str = msgspec.field(default="", name="batch_id")
    micro_batch_size: int = msgspec.field(default=1, name="batch_size")
    worker: str = ""
    seed: int | None = None


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a job failed, in the terms the API answers with (HTTP status + OpenAI error fields)."""

    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def outcome_status(outcome: JobResult | JobError) -> JobStatus:
    """The final status an outcome means: canceled and expired are error codes of their own."""
    if isinstance(outcome, JobResult):
        return "succeeded"
    return "canceled" if outcome.code == CANCELED else "expired" if outcome.code == EXPIRED else "failed"


def batch_counter(outcome: JobResult | JobError) -> BatchCounter:
    """Which of an OpenAI batch's counters a job that ended with `outcome` bumps."""
    status = outcome_status(outcome)
    return "completed" if status == "succeeded" else "canceled" if status in ("canceled", "expired") else "failed"


def canceled_error(job_id: str, running: bool) -> JobError:
    where = "while it was running" if running else "before it started"
    return JobError(status=409, type="canceled_error", message=f"job {job_id} was canceled {where}", code=CANCELED)


def expired_error(job_id: str) -> JobError:
    return JobError(status=408, type="expired_error", message=f"job {job_id} expired before it started", code=EXPIRED)


class JobMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What the API remembers about a job beside its payload (stored in rq's job meta)."""

    model: str
    created_at: float
    priority: Priority = "interactive"
    expires_at: float | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    metadata: dict[str, str] = {}


def encode(value: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(value)


_payload_decoder = msgspec.msgpack.Decoder(JobPayload)
_result_decoder = msgspec.msgpack.Decoder(JobResult)
_error_decoder = msgspec.json.Decoder(JobError)


def decode_payload(data: bytes) -> JobPayload:
    return _payload_decoder.decode(data)


def decode_result(data: bytes) -> JobResult:
    return _result_decoder.decode(data)


def encode_error(error: JobError) -> str:
    """Errors travel as JSON text in rq's `exc_string` slot (rq stores it as text)."""
    return msgspec.json.encode(error).decode()


def decode_error(text: str) -> JobError | None:
    """The stored error, or None when the failure was not written by our worker (e.g. a crash)."""
    try:
        return _error_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
