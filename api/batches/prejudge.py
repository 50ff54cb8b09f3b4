"""Large batch lines judged in a helper process, so the event loop does not parse them.

Parsing a line holds the GIL from start to end (msgspec: ~15 ms per 30 MB on a quiet core,
several times that on a busy one; a thread does not help), and every request of the API process
waits meanwhile. Most large lines are refused anyway: the review's were 30 MB of prompt text. So
a line over PREJUDGE_BYTES first goes, in a helper process, through the checks every line meets
first: its JSON and shape (`parse_line`), then the request's schema, model, and message, part
and character bounds (`first_checks`, which the API process runs too, in the same order). A line
refused there gets exactly the row it would have got in the API process; only a line that passes
(one carrying large data-URL images, say) is parsed again in the API process to become a job.

The helper is one spawned process per API process (its batch runner), started on the first large
line and killed with the runner; if it cannot answer, the line is parsed in the API process as
before (slower for the loop, never lost).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import anyio.to_thread
import msgspec

from api.batches.lines import LineError, RawLine, parse_line
from api.chat.convert import check_model, check_size
from api.chat.protocol import ChatCompletionRequest
from shared.errors import ServiceError
from shared.settings import Settings

log = logging.getLogger("omega.api.batches")
PREJUDGE_BYTES = 1 << 20  # smaller lines parse in well under a millisecond: not worth a hop
JUDGE_TIMEOUT_S = 60.0  # a verdict takes milliseconds; past this the helper is stuck: replaced


@dataclass(frozen=True)
class Refused:
    """A well-formed line whose request fails the first checks: its error, once the line's
    custom_id has been checked for duplicates (which needs Redis, so the API process does it)."""

    custom_id: str
    error: LineError


def service_error_line(number: int, custom_id: str, exc: ServiceError) -> LineError:
    code = exc.code or exc.error_type
    return LineError(number, custom_id, code, exc.message, exc.param, exc.status_code, exc.error_type)


def first_checks(
    number: int, custom_id: str, body: dict[str, Any], settings: Settings
) -> ChatCompletionRequest | LineError:
    """The request a line's body is, or why not: the schema, then the first checks of
    `build_chat_job` (model, then sizes), which need neither network nor disk."""
    try:
        request = msgspec.convert(body, ChatCompletionRequest)
        check_model(request.model, settings)
        check_size(request.messages, settings)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`") or None
        return LineError(number, custom_id, "invalid_request", f"{param}: {message}" if param else message, param)
    except ServiceError as exc:
        return service_error_line(number, custom_id, exc)
    return request


# --- in the helper process -----------------------------------------------------------------------
def judge(data: bytes, number: int, endpoint: str, settings: Settings) -> LineError | Refused | None:
    """The line's error (as `parse_line` or `first_checks` give it), or None if it passes them."""
    parsed = parse_line(RawLine(number, data, 0), endpoint, settings.max_request_bytes)
    if isinstance(parsed, LineError):
        return parsed
    custom_id, body = parsed
    checked = first_checks(number, custom_id, body, settings)
    return Refused(custom_id, checked) if isinstance(checked, LineError) else None


def _serve(conn: Connection, settings: Settings) -> None:
    """The helper's loop: (number, endpoint), then the line's bytes; answers the verdict."""
    while True:
        try:
            number, endpoint = conn.recv()
            data = conn.recv_bytes()
        except EOFError:
            return  # the API process closed its end
        conn.send(judge(data, number, endpoint, settings))


# --- in the API process ----------------------------------------------------------------------------
class Prejudge:
    """The API process's end of the helper. The line's bytes go down a pipe as they are (no
    pickling: a copy of 30 MB would hold the GIL too), from a thread; only the small verdict
    comes back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._helper: tuple[BaseProcess, Connection] | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def wants(line: RawLine) -> bool:
        return not line.too_long and len(line.data) > PREJUDGE_BYTES

    def _start(self) -> tuple[BaseProcess, Connection]:
        # spawn: a fork of a process running an event loop and threads is not safe.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, self.settings), name="omega-line-judge", daemon=True)
        process.start()
        theirs.close()
        return process, ours

    def _ask(self, line: RawLine, endpoint: str) -> LineError | Refused | None:
        """Blocking: in a thread."""
        if self._helper is None:
            self._helper = self._start()
        conn = self._helper[1]
        conn.send((line.number, endpoint))
        conn.send_bytes(line.data)
        if not conn.poll(JUDGE_TIMEOUT_S):
            raise TimeoutError(f"no verdict within {JUDGE_TIMEOUT_S:g} s")
        verdict: LineError | Refused | None = conn.recv()
        return verdict

    async def judge(self, line: RawLine, endpoint: str) -> LineError | Refused | None:
        """The helper's verdict on a large line; None when it passes or the helper could not say
        (then the caller parses the line itself)."""
        async with self._lock:
            try:
                return await anyio.to_thread.run_sync(self._ask, line, endpoint)
            except Exception:
                log.warning(
                    "line %d: the line-checking helper failed; parsing the line here", line.number, exc_info=True
                )
                self.close()  # the next large line starts a new helper
                return None
            except BaseException:
                self.close()  # cancelled mid-exchange: the pipe's state is unknown
                raise

    def close(self) -> None:
        if self._helper is not None:
            process, conn = self._helper
            self._helper = None
            conn.close()
            process.kill()
            process.join(1)
