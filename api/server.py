"""Run the API under uvicorn (one process, or UVICORN_WORKERS processes: the API holds no model)."""

from __future__ import annotations

import os

import uvicorn

from api.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings
from shared.settings_sources import load_settings, settings_to_env


def app_from_env() -> object:
    """uvicorn factory for multi-process mode: settings arrive through OMEGA_SETTINGS_JSON."""
    settings = load_settings()
    configure_logging(settings, "api")
    return create_app(settings)


def run_api(settings: Settings) -> int:
    configure_logging(settings, "api")
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.effective_log_level,
        "access_log": settings.effective_log_level in ("debug", "trace"),
        "loop": "auto",
        "http": "auto",
        "timeout_graceful_shutdown": 10,
        "server_header": False,
    }
    if settings.uvicorn_workers > 1:
        os.environ.update(settings_to_env(settings))
        uvicorn.run("api.server:app_from_env", factory=True, workers=settings.uvicorn_workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
    return 0
