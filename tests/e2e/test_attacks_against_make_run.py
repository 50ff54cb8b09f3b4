"""Issue 12's acceptance: the adversarial review's attacks replayed from outside, over real HTTP,
against the service as a new user starts it (`make run`). Each gets its clean 4xx/5xx answer in
OpenAI's error shape, /livez stays quick during the heavy ones, the SDK's default retries and a
client that leaves run no extra or orphan generation, and nothing accepted is lost.

The tests run in file order against one service and share its record of accepted work; the last
one checks that record and stops the service with SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import msgspec
import openai
import pytest
from PIL import Image
from redis import Redis

from shared import keys
from tests.e2e.test_make_run import descendants, start_make_run
from tests.support.api_thread import livez_during
from tests.support.assertions import assert_openai_error
from tests.support.images import ImageHost, image_bytes
from tests.support.procs import free_port

LIVEZ_BOUND_S = 1.0  # the goal is 0.1 s; generous for a shared 2-core machine
FETCH_TIMEOUT_S = 1.0  # IMAGE_FETCH_TIMEOUT_S: low, so the slow-host attack takes seconds, not minutes
SLOW_IMAGE_S = FETCH_TIMEOUT_S + 0.5  # the slow host answers just after the fetch deadline
FETCH_POOL, BATCH_SHARE = 64, 0.5  # the defaults, named: the review's pool of 64 connections
ONE_BATCH_SHARE = int(FETCH_POOL * BATCH_SHARE) // 2  # api/intake/fetch_shares.py: 16 connections
HEADER_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 4.0  # short enough for the SDK case, long enough to tell a disconnect from it
BATCH_LANE_MAX = 4  # the review put 1,000 jobs in an uncapped lane; a few show the cap
BATCH_QUEUE_DEPTH = 2  # lane jobs fed onto a worker's queue ahead of its work
SLOTS = 8
HUGE = 18446744073709551616  # 2**64
# Seconds of demo-model work: well past REQUEST_TIMEOUT_S even on a quiet machine (4096 tokens took
# 3.1 s once the continuous worker pulled off its decoding loop).
LONG_TOKENS = 8000
LONG = {"max_tokens": LONG_TOKENS, "min_tokens": LONG_TOKENS, "temperature": 0.8}
HI = [{"role": "user", "content": "hi"}]
FINAL_JOB = ("succeeded", "failed", "canceled", "expired")
FINAL_BATCH = ("completed", "failed", "cancelled", "expired")


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    data: Path
    redis_url: str
    http: httpx.Client
    jobs: list[str] = field(default_factory=list)  # every job id answered with a 2xx
    canceled: list[str] = field(default_factory=list)  # of those, the ones the test canceled
    batches: list[str] = field(default_factory=list)
    livez: dict[str, float] = field(default_factory=dict)

    def job_ids(self) -> set[str]:
        with Redis.from_url(self.redis_url) as redis:
            return {key.decode().removeprefix("rq:job:") for key in redis.scan_iter("rq:job:*", count=1000)}

    def heavy(self, name: str, attack: Any) -> httpx.Response:
        """Run `attack`, measuring /livez meanwhile from a probe in a process of its own (as
        kubelet would: the attacking client's own work in this process is not counted)."""
        response, stats = livez_during(self.url, attack)
        self.livez[name] = stats.worst
        print(f"/livez during {name}: {stats}")
        assert stats.worst < LIVEZ_BOUND_S, (name, str(stats))
        assert isinstance(response, httpx.Response)
        return response


@pytest.fixture(scope="module")
def service(image_host: ImageHost) -> Iterator[Service]:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    url, proc, data = start_make_run(
        REDIS_URL=redis_url,
        HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S),
        MAX_NEW_TOKENS_DEFAULT=str(LONG_TOKENS),
        # The lane test holds every slot with long jobs: 8 of them decoding, not the default 32,
        # so the rest of this module (and the tests beside it on two cores) is not slowed for it.
        MAX_BATCH_SIZE=str(SLOTS),
        BATCH_LANE_MAX=str(BATCH_LANE_MAX),
        BATCH_QUEUE_DEPTH=str(BATCH_QUEUE_DEPTH),
        IMAGE_FETCH_TIMEOUT_S=str(FETCH_TIMEOUT_S),
        IMAGE_FETCH_POOL_SIZE=str(FETCH_POOL),
        IMAGE_FETCH_BATCH_SHARE=str(BATCH_SHARE),
    )
    with httpx.Client(base_url=url, timeout=120) as http:
        yield Service(url, proc, data, redis_url, http)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def chat_line(custom_id: str, **body: Any) -> str:
    body = {"model": "model", "max_tokens": 2, "messages": HI, **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def upload(service: Service, rows: list[str]) -> httpx.Response:
    return service.http.post(
        "/v1/files", files={"file": ("in.jsonl", "\n".join(rows).encode())}, data={"purpose": "batch"}
    )


def create_batch(service: Service, rows: list[str], up: httpx.Response | None = None) -> str:
    up = up or upload(service, rows)
    assert up.status_code == 200, up.text
    reply = service.http.post(
        "/v1/batches",
        json={"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert reply.status_code == 200, reply.text
    service.batches.append(reply.json()["id"])
    return str(reply.json()["id"])


def wait_batch(service: Service, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = service.http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in FINAL_BATCH or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def rows_of(service: Service, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id, "no file"
    text = service.http.get(f"/v1/files/{file_id}/content").text
    return [json.loads(row) for row in text.splitlines() if row.strip()]


def with_image(url: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]}
    ]


def test_bad_batch_lines_are_error_rows_and_block_no_batch(service: Service) -> None:
    # 5 lines stand in for the review's 107: the point is a bad line costs only its own row. The
    # non-ASCII URL names a loopback address outside the allow list, so its line fails by policy.
    bad = create_batch(
        service,
        [
            chat_line("ok-1"),
            chat_line("huge-top-k", top_k=HUGE),
            chat_line("ok-2"),
            chat_line("non-ascii-url", messages=with_image("http://127.0.0.1:9/bilder/ä.png")),
            chat_line("ok-3"),
        ],
    )
    later = create_batch(service, [chat_line("later-1"), chat_line("later-2")])
    done, after = wait_batch(service, bad), wait_batch(service, later)
    assert (done["status"], done["request_counts"]) == ("completed", {"total": 5, "completed": 3, "failed": 2}), done
    assert (after["status"], after["request_counts"]["completed"]) == ("completed", 2), after
    errors = {row["custom_id"]: row for row in rows_of(service, done["error_file_id"])}
    assert set(errors) == {"huge-top-k", "non-ascii-url"}, errors
    assert not any("Traceback" in json.dumps(row) for row in errors.values())
    assert {row["custom_id"] for row in rows_of(service, done["output_file_id"])} == {"ok-1", "ok-2", "ok-3"}


def test_the_batch_lane_is_capped_with_a_503(service: Service) -> None:
    # Long interactive jobs take every slot of the one worker (a continuous worker runs lane jobs
    # beside a single long one); the feeder moves BATCH_QUEUE_DEPTH lane jobs onto its queue, the
    # rest wait in the lane, and one past BATCH_LANE_MAX is refused.
    holders = []
    for _ in range(SLOTS):
        holder = service.http.post("/v1/jobs", json={"messages": HI, **LONG})
        assert holder.status_code == 202, holder.text
        holders.append(holder.json()["id"])
    service.jobs.extend(holders)
    service.canceled.extend(holders)
    try:
        deadline = time.monotonic() + 60
        while any(service.http.get(f"/v1/jobs/{h}").json()["status"] != "running" for h in holders):
            assert time.monotonic() < deadline, "the long jobs did not all start"
            time.sleep(0.1)
        replies = []
        for _ in range(BATCH_LANE_MAX + BATCH_QUEUE_DEPTH + 4):
            replies.append(service.http.post("/v1/jobs", json={"messages": HI, "max_tokens": 2, "priority": "batch"}))
            if replies[-1].status_code != 202:
                break
        service.jobs.extend(reply.json()["id"] for reply in replies if reply.status_code == 202)
        assert len(replies) - 1 <= BATCH_LANE_MAX + BATCH_QUEUE_DEPTH + 1, [reply.status_code for reply in replies]
        assert assert_openai_error(replies[-1], 503)["code"] == "batch_lane_full"
        assert int(replies[-1].headers["retry-after"]) > 0
        with Redis.from_url(service.redis_url) as redis:
            # On a loaded machine the feeder may move lane jobs to the worker's queue (up to
            # BATCH_QUEUE_DEPTH) only after the refusal, leaving room: then the lane fills again
            # up to a refusal, and it is full when it refuses.
            for _ in range(BATCH_QUEUE_DEPTH + 1):
                if redis.llen(keys.BATCH_LANE) == BATCH_LANE_MAX:
                    break
                more = service.http.post("/v1/jobs", json={"messages": HI, "max_tokens": 2, "priority": "batch"})
                if more.status_code == 202:
                    service.jobs.append(more.json()["id"])
                else:
                    assert assert_openai_error(more, 503)["code"] == "batch_lane_full"
            assert redis.llen(keys.BATCH_LANE) == BATCH_LANE_MAX
    finally:  # the holders never outlive this test, whatever fails in it
        for holder_id in holders:
            assert service.http.delete(f"/v1/jobs/{holder_id}").status_code == 200


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}],
    ids=["17-pairs", "65-char-key", "513-char-value"],
)
def test_metadata_over_openai_bounds_is_a_400(service: Service, metadata: dict[str, str]) -> None:
    before = service.job_ids()
    reply = service.http.post(
        "/v1/jobs", json={"messages": HI, "max_tokens": 2, "priority": "batch", "metadata": metadata}
    )
    assert assert_openai_error(reply, 400)["param"].startswith("metadata")
    assert service.job_ids() == before
    ok = service.http.post("/v1/jobs", json={"messages": HI, "max_tokens": 2, "metadata": {"k" * 64: "v" * 512}})
    assert ok.status_code == 202, ok.text
    service.jobs.append(ok.json()["id"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": HI, "top_k": HUGE}, "top_k"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": HUGE}, "max_tokens"),
        ("/v1/jobs", {"messages": HI, "top_k": HUGE}, "top_k"),
        ("/generate", {"inputs": "hi", "parameters": {"top_k": HUGE}}, "parameters.top_k"),
    ],
)
def test_huge_integers_are_a_400(service: Service, path: str, body: dict[str, Any], param: str) -> None:
    assert_openai_error(service.http.post(path, json=body), 400, param)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/jobs", "/generate", "/v1/batches"])
def test_json_nested_1000_deep_is_a_400(service: Service, path: str) -> None:
    body = '{"messages": [], "user": ' + "[" * 1000 + "]" * 1000 + "}"
    reply = service.http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert assert_openai_error(reply, 400)["code"] == "json_too_deep"


@pytest.mark.parametrize("job_id", ["%00", "%C3%A9", "a%20b"])  # NUL, é, a space
def test_bad_job_ids_are_a_404(service: Service, job_id: str) -> None:
    for method in ("GET", "DELETE"):
        error = assert_openai_error(service.http.request(method, f"/v1/jobs/{job_id}"), 404)
        assert error["code"] == "job_not_found", (method, job_id)


def test_a_non_latin1_upload_name_downloads(service: Service) -> None:
    name = "données-日本語.jsonl"
    up = service.http.post("/v1/files", files={"file": (name, b'{"a": 1}\n')}, data={"purpose": "batch"})
    assert up.status_code == 200, up.text
    reply = service.http.get(f"/v1/files/{up.json()['id']}/content")
    assert reply.status_code == 200 and reply.text == '{"a": 1}\n'
    header = reply.headers["content-disposition"]
    assert header.isascii() and unquote(header.split("filename*=UTF-8''")[1]) == name


@pytest.mark.parametrize(
    "host",
    ["[::7f00:1]", "[::ffff:0:a9fe:a9fe]", "[64:ff9b:1::a9fe:a9fe]", "[fec0::1]", "168.63.129.16", "169.254.169.254"],
)
def test_embedded_and_metadata_addresses_are_refused_unsent(service: Service, host: str) -> None:
    started = time.perf_counter()
    reply = service.http.post("/v1/chat/completions", json={"messages": with_image(f"http://{host}/latest/x.png")})
    error = assert_openai_error(reply, 400, "messages[0].content[0].image_url")
    assert error["code"] == "image_url_blocked", error
    # Refused by policy before any connect: a connect attempt would wait for IMAGE_FETCH_TIMEOUT_S.
    assert time.perf_counter() - started < 3


def test_non_ascii_image_url_and_redirect_location_are_fetched(service: Service, image_host: ImageHost) -> None:
    image_host.add("/caf%C3%A9.png", image_bytes("PNG", (32, 32)))
    redirect = image_host.redirect("/to-cafe", "/café.png".encode().decode("latin-1"))  # raw UTF-8 Location
    for url in (f"{image_host.base}/café.png", redirect):
        reply = service.http.post("/v1/chat/completions", json={"messages": with_image(url), "max_tokens": 2})
        assert reply.status_code == 200, reply.text


def test_the_one_by_forty_million_png_is_a_400(service: Service, image_host: ImageHost) -> None:
    buf = io.BytesIO()
    Image.new("1", (1, 40_000_000)).save(buf, "PNG", optimize=True)
    url = image_host.add("/strip.png", buf.getvalue())
    reply = service.heavy(
        "a 1x40,000,000 PNG", lambda: service.http.post("/v1/chat/completions", json={"messages": with_image(url)})
    )
    assert assert_openai_error(reply, 400)["code"] == "image_aspect_ratio"


def test_a_million_empty_messages_to_apply_template(service: Service) -> None:
    body = b'{"messages":[' + b",".join([b'{"role":"user","content":""}'] * 1_000_000) + b"]}"
    headers = {"Content-Type": "application/json"}
    reply = service.heavy(
        "1M empty messages (27.7 MB)", lambda: service.http.post("/v1/apply_template", content=body, headers=headers)
    )
    assert assert_openai_error(reply, 400)["code"] == "too_many_json_items"


def test_a_28_mb_chat_prompt_is_refused_before_enqueue(service: Service) -> None:
    body = msgspec.json.encode({"messages": [{"role": "user", "content": "x" * 28_000_000}]})
    before = service.job_ids()
    headers = {"Content-Type": "application/json"}
    reply = service.heavy(
        "a 28 MB chat prompt", lambda: service.http.post("/v1/chat/completions", content=body, headers=headers)
    )
    assert assert_openai_error(reply, 400, "messages")["code"] == "context_length_exceeded"
    assert service.job_ids() == before


def test_half_a_header_is_closed_within_the_header_timeout(service: Service) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: loc")
        started = time.perf_counter()
        while sock.recv(65536):
            pass
        waited = time.perf_counter() - started
    print(f"half a header closed after {waited:.2f} s (HEADER_TIMEOUT_S={HEADER_TIMEOUT_S})")
    assert HEADER_TIMEOUT_S * 0.8 < waited < HEADER_TIMEOUT_S + 2


def final_status(service: Service, job_id: str, within_s: float) -> str:
    deadline = time.monotonic() + within_s
    while True:
        status = str(service.http.get(f"/v1/jobs/{job_id}").json()["status"])
        if status in FINAL_JOB or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_the_sdk_with_default_retries_runs_the_job_once(service: Service) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", timeout=60)  # max_retries: the default 2
    before = service.job_ids()
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as timeout:
        client.chat.completions.create(
            model="model",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=LONG_TOKENS,
            extra_body={"min_tokens": LONG_TOKENS},
        )
    took = time.monotonic() - started
    print(f"SDK call answered {timeout.value.status_code} after {took:.1f} s")
    assert timeout.value.status_code == 504 and took < 2 * REQUEST_TIMEOUT_S  # one try, not three
    assert isinstance(timeout.value.body, dict) and set(timeout.value.body) == {"message", "type", "param", "code"}
    new = service.job_ids() - before
    assert len(new) == 1, new
    assert final_status(service, new.pop(), 10) == "canceled"


def test_a_non_streaming_client_that_leaves_stops_its_generation(service: Service) -> None:
    before = service.job_ids()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{service.url}/v1/chat/completions", json={"messages": HI, **LONG}, timeout=1)
    left = time.monotonic()
    new = service.job_ids() - before
    assert len(new) == 1, new
    assert final_status(service, new.pop(), 10) == "canceled"
    canceled_after = time.monotonic() - left
    # The server's own deadline would cancel it REQUEST_TIMEOUT_S - 1 s after the client left.
    assert canceled_after < REQUEST_TIMEOUT_S - 1.5, canceled_after
    started = time.monotonic()
    reply = service.http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    print(
        f"canceled {canceled_after:.2f} s after the client left; next request served in {time.monotonic() - started:.2f} s"
    )


def test_six_30_mb_batch_lines_cost_only_their_own_rows(service: Service) -> None:
    # The review's six 30 MB lines (each under a batch line's limit, so each is parsed): every one
    # becomes its own context_length_exceeded row, and the loop keeps answering meanwhile.
    huge = "x" * 30_000_000
    rows = [chat_line(f"huge-{i}", messages=[{"role": "user", "content": huge}]) for i in range(6)]
    stored = service.heavy("the upload of six 30 MB batch lines", lambda: upload(service, rows))
    batch_id = create_batch(service, rows, stored)

    def run() -> httpx.Response:
        wait_batch(service, batch_id, timeout=120)
        return service.http.get(f"/v1/batches/{batch_id}")

    batch = service.heavy("six 30 MB batch lines", run).json()
    assert (batch["status"], batch["request_counts"]) == ("completed", {"total": 6, "completed": 0, "failed": 6}), batch
    rows = rows_of(service, batch["error_file_id"])
    codes = {(row["error"] or row["response"]["body"]["error"])["code"] for row in rows}
    assert codes == {"context_length_exceeded"}, codes


def test_a_120_mb_first_line_of_an_upload(service: Service) -> None:
    # Over a batch line's limit: stored without being parsed to sniff it (it becomes its own
    # line_too_large row if a batch runs it); the loop never waits behind a 120 MB parse.
    first = (
        b'{"custom_id":"big","method":"POST","url":"/v1/chat/completions","body":{"x":"' + b"y" * 120_000_000 + b'"}}\n'
    )
    second = chat_line("small").encode() + b"\n"
    files = {"file": ("big.jsonl", first + second, "application/jsonl")}
    reply = service.heavy(
        "a 120 MB first line", lambda: service.http.post("/v1/files", files=files, data={"purpose": "batch"})
    )
    assert reply.status_code == 200, reply.text[:300]


def sample_every(interval_s: float, sample: Any, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        sample()


def test_slow_image_hosts_in_a_batch_starve_no_interactive_request(service: Service, image_host: ImageHost) -> None:
    # The review's starvation: one 64-line batch naming 10 slow URLs per line held the whole fetch
    # pool, and every interactive request with a remote image failed (400 image_fetch_timeout).
    # Batch lines now hold only their share of the pool: interactive requests fetching from the
    # same host meanwhile succeed, and each slow line is a retryable 504 row (not a 400). The
    # host counts the slow fetches it holds at once: one batch's share, never the whole pool (with
    # this module's lane cap the batch reads 4 lines a step, which unshared would hold ~40 at once).
    fast = image_host.add("/fast.png", image_bytes("PNG", (32, 32)))
    image_host.holding.peak = 0
    slow = image_bytes("PNG", (32, 32))
    rows = [
        chat_line(
            f"slow-{n}",
            messages=[
                {
                    "role": "user",
                    "content": [
                        *(
                            {
                                "type": "image_url",
                                "image_url": {"url": image_host.slow(f"/slow/{n}/{i}.png", slow, SLOW_IMAGE_S)},
                            }
                            for i in range(10)
                        ),
                        {"type": "text", "text": "x"},
                    ],
                }
            ],
        )
        for n in range(64)
    ]
    batch_id = create_batch(service, rows)
    while service.http.get(f"/v1/batches/{batch_id}").json()["status"] == "validating":
        time.sleep(0.05)
    started = time.monotonic()
    held: list[int] = []  # slow fetches the host holds, sampled every 20 ms
    sampling = threading.Event()
    sampler = threading.Thread(target=sample_every, args=(0.02, lambda: held.append(image_host.holding.now), sampling))
    sampler.start()
    interactive: list[tuple[int, float]] = []
    try:
        while service.http.get(f"/v1/batches/{batch_id}").json()["status"] == "in_progress":
            asked = time.monotonic()
            reply = service.http.post("/v1/chat/completions", json={"messages": with_image(fast), "max_tokens": 2})
            interactive.append((reply.status_code, time.monotonic() - asked))
            assert reply.status_code == 200, reply.text
            time.sleep(0.2)
    finally:
        sampling.set()
        sampler.join()
    batch = wait_batch(service, batch_id, timeout=120)
    held.sort()
    p50, p90 = held[len(held) // 2], held[len(held) * 9 // 10]
    print(
        f"slow-host batch done in {time.monotonic() - started:.1f} s; {len(interactive)} interactive requests "
        f"with a remote image meanwhile, slowest {max((t for _, t in interactive), default=0):.2f} s; "
        f"slow fetches held at once: median {p50}, p90 {p90}, peak {image_host.holding.peak} "
        f"(one batch's share: {ONE_BATCH_SHARE})"
    )
    assert len(interactive) >= 3, interactive  # the batch was fetching while they ran
    # The share is exact in the API; the host may count a fetch the API already dropped for a
    # moment, so the bound allows half a share more (unshared, this batch holds ~40 at once).
    assert p50 >= ONE_BATCH_SHARE // 2 and p90 <= ONE_BATCH_SHARE * 3 // 2, (p50, p90)
    assert (batch["status"], batch["request_counts"]) == ("completed", {"total": 64, "completed": 0, "failed": 64})
    rows_out = rows_of(service, batch["error_file_id"])
    assert sorted(row["custom_id"] for row in rows_out) == sorted(f"slow-{n}" for n in range(64))
    for row in rows_out:
        assert row["response"] and row["response"]["status_code"] in (502, 504), row
        assert row["response"]["body"]["error"]["code"] == "image_fetch_timeout", row


def test_nothing_accepted_was_lost_and_sigterm_stops_the_service(service: Service) -> None:
    assert service.jobs and service.batches
    for job_id in service.jobs:
        want = "canceled" if job_id in service.canceled else "succeeded"
        assert final_status(service, job_id, 30) == want, job_id
    for batch_id in service.batches:
        assert wait_batch(service, batch_id)["status"] == "completed", batch_id
    health = service.http.get("/health")
    assert health.status_code == 200 and health.json()["ready"], health.text
    print("worst /livez per heavy attack (ms):", {k: round(v * 1000) for k, v in service.livez.items()})
    with Redis.from_url(service.redis_url) as redis:  # a full Redis refuses writes, never evicts jobs
        assert redis.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert int(redis.config_get("maxmemory")["maxmemory"]) > 0
    tree = descendants(service.proc.pid)
    os.killpg(service.proc.pid, signal.SIGTERM)
    code = service.proc.wait(60)  # raises if the service is still up after a minute
    print(f"make run exited {code} after SIGTERM")
    alive = [p for p in tree if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()]
    assert not alive, alive
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{service.url}/livez", timeout=2)
