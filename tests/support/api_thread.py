"""The real API under real uvicorn, in a thread of the test process: real sockets, the server's
own protocol settings (api/server.py), no process to start."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from api.app import create_app
from api.server import uvicorn_config
from shared.settings import Settings


@contextmanager
def api_in_thread(settings: Settings) -> Iterator[str]:
    """Serve the app on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn_config(settings, create_app(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the API did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def worst_livez_during(url: str, attack: Callable[[], object]) -> tuple[object, float]:
    """(what `attack` returned, the slowest /livez answer seen from a second client meanwhile)."""
    done = threading.Event()
    worst = [0.0]

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.get("/livez").status_code == 200
                worst[0] = max(worst[0], time.perf_counter() - started)
                time.sleep(0.005)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    time.sleep(0.05)
    try:
        result = attack()
    finally:
        done.set()
        prober.join(30)
    return result, worst[0]
