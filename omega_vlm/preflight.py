"""Checks `up`, `api` and `worker` make before starting anything, so a mistake is one plain line.

- The API's port is bound here, before any process starts: a taken port is reported at once
  (not a "Ready" from whatever server holds it), and the socket is handed to the API process,
  so what answers on the port is ours.
- A MODEL_PATH that is neither a model folder nor a Hugging Face repo id is refused by name
  (transformers would say "Repo id must be in the form…" from every worker restart).
"""

from __future__ import annotations

import errno
import re
import socket
from pathlib import Path

from shared.settings import Settings

BACKLOG = 2048
# huggingface_hub's rule for "name" or "org/name".
_REPO_ID = re.compile(r"^(?:[\w][\w.-]{0,95}/)?[\w][\w.-]{0,95}$")


class PreflightError(RuntimeError):
    """A start-up mistake the user must fix; the message says what and how."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or PreflightError naming the taken port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Like uvicorn: a port in TIME_WAIT is reusable; a port another server listens on is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PreflightError(
                f"port {port} is in use on {host} (another server is running?); stop it, or set PORT / --port"
            ) from None
        raise PreflightError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def adopt_listener(fd: int) -> socket.socket:
    """The listening socket `up` bound and passed down (family and type read from the fd)."""
    return socket.socket(fileno=fd)


def _looks_like_path(value: str) -> bool:
    """Absolute, home- or dot-relative, or deeper than org/name: a folder was meant."""
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


def check_model_path(settings: Settings) -> None:
    """MODEL_PATH must be a model folder (with config.json) or look like a hub repo id."""
    value = settings.model_path
    if value is None:
        return  # the generated demo model
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PreflightError(f"MODEL_PATH={value} is a folder without config.json: not a model folder")
        return
    if path.exists():
        raise PreflightError(f"MODEL_PATH={value} is a file; it must be a model folder or a Hugging Face repo id")
    if _looks_like_path(value) or not _REPO_ID.match(value):
        raise PreflightError(
            f"MODEL_PATH={value}: no such folder (and not a Hugging Face repo id such as Qwen/Qwen2-VL-2B-Instruct)"
        )
