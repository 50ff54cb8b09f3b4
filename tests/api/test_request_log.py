"""The seeds' per-request lines: "[req] chat 500 id=… error=…" for a request whose job failed."""

from __future__ import annotations

import logging

import pytest

from api.chat.request_log import failures_logged
from shared.errors import GatewayTimeout, InvalidRequest
from shared.logs import PROGRESS


def test_a_failed_wait_logs_the_seeds_error_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PROGRESS)
    with pytest.raises(GatewayTimeout), failures_logged("chat", "abcd1234abcd1234"):
        raise GatewayTimeout("the job did not finish within 5 s")
    with pytest.raises(InvalidRequest), failures_logged("generate", "wxyz"):
        raise InvalidRequest("corrupt image")
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS]
    assert lines == [
        '[req] chat 504 id=abcd1234abcd error="the job did not finish within 5 s"',
        '[req] generate 400 id=wxyz error="corrupt image"',
    ]


def test_success_passes_through_silently(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=PROGRESS)
    with failures_logged("chat", "x"):
        pass
    assert not [r for r in caplog.records if r.name == PROGRESS]
