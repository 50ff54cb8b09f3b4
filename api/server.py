"""Run the API under uvicorn (one process, or UVICORN_WORKERS processes: the API holds no model)."""

from __future__ import annotations

import os
import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from api.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings
from shared.settings_sources import load_settings, settings_to_env


def app_from_env() -> object:
    """uvicorn factory for multi-process mode: settings arrive through OMEGA_SETTINGS_JSON."""
    settings = load_settings()
    configure_logging(settings, "api")
    return create_app(settings)


def _protocol() -> str:
    """uvicorn's HTTP protocol ("auto" picks httptools when installed), with a header deadline
    (api/http_limits.py), named by import path so API worker processes can load it."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "api.http_limits:DeadlineH11Protocol"
    return "api.http_limits:DeadlineHttpToolsProtocol"


def uvicorn_config(settings: Settings, app: object, **options: Any) -> uvicorn.Config:
    """The server's uvicorn settings, slow-client limits included (one place for both modes)."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level=settings.effective_log_level,
        # None: uvicorn's loggers propagate to ours (one format, LOG_FORMAT=json included).
        log_config=None,
        access_log=settings.access_log or settings.effective_log_level in ("debug", "trace"),
        loop="auto",
        http=_protocol(),
        timeout_graceful_shutdown=10,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
        limit_concurrency=settings.max_connections or None,
        **options,
    )
    config.header_timeout_s = settings.header_timeout_s  # type: ignore[attr-defined]  # read by the protocol
    return config


def run_api(settings: Settings, sock: socket.socket) -> int:
    """Serve on `sock`, already bound and listening (omega_vlm/listen.py): the caller has
    reported a taken port already, and nobody else can answer on it while we start."""
    configure_logging(settings, "api")
    if settings.uvicorn_workers > 1:
        os.environ.update(settings_to_env(settings))
        config = uvicorn_config(settings, "api.server:app_from_env", factory=True, workers=settings.uvicorn_workers)
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(uvicorn_config(settings, create_app(settings)))
    server.run(sockets=[sock])
    return 0 if server.started else 1
