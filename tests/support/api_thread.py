"""The real API under real uvicorn, in a thread of the test process: real sockets, the server's
own protocol settings (api/server.py), no process to start. And a /livez probe that runs in a
process of its own, as a real one (kubelet) does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import uvicorn

from api.app import create_app
from api.server import uvicorn_config
from shared.settings import Settings

T = TypeVar("T")
PROBE_INTERVAL_S = 0.005

# The probe, standard library only so it starts in a few ms. A new connection per probe, as
# kubelet's HTTP probe makes (it turns keep-alive off): accepting it is part of what the loop
# must do in time. It polls until its stdin closes, then prints what it saw as one JSON line.
_PROBE = r"""
import http.client, json, select, sys, time
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
took, bad = [], []
while True:
    started = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", "/livez")
        status = conn.getresponse().status
        conn.close()
    except OSError as exc:
        status = repr(exc)
    took.append(time.perf_counter() - started)
    if status != 200:
        bad.append(status)
    if len(took) == 1:
        print("ready", flush=True)
    if select.select([sys.stdin], [], [], interval)[0]:
        break
print(json.dumps({"took": took, "bad": bad}), flush=True)
"""


@dataclass(frozen=True)
class LivezStats:
    """/livez answer times (seconds) seen by the probe while an attack ran."""

    took: tuple[float, ...]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.took)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def worst(self) -> float:
        return max(self.took)

    def __str__(self) -> str:
        return (
            f"worst {self.worst * 1000:.0f} ms, p99 {self.quantile(0.99) * 1000:.0f} ms, "
            f"p50 {self.quantile(0.5) * 1000:.1f} ms over {len(self.took)} probes"
        )


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


def livez_during(url: str, attack: Callable[[], T]) -> tuple[T, LivezStats]:
    """(what `attack` returned, the /livez answer times a probe in its own process saw meanwhile).

    The probe is a separate process so that the attacking client's own work (building and
    sending 120 MB, holding this process's GIL) is not counted as the server's stall. Every
    probe must be answered 200. Against a server in a thread of this process (api_in_thread)
    the figures still include that client's work: only a server in its own process is measured
    as an outside prober would see it."""
    parts = urlsplit(str(url))
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, parts.hostname or "127.0.0.1", str(parts.port or 80), str(PROBE_INTERVAL_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdin is not None and probe.stdout is not None
    try:
        assert probe.stdout.readline().strip() == "ready", "the /livez probe did not start"
        result = attack()
    finally:
        probe.stdin.close()  # the probe's signal to stop and report
        report = probe.stdout.readline()
        probe.wait(60)
    seen = json.loads(report)
    assert not seen["bad"], f"/livez failed during the attack: {seen['bad'][:5]}"
    return result, LivezStats(tuple(seen["took"]))


def worst_livez_during(url: str, attack: Callable[[], T]) -> tuple[T, float]:
    """(what `attack` returned, the slowest /livez answer seen from a separate process meanwhile)."""
    result, stats = livez_during(url, attack)
    return result, stats.worst


def calmest_livez_during(url: str, attack: Callable[[], T], bound_s: float, tries: int = 3) -> tuple[T, LivezStats]:
    """`livez_during`, repeated (up to `tries` times) until /livez never took `bound_s` or longer;
    the try with the shortest worst answer. A loop that the attack itself blocks is late every
    time; a late answer that the machine's scheduling caused (every core busy with the rest of the
    suite: 1.05 s seen once, where the same attack alone costs 40-100 ms) is not late again."""
    best: tuple[T, LivezStats] | None = None
    for _ in range(tries):
        result, stats = livez_during(url, attack)
        if best is None or stats.worst < best[1].worst:
            best = (result, stats)
        if stats.worst < bound_s:
            break
    assert best is not None
    return best


@contextmanager
def curl_post(url: str, body: bytes, content_type: str, upload_as: str | None = None) -> Iterator[Callable[[], httpx.Response]]:
    """A call that POSTs `body` to `url` from a curl process of its own; `upload_as`: as the
    multipart file of that name (with purpose=batch) instead of the raw body. The body is written
    when the context is entered, so that a /livez probe started afterwards times the sending only.

    Why not this process: sending tens of MB from it holds the GIL that a server in a thread of it
    (api_in_thread) needs, so a /livez figure would be the client's work (1.06-1.30 s seen on a
    loaded machine, 8-16 ms sent from curl). The body goes through a RAM-backed file where there is
    one: tens of MB written to disk stall the machine's other writers (Redis's AOF among them)."""
    ram = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=ram if ram.is_dir() else None) as folder:
        source = Path(folder) / (upload_as or "body")
        source.write_bytes(body)
        reply = Path(folder) / "reply"
        command = ["curl", "-sS", "--max-time", "120", "-o", str(reply), "-w", "%{http_code}"]
        if upload_as is None:
            command += ["-H", f"Content-Type: {content_type}", "--data-binary", f"@{source}"]
        else:
            command += ["-F", "purpose=batch", "-F", f"file=@{source};type={content_type}"]

        def send() -> httpx.Response:
            status = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
            return httpx.Response(int(status), content=reply.read_bytes())

        yield send
