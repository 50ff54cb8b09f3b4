"""`omega-vlm caption` against the real stack: killed partway, rerun, every image exactly once."""

from __future__ import annotations

import csv
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.images import ImageHost, image_bytes
from tests.support.procs import ROOT, wait_for
from tests.support.stack import Stack


def caption_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "omega_vlm.cli", "caption", *args]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "nested").mkdir(parents=True)
    for i in range(16):
        (root / f"img{i:02d}.png").write_bytes(image_bytes("PNG", (40 + i, 30), (i * 15, 100, 50)))
    for i in range(8):
        (root / "nested" / f"photo{i}.jpg").write_bytes(image_bytes("JPEG", (50, 40 + i), (20, i * 30, 90)))
    (root / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    png = image_bytes("PNG", (200, 200), (1, 2, 3))
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.txt").write_text("not an image, and not given as a manifest")
    return root


def test_killed_partway_and_rerun_captions_every_image_exactly_once(stack: Stack, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    args = caption_cmd(
        str(folder), "--recursive", "--out", str(out), "--server", stack.url, "--concurrency", "2", "--max-tokens", "40"
    )
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 5, 60, "some rows")
    first.send_signal(signal.SIGKILL)
    first.wait()
    with out.open("a") as f:
        f.write('{"image": "/half/written", "capt')  # what a crash mid-write leaves behind

    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr  # two images cannot be captioned
    assert "repaired a torn last row" in second.stderr
    summary = second.stderr.strip().splitlines()[-1]
    counts = dict(part.split("=") for part in summary.removeprefix("[caption] ").split()[:3])
    assert int(counts["done"]) + int(counts["failed"]) + int(counts["skipped"]) == 26, summary
    assert int(counts["skipped"]) >= 5 and "images/s" in summary  # the first run's rows were kept

    final = rows(out)  # every line parses: the torn one is gone
    captions = [r["image"] for r in final if "caption" in r]
    good = sorted(
        str(p.resolve())
        for p in folder.rglob("*")
        if p.suffix in (".png", ".jpg") and p.name not in ("broken.jpg", "truncated.png")
    )
    assert sorted(captions) == good  # each good image exactly once
    errors = {Path(r["image"]).name: r for r in final if "error" in r}
    assert set(errors) == {"broken.jpg", "truncated.png"}
    assert errors["broken.jpg"]["error"]["code"] == "invalid_image"
    assert all(isinstance(r.get("caption", ""), str) for r in final)

    third = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0
    assert "done=0 failed=0 skipped=26" in third.stderr
    assert rows(out) == final


def test_manifest_glob_url_and_csv(stack: Stack, folder: Path, tmp_path: Path, image_host: ImageHost) -> None:
    url = image_host.add("/remote-cat.png", image_bytes("PNG", (33, 33), (9, 9, 9)))
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# images to caption\nimages/img00.png\n\n{url}\nimages/nested\n")
    out = tmp_path / "out.csv"
    result = subprocess.run(
        caption_cmd(
            str(manifest),
            str(folder / "img1*.png"),
            "--out",
            str(out),
            "--server",
            stack.url,
            "--format",
            "csv",
            "--concurrency",
            "3",
            "--prompt",
            "Name the colors.",
            "--max-tokens",
            "8",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with out.open(newline="") as f:
        table = list(csv.DictReader(f))
    images = [r["image"] for r in table]
    assert url in images and str((folder / "img00.png").resolve()) in images
    assert len([i for i in images if "/nested/" in i]) == 8
    assert len([i for i in images if Path(i).name.startswith("img1")]) == 6  # img10..img15
    assert len(images) == len(set(images)) == 16
    assert all(r["caption"] for r in table)


class FlakyProxy(http.server.BaseHTTPRequestHandler):
    """Answers 503 + Retry-After to the first requests, then forwards to the real API."""

    upstream = ""
    failures_left = 0
    lock = threading.Lock()

    def _forward(self) -> None:
        with FlakyProxy.lock:
            fail = FlakyProxy.failures_left > 0
            FlakyProxy.failures_left -= fail
        if fail:
            body = json.dumps(
                {"error": {"message": "busy", "type": "overloaded_error", "param": None, "code": "queue_full"}}
            ).encode()
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = httpx.request(
            self.command,
            FlakyProxy.upstream + self.path,
            headers=headers,
            content=self.rfile.read(length) if length else None,
            timeout=120,
        )
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass


def test_retries_honour_retry_after(stack: Stack, tmp_path: Path) -> None:
    FlakyProxy.upstream, FlakyProxy.failures_left = stack.url, 3
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    image = tmp_path / "one.png"
    image.write_bytes(image_bytes())
    out = tmp_path / "one.jsonl"
    started = time.monotonic()
    result = subprocess.run(
        caption_cmd(
            str(image),
            "--out",
            str(out),
            "--concurrency",
            "1",
            "--server",
            f"http://127.0.0.1:{proxy.server_address[1]}",
            "--max-tokens",
            "4",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    proxy.shutdown()
    assert result.returncode == 0, result.stderr
    assert "retries=3" in result.stderr
    assert time.monotonic() - started >= 3  # three waits of Retry-After: 1
    assert "caption" in rows(out)[0]
