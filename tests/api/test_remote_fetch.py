"""The guarded remote image fetch, against local HTTP servers standing in for remote hosts."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from api.intake.remote_fetch import RemoteImageFetcher, check_url
from shared.errors import ServiceError
from shared.settings_sources import load_settings
from tests.support.images import ALLOW_NETWORK, HOST_IP


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # The fetcher hangs up on purpose (byte cap, deadline).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(self.path)

    def _route(self, path: str) -> None:
        if path == "/ok":
            self._send(200, b"image-bytes")
        elif path == "/slow":
            time.sleep(2)
            self._send(200, b"late")
        elif path == "/dribble":  # stays under any per-read timeout, but not under the total deadline
            self.send_response(200)
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", "999999999")
            self.end_headers()
        elif path.startswith("/loop"):
            self._redirect(path + "x")
        elif path == "/relative":
            self._redirect("/ok")
        elif path == "/to-loopback":
            self._redirect(f"http://127.0.0.1:{self.server.server_address[1]}/ok")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/caf%C3%A9.png":  # what a non-ASCII path arrives as, percent-encoded
            self._send(200, b"cafe-bytes")
        elif path == "/to-unicode":  # raw UTF-8 bytes in Location (http.server writes Latin-1)
            self._redirect("/café.png".encode().decode("latin-1"))
        elif path == "/broken":
            self._send(503, b"upstream down")
        elif path == "/gone":
            self._send(410, b"gone")
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer((HOST_IP, 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://{HOST_IP}:{srv.server_address[1]}"
    srv.shutdown()


def fetch(url: str, **env: str) -> bytes:
    settings = load_settings(
        environ={
            "IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK,
            "MAX_IMAGE_BYTES": "20000",
            "IMAGE_FETCH_TIMEOUT_S": "1",
            **env,
        }
    )

    async def run() -> bytes:
        fetcher = RemoteImageFetcher(settings)
        try:
            return await fetcher.fetch(url, "p")
        finally:
            await fetcher.close()

    return asyncio.run(run())


def code_of(url: str, **env: str) -> tuple[int, str | None]:
    with pytest.raises(ServiceError) as err:
        fetch(url, **env)
    assert err.value.param == "p"
    return err.value.status_code, err.value.code


def test_fetches_from_an_allowed_host(server: str) -> None:
    assert fetch(f"{server}/ok") == b"image-bytes"
    assert fetch(f"{server}/relative") == b"image-bytes"


def test_default_policy_refuses_loopback_even_for_the_test_host(server: str) -> None:
    assert code_of(f"{server}/ok", IMAGE_FETCH_ALLOW_NETWORKS="") == (400, "image_url_blocked")


def test_every_redirect_hop_is_checked(server: str) -> None:
    assert code_of(f"{server}/to-loopback") == (400, "image_url_blocked")
    assert code_of(f"{server}/to-file") == (400, "invalid_image_url")


def test_redirect_limit(server: str) -> None:
    assert code_of(f"{server}/loop", IMAGE_FETCH_MAX_REDIRECTS="3") == (400, "image_fetch_failed")


def test_total_deadline_is_a_retryable_504(server: str) -> None:
    assert code_of(f"{server}/slow") == (504, "image_fetch_timeout")
    assert code_of(f"{server}/dribble") == (504, "image_fetch_timeout")


def test_byte_cap(server: str) -> None:
    assert code_of(f"{server}/declared-big")[0] == 413
    assert code_of(f"{server}/chunked-big")[0] == 413


def test_http_error_status(server: str) -> None:
    assert code_of(f"{server}/missing") == (400, "image_fetch_failed")
    assert code_of(f"{server}/gone") == (400, "image_fetch_failed")
    assert code_of(f"{server}/broken") == (502, "image_host_error")


def test_connection_refused_is_a_retryable_502(server: str) -> None:
    from tests.support.procs import free_port

    assert code_of(f"http://{HOST_IP}:{free_port()}/x") == (502, "image_host_unreachable")


def test_unknown_host_name_is_the_clients_400() -> None:
    # ".invalid" never resolves (RFC 2606); nothing is sent anywhere.
    assert code_of("http://no-such-host.invalid/x.png") == (400, "image_host_unknown")


def test_non_ascii_url_is_percent_encoded(server: str) -> None:
    assert fetch(f"{server}/café.png") == b"cafe-bytes"
    assert fetch(f"{server}/to-unicode") == b"cafe-bytes"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://bücher.example/ä b?q=é#frag", "http://xn--bcher-kva.example/%C3%A4%20b?q=%C3%A9"),
        ("http://example.com/already%20encoded", "http://example.com/already%20encoded"),
        ("HTTP://Example.COM:8080", "http://example.com:8080/"),
        ("http://[::1]:81/x", "http://[::1]:81/x"),
    ],
)
def test_check_url_normalises_to_ascii(url: str, expected: str) -> None:
    assert check_url(url, "p")[0] == expected


@pytest.mark.parametrize(
    "url",
    ["http://exa mple.com/", "http://a\x00b.com/", "http://" + "x" * 64 + ".com/", "http://[zz::1]/", "ftp://x/"],
)
def test_check_url_refuses_bad_hosts_with_a_400(url: str) -> None:
    with pytest.raises(ServiceError) as err:
        check_url(url, "p")
    assert (err.value.status_code, err.value.code) == (400, "invalid_image_url")


def test_batch_fetches_hold_only_their_share_of_the_pool(server: str) -> None:
    """One batch's slow fetches fill its share; an interactive fetch and another batch's fetch
    still get a connection at once (the review: one batch made every interactive image time out)."""
    settings = load_settings(
        environ={
            "IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK,
            "IMAGE_FETCH_TIMEOUT_S": "5",
            "IMAGE_FETCH_POOL_SIZE": "4",
            "IMAGE_FETCH_BATCH_SHARE": "0.5",
        }
    )

    async def timed(fetcher: RemoteImageFetcher, batch_id: str | None) -> float:
        started = time.monotonic()
        assert await fetcher.fetch(f"{server}/ok", "p", batch_id=batch_id) == b"image-bytes"
        return time.monotonic() - started

    async def run() -> tuple[float, float]:
        fetcher = RemoteImageFetcher(settings)
        try:
            slow = [asyncio.create_task(fetcher.fetch(f"{server}/slow", "p", batch_id="big")) for _ in range(8)]
            await asyncio.sleep(0.3)  # the big batch has taken what it may
            interactive, other_batch = await timed(fetcher, None), await timed(fetcher, "small")
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            assert fetcher.shares._per_batch == {}  # nothing kept for batches that are done
            return interactive, other_batch
        finally:
            await fetcher.close()

    # Without shares the 8 slow fetches would hold all 4 connections for 2 s.
    interactive, other_batch = asyncio.run(run())
    assert interactive < 1.0 and other_batch < 1.0
