"""Run the API under uvicorn (one process, or UVICORN_WORKERS processes: the API holds no model)."""

from __future__ import annotations

import os
import socket

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


def run_api(settings: Settings, sock: socket.socket) -> int:
    """Serve on `sock`, already bound and listening (omega_vlm/listen.py): the caller has
    reported a taken port already, and nobody else can answer on it while we start."""
    configure_logging(settings, "api")
    common = {
        "log_level": settings.effective_log_level,
        # None: uvicorn's loggers propagate to ours (one format, LOG_FORMAT=json included).
        "log_config": None,
        "access_log": settings.access_log or settings.effective_log_level in ("debug", "trace"),
        "loop": "auto",
        "http": "auto",
        "timeout_graceful_shutdown": 10,
        "server_header": False,
    }
    if settings.uvicorn_workers > 1:
        os.environ.update(settings_to_env(settings))
        factory = "api.server:app_from_env"
        config = uvicorn.Config(factory, factory=True, workers=settings.uvicorn_workers, **common)  # type: ignore[arg-type]
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **common))  # type: ignore[arg-type]
    server.run(sockets=[sock])
    return 0 if server.started else 1
