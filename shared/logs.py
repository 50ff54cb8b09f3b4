"""Logging set-up per process: LOG_LEVEL, LOG_FORMAT, DEBUG, PROGRESS_LOGS and REDACT_SOURCE.

Every process of the service (supervisor, API with uvicorn's own loggers, workers with rq's)
logs through the root handler set here, so one format covers them all: text lines, or with
LOG_FORMAT=json one JSON object per line for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from types import TracebackType

from shared.settings import Settings

PROGRESS = "omega.progress"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, process, pid, logger, message."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter(settings: Settings, process: str) -> logging.Formatter:
    if settings.log_format == "json":
        return JsonFormatter(process)
    return logging.Formatter(f"%(asctime)s %(levelname)s [{process}] %(name)s: %(message)s")


def configure_logging(settings: Settings, process: str, hub: bool = True) -> None:
    """`hub`: also set transformers' and the hub's verbosity, which imports transformers (~1 s of
    CPU): not in a supervisor, which loads no model (its children configure their own)."""
    name = settings.effective_log_level
    level = logging.DEBUG if name in ("debug", "trace") else getattr(logging, name.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(settings, process))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings in the same format, not bare on stderr
    # Progress lines are the seeds' bare "[startup] ..." / "[req] ..." lines (JSON objects too
    # with LOG_FORMAT=json).
    progress = logging.getLogger(PROGRESS)
    progress.propagate = False
    progress.handlers = [handler if settings.log_format == "json" else _bare_handler()]
    progress.setLevel(logging.INFO if settings.progress_logs or settings.debug else logging.WARNING)
    for noisy in ("httpx", "httpcore", "botocore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    logging.getLogger("rq.worker").setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    if hub:
        _configure_hf(settings)


def _bare_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _configure_hf(settings: Settings) -> None:
    """DEBUG raises transformers/hub verbosity; REDACT_SOURCE hides download bars and paths."""
    try:
        import huggingface_hub.utils as hub_utils
        from transformers.utils import logging as hf_logging
    except ImportError:  # the API image may not need the hub at all
        return
    if settings.debug:
        hf_logging.set_verbosity_debug()
    else:
        hf_logging.set_verbosity_error()
    if settings.redact_source and not settings.debug:
        hub_utils.disable_progress_bars()
        hf_logging.disable_progress_bar()


def progress(message: str) -> None:
    logging.getLogger(PROGRESS).info(message)


class StartupHeartbeat:
    """While a model loads: a dot every 0.5 s and "[startup] loading… Ns" every 5 s (PROGRESS_LOGS)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup-heartbeat", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        last_line = started
        while not self._stop.wait(0.5):
            now = time.monotonic()
            if now - last_line >= 5:
                sys.stderr.write(f"\n[startup] loading… {int(now - started)}s\n")
                last_line = now
            else:
                sys.stderr.write(".")
            sys.stderr.flush()

    def __enter__(self) -> StartupHeartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)
            sys.stderr.write("\n")
