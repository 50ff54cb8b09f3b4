"""The caption command against a misbehaving server: gzip bomb, "queued" forever, nobody there,
a URL without scheme, two runs on one output file, and a folder moved between runs."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from omega_vlm.caption.client import MAX_RESPONSE_BYTES, CaptionClient, Options
from omega_vlm.caption.output import lock_output
from omega_vlm.caption.sources import ImageSource
from tests.support.images import image_bytes
from tests.support.procs import ROOT, free_port


def gzip_bomb(size: int) -> bytes:
    """Valid JSON once inflated: a queued job padded with `size` spaces (about size/1000 on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(b'{"id": "j1", "status": "queued", "pad": "')]
    block = b" " * (1 << 20)
    parts += [packer.compress(block) for _ in range(size >> 20)]
    parts.append(packer.compress(b'"}') + packer.flush())
    return b"".join(parts)


BOMB = gzip_bomb(256 << 20)


@dataclass
class Behaviour:
    mode: str = "ok"
    polls: int = 0
    deletes: list[str] = field(default_factory=list)


class FakeApi(http.server.BaseHTTPRequestHandler):
    behaviour = Behaviour()

    def _json(self, body: object, extra: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        b = FakeApi.behaviour
        if b.mode == "bomb":
            self._json(None, {"Content-Encoding": "gzip"}, raw=BOMB)
        elif b.mode == "queued":
            self._json({"id": "j1", "status": "queued"})
        else:
            self._json(succeeded("j1"))

    def do_GET(self) -> None:
        FakeApi.behaviour.polls += 1
        self._json({"id": "j1", "status": "queued"})  # at once, whatever ?wait= says

    def do_DELETE(self) -> None:
        FakeApi.behaviour.deletes.append(self.path)
        self._json({"id": "j1", "status": "canceled"})

    def log_message(self, *args: object) -> None:
        pass


def succeeded(job_id: str) -> dict[str, object]:
    result = {
        "model": "m",
        "choices": [{"message": {"content": "a caption"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    return {"id": job_id, "status": "succeeded", "result": result}


@pytest.fixture
def api() -> Iterator[str]:
    FakeApi.behaviour = Behaviour()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def caption_one(url: str, deadline_s: float = 3600) -> dict[str, object]:
    async def run() -> dict[str, object]:
        client = CaptionClient(Options(url, None, "p", 8, None, wait_s=30, deadline_s=deadline_s), 1)
        try:
            return await asyncio.wait_for(client.caption(ImageSource("http://img.test/a.png", True)), 30)
        finally:
            await client.close()

    return asyncio.run(run())


def caption_cli(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "omega_vlm.cli", "caption", *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_gzip_bomb_is_refused_after_the_cap_not_inflated(api: str) -> None:
    assert len(BOMB) < 1 << 20  # under 1 MB on the wire, 256 MiB inflated
    FakeApi.behaviour.mode = "bomb"
    row = caption_one(api)
    error = row["error"]
    assert isinstance(error, dict) and error["type"] == "bad_response"
    assert f"larger than {MAX_RESPONSE_BYTES} bytes" in error["message"]


def test_queued_forever_is_polled_with_backoff_until_the_deadline(api: str) -> None:
    FakeApi.behaviour.mode = "queued"
    started = time.monotonic()
    row = caption_one(api, deadline_s=3)
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 6
    error = row["error"]
    assert isinstance(error, dict) and error["code"] == "caption_timeout" and row["retryable"] is True
    assert FakeApi.behaviour.polls <= 5  # 0, 0.5, 1.5, 3.5 s: not hundreds
    assert FakeApi.behaviour.deletes == ["/v1/jobs/j1"]  # nobody waits for it any more


def test_unreachable_server_is_a_clear_error_within_seconds(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(image_bytes())
    started = time.monotonic()
    result = caption_cli(str(image), "--out", str(tmp_path / "o.jsonl"), "--server", f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 10
    assert result.returncode == 2
    assert "cannot reach the server at http://127.0.0.1:" in result.stderr


def test_server_url_without_scheme_is_a_clear_error(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(image_bytes())
    result = caption_cli(str(image), "--out", str(tmp_path / "o.jsonl"), "--server", "localhost:8000")
    assert result.returncode == 2
    assert "needs a scheme and a host, e.g. http://localhost:8000" in result.stderr


def test_two_runs_cannot_append_to_one_output_file(api: str, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(image_bytes())
    out = tmp_path / "o.jsonl"
    held = lock_output(out)  # a first run, still writing
    try:
        result = caption_cli(str(image), "--out", str(out), "--server", api)
    finally:
        held.close()
    assert result.returncode == 2
    assert f"another caption run is writing to {out}" in result.stderr
    assert out.read_text() == ""
    assert caption_cli(str(image), "--out", str(out), "--server", api).returncode == 0  # lock released


def test_relative_paths_stay_relative_so_a_moved_folder_resumes(api: str, tmp_path: Path) -> None:
    photos = tmp_path / "before" / "photos"
    photos.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(image_bytes())
    first = caption_cli("photos", "--out", "photos/captions.jsonl", "--server", api, cwd=photos.parent)
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in (photos / "captions.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in rows) == ["photos/a.png", "photos/b.png"]

    moved = tmp_path / "after"
    (tmp_path / "before").rename(moved)
    second = caption_cli("./photos/", "--out", "photos/captions.jsonl", "--server", api, cwd=moved)
    assert second.returncode == 0, second.stderr
    assert "done=0 failed=0 skipped=2" in second.stderr
