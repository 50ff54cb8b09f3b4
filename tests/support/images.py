"""Generated test images and a local image host (stands in for remote image servers)."""

from __future__ import annotations

import base64
import http.server
import io
import select
import threading
from dataclasses import dataclass, field

from PIL import Image

# Loopback, but not 127.0.0.1: tests allow exactly this address (IMAGE_FETCH_ALLOW_NETWORKS), so a
# redirect to 127.0.0.1 is still refused.
HOST_IP = "127.0.0.2"
ALLOW_NETWORK = "127.0.0.2/32"


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30), **save: object
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **save)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def pixel_bomb() -> bytes:
    """A small PNG whose header claims 20000x20000 pixels (400 M), far over the cap."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Holding:
    """Requests to slow paths the host holds open now, and the most it has held at once."""

    now: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    entered: threading.Event = field(default_factory=threading.Event)  # a slow path has been reached

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        self.entered.set()

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@dataclass
class ImageHost:
    server: http.server.ThreadingHTTPServer
    routes: dict[str, tuple[int, dict[str, str], bytes]]
    delays: dict[str, float] = field(default_factory=dict)  # seconds a path waits before answering
    holding: Holding = field(default_factory=Holding)
    gated: set[str] = field(default_factory=set)  # paths that answer once a slow path has been reached

    @property
    def base(self) -> str:
        return f"http://{HOST_IP}:{self.server.server_address[1]}"

    def add(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> str:
        self.routes[path] = (status, headers or {"Content-Type": "image/png"}, body)
        return self.base + path

    def slow(self, path: str, body: bytes, delay_s: float) -> str:
        """A path that answers only after `delay_s` (an image host slower than the fetch deadline)."""
        self.delays[path] = delay_s
        return self.add(path, body)

    def missing_once_slow_started(self, path: str) -> str:
        """A 404 that is sent only after a slow path has been reached (at most 10 s later), so a
        test can fail a request while another of its fetches is surely held."""
        self.gated.add(path)
        return self.base + path

    def redirect(self, path: str, location: str) -> str:
        self.routes[path] = (302, {"Location": location}, b"")
        return self.base + path

    def stop(self) -> None:
        self.server.shutdown()


def start_image_host() -> ImageHost:
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    delays: dict[str, float] = {}
    holding = Holding()
    gated: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = routes.get(self.path, (404, {}, b"not found"))
            if self.path in gated:
                holding.entered.wait(10)
            if self.path in delays:
                holding.enter()
                try:
                    # Wait out the delay, unless the client hangs up first (its socket turns
                    # readable: it has nothing more to send but its EOF).
                    gave_up = select.select([self.connection], [], [], delays[self.path])[0]
                finally:
                    holding.leave()
                if gave_up:
                    return
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (a slow path)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 256  # not 5: many fetches connect at once (a full backlog drops SYNs: 1 s retries)

    server = Server((HOST_IP, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ImageHost(server, routes, delays, holding, gated)
