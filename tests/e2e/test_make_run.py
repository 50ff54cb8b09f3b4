"""`make run` on the embedded defaults: the whole service starts, answers the seeds' examples as
written (host aside), and stops every child cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from omega_vlm.devices import gpu_device_nodes
from tests.support.images import ALLOW_NETWORK, ImageHost, data_url, image_bytes
from tests.support.procs import ROOT, free_port, wait_for


def start_make_run(**extra_env: str) -> tuple[str, subprocess.Popen[bytes], Path]:
    """`make run` as a new user starts it, on a fresh port, Redis URL and data folder."""
    port, redis_port = free_port(), free_port()
    data = Path(tempfile.mkdtemp(prefix="omega-make-run-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMEGA_", "MODEL_", "API_KEY"))}
    env.update(
        {
            "PORT": str(port),
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DATA_DIR": str(data),
            "IMAGE_FETCH_ALLOW_NETWORKS": ALLOW_NETWORK,
            "PROGRESS_LOGS": "1",
            **extra_env,
        }
    )
    log = open(data / "make-run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (data / "make-run.log").read_text()
        try:
            return bool(httpx.get(f"{url}/health", timeout=2).json()["ready"])
        except (httpx.HTTPError, ValueError):
            return False

    wait_for(ready, 180, "make run to become ready", interval=0.5)
    return url, proc, data


@pytest.fixture(scope="module")
def make_run(image_host: ImageHost) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    url, proc, data = start_make_run()
    yield url, proc, data
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def curl(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    args = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", f"{url}{path}", "-H", "Content-Type: application/json"]
    if body is not None:
        args += ["-d", json.dumps(body)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text)


def seed_examples(image_url: str, b64_url: str) -> list[dict]:
    """usage-guide.md examples 1-5 and server-readme.md's chat example, with local image URLs."""
    return [
        {
            "model": "omega",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": image_url},
                        {"type": "text", "text": "Describe this image in detail."},
                    ],
                }
            ],
            "max_tokens": 512,
            "temperature": 0.7,
            "top_p": 0.95,
        },
        {
            "model": "omega",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": b64_url},
                        {"type": "text", "text": "What objects are in this image?"},
                    ],
                }
            ],
            "max_tokens": 256,
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": image_url},
                        {"type": "image", "image": image_url},
                        {"type": "text", "text": "Compare these two images."},
                    ],
                }
            ],
            "max_tokens": 512,
            "temperature": 0.8,
        },
        {"messages": [{"role": "user", "content": "Hello, how are you?"}], "max_tokens": 128},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": image_url}, {"type": "text", "text": "Analyze this image."}],
                }
            ],
            "max_tokens": 1024,
            "min_tokens": 50,
            "temperature": 0.7,
            "top_p": 0.95,
            "top_k": 50,
            "repetition_penalty": 1.1,
            "length_penalty": 1.0,
            "seed": 42,
            "stop": ["END", "STOP"],
        },
        {"model": "model", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.8, "stream": False},
    ]


def test_make_run_serves_the_seed_examples(
    make_run: tuple[str, subprocess.Popen[bytes], Path], image_host: ImageHost
) -> None:
    url, _, data = make_run
    image_url = image_host.add("/image.jpg", image_bytes("JPEG", (320, 240)), headers={"Content-Type": "image/jpeg"})
    b64_url = data_url(image_bytes("JPEG", (128, 128)), "image/jpeg")
    for body in seed_examples(image_url, b64_url):
        status, reply = curl(url, "/v1/chat/completions", body)
        assert status == 200, reply
        assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["total_tokens"] > 0 and reply["latency_seconds"] > 0
    status, generated = curl(
        url, "/generate", {"inputs": "Write a haiku about GPUs", "parameters": {"max_new_tokens": 64}}
    )
    assert status == 200 and "generated_text" in generated
    status, template = curl(url, "/v1/apply_template", {"messages": [{"role": "user", "content": "hello"}]})
    assert status == 200 and template["prompt"].endswith("ASSISTANT:")
    status, models = curl(url, "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "model"
    status, health = curl(url, "/health")
    assert status == 200 and health["ready"] and health["demo_model"]
    assert (data / "demo-model" / "config.json").is_file()
    assert (data / "blobs" / "images").is_dir()  # the local blob store is the default
    log = (data / "make-run.log").read_text()
    assert "[server] Ready. Health:" in log and "[req] chat 200" in log


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_the_supervisor_does_not_load_torch(make_run: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    """`up` only starts and watches processes: it imports torch only to count GPUs, where GPU device
    nodes exist (without them: seconds of CPU before the first child starts, and hundreds of MB
    held, for nothing), while the worker it started has."""
    _, proc, _ = make_run
    tree = descendants(proc.pid)

    def cmdline(pid: int) -> str:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    def has_torch(pid: int) -> bool:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()

    [supervisor] = [p for p in tree if "omega_vlm.cli up" in cmdline(p)]
    [worker] = [p for p in tree if "omega_vlm.cli worker" in cmdline(p)]
    assert has_torch(worker)
    assert has_torch(supervisor) == gpu_device_nodes()


def test_sigterm_stops_every_child(make_run: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, proc, _ = make_run
    port = int(url.rsplit(":", 1)[1])
    tree = descendants(proc.pid)
    assert len(tree) >= 4, tree  # supervisor, redis-server, a worker, the API
    os.killpg(proc.pid, signal.SIGTERM)  # what a terminal's Ctrl-C or `docker stop` does
    assert proc.wait(60) is not None
    alive = [p for p in tree if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()]
    assert not alive, alive
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
