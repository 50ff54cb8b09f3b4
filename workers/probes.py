"""A worker's probe endpoints (Kubernetes startup/readiness/liveness, compose healthcheck).

- /startup: 200 once the model is loaded and warmed (stays 200 while draining);
- /readyz: 200 while the worker takes new work (ready, not draining);
- /livez: 200 while the decoding loop is idle or advanced within WORKER_STALL_S
  (workers/progress.py); 503 when it is stuck, so a hung `generate` gets the pod restarted.

The stdlib's HTTP server on a daemon thread: a probe must answer while the main thread is deep
in a `generate`, and the worker image needs no web framework for three fixed answers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared.fleet import WorkerState
from workers import progress

log = logging.getLogger("omega.worker.probes")


class ProbeState:
    """What the probes read: the worker's state (set by the worker) and the loop's progress."""

    def __init__(self, stall_s: float, stalled_s: Callable[[], float] = progress.stalled_s) -> None:
        self.stall_s = stall_s
        self.stalled_s = stalled_s
        self.state: WorkerState = "loading"
        self.started = False  # the model has been loaded and warmed (once true, stays true)

    def set_state(self, state: WorkerState) -> None:
        self.state = state
        self.started = self.started or state == "ready"

    def answer(self, path: str) -> tuple[int, dict[str, object]]:
        stalled = round(self.stalled_s(), 3)
        body: dict[str, object] = {"state": self.state, "started": self.started, "stalled_seconds": stalled}
        checks = {
            "/startup": self.started,
            "/readyz": self.state == "ready",
            "/livez": stalled < self.stall_s,
        }
        if path not in checks:
            return 404, {"error": "not found", "paths": sorted(checks)}
        return (200 if checks[path] else 503), body


def _handler(state: ProbeState) -> type[BaseHTTPRequestHandler]:
    class ProbeHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state.answer(self.path.split("?", 1)[0])
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("probe %s", format % args)

    return ProbeHandler


class ProbeServer:
    def __init__(self, state: ProbeState, host: str, port: int) -> None:
        self.state = state
        self.server = ThreadingHTTPServer((host, port), _handler(state))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> ProbeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_probes(state: ProbeState, host: str, base_port: int, index: int) -> ProbeServer | None:
    """The probe server of the worker with this device index (port = base + index); None when
    off (port 0) or the port is taken (the worker still serves: probes are not its work)."""
    if base_port == 0:
        return None
    port = base_port + index
    try:
        server = ProbeServer(state, host, port).start()
    except OSError as exc:
        log.warning("worker probes not served: port %d unavailable (%s); set WORKER_PROBE_PORT", port, exc)
        return None
    log.info("worker probes on port %d (/startup, /readyz, /livez)", port)
    return server


def check(port: int, paths: tuple[str, ...] = ("/startup", "/livez")) -> bool:
    """Whether every probe answers 200 (a container healthcheck: started and not stalled)."""
    for path in paths:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                if reply.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
    return True


if __name__ == "__main__":
    # `python -m workers.probes`: the image's and compose's healthcheck (first device's port).
    sys.exit(0 if check(int(os.environ.get("WORKER_PROBE_PORT") or 8081)) else 1)
