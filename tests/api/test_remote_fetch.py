"""The guarded remote image fetch, against local HTTP servers standing in for remote hosts."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import threading
import time
from collections.abc import Iterator

import pytest

from api.intake.remote_fetch import AddressPolicy, RemoteImageFetcher
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


def test_total_deadline(server: str) -> None:
    assert code_of(f"{server}/slow") == (400, "image_fetch_timeout")
    assert code_of(f"{server}/dribble") == (400, "image_fetch_timeout")


def test_byte_cap(server: str) -> None:
    assert code_of(f"{server}/declared-big")[0] == 413
    assert code_of(f"{server}/chunked-big")[0] == 413


def test_http_error_status(server: str) -> None:
    assert code_of(f"{server}/missing") == (400, "image_fetch_failed")


def test_connection_refused_is_a_400(server: str) -> None:
    from tests.support.procs import free_port

    assert code_of(f"http://{HOST_IP}:{free_port()}/x") == (400, "image_fetch_failed")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:0001::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
    ],
)
def test_policy_refuses_non_public_addresses(address: str) -> None:
    assert not AddressPolicy([]).permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_policy_permits_public_addresses(address: str) -> None:
    assert AddressPolicy([]).permits(ipaddress.ip_address(address))
