"""The seeds' per-request metric lines ("[req] chat 200 id=… latency=… tps=…"), on PROGRESS_LOGS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared.contract import JobResult, SamplingParams
from shared.errors import ServiceError
from shared.logs import progress


def log_success(
    route: str, job_id: str, latency_s: float, model: str, result: JobResult, params: SamplingParams
) -> None:
    tps = result.completion_tokens / result.generation_seconds if result.generation_seconds > 0 else 0.0
    progress(
        f"[req] {route} 200 id={job_id[:12]} latency={latency_s:.3f}s gen={result.generation_seconds:.3f}s "
        f"model={model} tokens: prompt={result.prompt_tokens} completion={result.completion_tokens} "
        f"total={result.prompt_tokens + result.completion_tokens} tps={tps:.1f} "
        f"do_sample={str(params.do_sample).lower()} temp={params.temperature:g} top_p={params.top_p:g} "
        f"seed={result.seed}"
    )


def log_failure(route: str, request_id: str, status: int, message: str) -> None:
    progress(f'[req] {route} {status} id={request_id[:12]} error="{message}"')


@contextmanager
def failures_logged(route: str, request_id: str) -> Iterator[None]:
    """The seeds' error line ("[req] chat 500 id=… error=…") for a job whose wait ends in an error."""
    try:
        yield
    except ServiceError as exc:
        log_failure(route, request_id, exc.status_code, exc.message)
        raise
