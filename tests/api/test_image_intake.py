"""Image intake's limits: the aspect-ratio cap, the per-request pixel budget and fetch share."""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.server
import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from api.intake.images import ImageIntake, ImageRef, decode_data_url
from api.intake.remote_fetch import RemoteImageFetcher
from shared.blob_local import LocalBlobStore
from shared.errors import ServiceError
from shared.settings_sources import load_settings
from tests.support.images import ALLOW_NETWORK, HOST_IP, data_url, image_bytes, start_image_host


def strip_png(width: int, height: int) -> bytes:
    """The review's attack image: 1 x 40,000,000 pixels is a 78 KB PNG."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def store(tmp_path: Path, images: list[bytes], **env: str) -> list[str]:
    settings = load_settings(environ=env)
    blobs = LocalBlobStore(tmp_path / "blobs")

    async def run() -> list[str]:
        fetcher = RemoteImageFetcher(settings)
        try:
            intake = ImageIntake(settings, blobs, fetcher)
            refs = [ImageRef(data_url(data), f"messages[0].content[{i}]") for i, data in enumerate(images)]
            return await intake.store_all(refs)
        finally:
            await fetcher.close()

    return asyncio.run(run())


def refused(tmp_path: Path, images: list[bytes], **env: str) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        store(tmp_path, images, **env)
    return err.value


def stored_blobs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_the_one_by_forty_million_strip_is_refused(tmp_path: Path) -> None:
    attack = strip_png(1, 40_000_000)
    assert len(attack) < 200_000  # small on the wire, 0.9 GB in the worker
    err = refused(tmp_path, [attack])
    assert (err.status_code, err.code, err.param) == (400, "image_aspect_ratio", "messages[0].content[0]")
    assert "MAX_IMAGE_ASPECT_RATIO=200:1" in err.message
    assert stored_blobs(tmp_path) == []


def test_aspect_ratio_at_the_cap_passes_and_the_cap_is_a_setting(tmp_path: Path) -> None:
    assert len(store(tmp_path, [image_bytes("PNG", (2000, 10))])) == 1
    err = refused(tmp_path, [image_bytes("PNG", (2001, 10))])
    assert err.code == "image_aspect_ratio"
    assert len(store(tmp_path, [image_bytes("PNG", (2001, 10))], MAX_IMAGE_ASPECT_RATIO="250")) == 1


def test_request_pixel_budget_counts_every_image_and_stores_none(tmp_path: Path) -> None:
    images = [image_bytes("PNG", (100, 100), (i, 0, 0)) for i in range(3)]  # 30,000 pixels
    err = refused(tmp_path, images, MAX_REQUEST_PIXELS="25000")
    assert (err.status_code, err.code, err.param) == (400, "request_pixels_exceeded", "messages[0].content[2]")
    assert "30000 pixels" in err.message and "MAX_REQUEST_PIXELS=25000" in err.message
    assert stored_blobs(tmp_path) == []
    assert len(store(tmp_path, images, MAX_REQUEST_PIXELS="30000")) == 3
    assert len(store(tmp_path, images, MAX_REQUEST_PIXELS="0")) == 3  # 0 = no limit


class CountingHost(http.server.BaseHTTPRequestHandler):
    """Serves one small PNG slowly and records how many requests were in flight at most."""

    lock = threading.Lock()
    in_flight = 0
    most = 0

    def do_GET(self) -> None:
        with CountingHost.lock:
            CountingHost.in_flight += 1
            CountingHost.most = max(CountingHost.most, CountingHost.in_flight)
        time.sleep(0.3)
        body = image_bytes("PNG", (8, 8))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with CountingHost.lock:
            CountingHost.in_flight -= 1

    def log_message(self, *args: object) -> None:
        pass


def test_one_request_fetches_at_most_its_share_of_images_at_once(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer((HOST_IP, 0), CountingHost)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = load_settings(environ={"IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK, "IMAGE_FETCH_PER_REQUEST": "2"})

    async def run() -> list[str]:
        fetcher = RemoteImageFetcher(settings)
        try:
            intake = ImageIntake(settings, LocalBlobStore(tmp_path / "blobs"), fetcher)
            base = f"http://{HOST_IP}:{server.server_address[1]}"
            return await intake.store_all([ImageRef(f"{base}/{i}.png", f"p{i}") for i in range(6)])
        finally:
            await fetcher.close()

    try:
        assert len(asyncio.run(run())) == 6
    finally:
        server.shutdown()
    assert CountingHost.most == 2  # 10 slow URLs in one request no longer take 10 connections


def test_a_failed_image_cancels_the_requests_other_fetches(tmp_path: Path) -> None:
    """One image of a request fails at once: the request has failed, so its fetch of a slow image is
    dropped then, not held (a pool connection, a batch's share) until its own deadline."""
    host = start_image_host()
    slow = host.slow("/slow.png", image_bytes(), delay_s=120)
    # A 404 as soon as the slow fetch is held (on a loaded machine an immediate 404 could fail the
    # request before the slow fetch had even reached the host).
    missing = host.missing_once_slow_started("/missing.png")
    settings = load_settings(environ={"IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK, "IMAGE_FETCH_TIMEOUT_S": "120"})

    async def run() -> int:
        fetcher = RemoteImageFetcher(settings)
        try:
            intake = ImageIntake(settings, LocalBlobStore(tmp_path / "blobs"), fetcher)
            refs = [ImageRef(slow, "messages[0].content[0]"), ImageRef(missing, "messages[0].content[1]")]
            with pytest.raises(ServiceError) as failed:
                await intake.store_all(refs)
            assert failed.value.param == "messages[0].content[1]"  # the image that failed, not a cancellation
            # The event loop is still running here, as it is in the API after an answer.
            for _ in range(100):
                if host.holding.now == 0:
                    break
                await asyncio.sleep(0.1)
            return host.holding.now
        finally:
            await fetcher.close()

    try:
        assert asyncio.run(run()) == 0, "the slow fetch was still held after its request had failed"
        assert host.holding.peak == 1  # it had started
    finally:
        host.stop()


def test_a_request_without_images_stores_none(tmp_path: Path) -> None:
    assert store(tmp_path, []) == []


@pytest.mark.parametrize(
    "payload",
    ["aGVsbG8gd29ybGQhIQ==", "", "QQ==", "QQ", "QQ===", "=QQ=", "QQ==QQ==", "QQ ==", "Q Q==", "QQ==\n", "\u00e9", "QUJD*", "QUJ"],
)
def test_data_url_base64_is_exactly_what_the_validating_decoder_accepts(payload: str) -> None:
    """The strict C decoder the intake uses accepts and refuses what b64decode(validate=True) does."""
    ref = ImageRef("data:image/png;base64," + payload, "messages")
    try:
        expected = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        with pytest.raises(ServiceError) as refused:
            decode_data_url(ref, 10**6)
        assert (refused.value.status_code, refused.value.code, refused.value.param) == (400, "invalid_base64", "messages")
        return
    assert decode_data_url(ref, 10**6) == expected
