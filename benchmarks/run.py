"""`make bench`: side-by-side measurements on this machine, written to BENCHMARKS.md.

Everything runs in one go on the same machine, so the figures are ratios of runs that shared it:
the full service path (HTTP -> Redis -> worker -> HTTP) against the worker's engine called
in-process on the same model and parameters, throughput at MAX_BATCH_SIZE 1/4/8 against
in-process batched generation, time to first token with and without streaming, image intake and
the API's intake capacity. The model is the generated demo model (tiny: the figures measure the
service's overhead and batching, not a real model's speed; see the GPU section for that).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import transformers
from PIL import Image
from redis import Redis

from benchmarks import load, mixed, peer, redis_scale
from benchmarks.service import COMPUTE_THREADS, BenchService
from shared.contract import ImagePart, JobPayload, Message, SamplingParams, TextPart
from shared.images import DecodeFloor, decode_image
from shared.queue.pause import pause_pulls as suspend
from shared.queue.pause import resume_pulls as resume
from shared.settings_sources import load_settings
from tests.support.images import ALLOW_NETWORK, data_url, start_image_host
from workers.decode_floor import decode_floor
from workers.demo_model import ensure_demo_model
from workers.engine import Engine
from workers.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 32
CLIENTS = 16
# The worker most sections run on (a worker with the same settings is reused): the continuous
# engine at 8 slots, the settings of the static engine's A/B and of the throughput table's last
# row. The service's default, 32 slots, is what the peer section runs.
BENCH_WORKER = {"MAX_BATCH_SIZE": "8", "ENGINE": "continuous"}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def request(i: int, tokens: int = NEW_TOKENS, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"benchmark request number {i}"}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
        **extra,
    }


def job(i: int, tokens: int = NEW_TOKENS) -> JobPayload:
    return JobPayload(
        id=f"bench-{i}",
        messages=(Message("user", (TextPart(f"benchmark request number {i}"),)),),
        params=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens),
        created_at=time.time(),
    )


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)

    def add(self, title: str, command: str, lines: list[str]) -> None:
        self.sections.append(f"### {title}\n\nCommand: `{command}`\n\n" + "\n".join(lines) + "\n")
        print(f"\n== {title}\n" + "\n".join(lines), flush=True)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --- in-process reference ------------------------------------------------------------------------
def in_process_latency(engine: Engine, n: int) -> list[float]:
    return [timed(lambda i=i: engine.generate([engine.prepare(job(i), [])])) for i in range(n)]


def in_process_throughput(engine: Engine, batch: int, total: int) -> float:
    """Output tokens/s of back-to-back batched generate calls of `batch` rows."""
    started = time.perf_counter()
    for start in range(0, total, batch):
        engine.generate([engine.prepare(job(start + k), []) for k in range(batch)])
    return total * NEW_TOKENS / (time.perf_counter() - started)


def floor_label(floor: DecodeFloor | None) -> str:
    if floor is None:
        return "none for this processor"
    if floor.shortest_edge:
        return f"shortest side at least {floor.gap * floor.shortest_edge:.0f} px"
    return f"at least {floor.gap * floor.side:.0f} px a side"


def worker_image_costs(engine: Engine, jpegs: list[bytes]) -> list[str]:
    """A worker's CPU per image, in-process: decode, then the model's processor (with the prompt
    and tokenizer), the whole image and at the decode floor (IMAGE_REDUCED_DECODE), alternating."""
    floor = decode_floor(engine.m.processor)
    cap = {"max_side": 1024, "max_pixels": 40_000_000}
    caption = JobPayload(
        id="bench-image",
        messages=(Message("user", (ImagePart("x"), TextPart("caption"))),),
        params=SamplingParams(max_new_tokens=NEW_TOKENS),
        created_at=time.time(),
    )
    costs: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    for data in jpegs:
        for reduced in (False, True):
            decoded, prepared = costs[reduced]
            started = time.perf_counter()
            image = decode_image(data, **cap, floor=floor if reduced else None)
            decoded.append(time.perf_counter() - started)
            prepared.append(timed(lambda image=image: engine.prepare(caption, [image])))
    whole, floored = costs[False], costs[True]
    size = Image.open(io.BytesIO(jpegs[0])).size
    return [
        f"Worker side, per {size[0]}x{size[1]} JPEG (median of {len(jpegs)}; done off the decoding loop, and for the "
        "next jobs while the batch generates):",
        "",
        "| | decode, EXIF, longest side to at most 1024 px | the model's processor, prompt and tokenizer | total |",
        "|---|---|---|---|",
        *(
            f"| {label} | {ms(statistics.median(d))} | {ms(statistics.median(p))} | "
            f"{ms(statistics.median([a + b for a, b in zip(d, p, strict=True)]))} |"
            for label, (d, p) in (
                ("decoded whole (IMAGE_REDUCED_DECODE=false)", whole),
                (f"decoded at the floor (IMAGE_REDUCED_DECODE=true: {floor_label(floor)})", floored),
            )
        ),
    ]


# --- through the service -------------------------------------------------------------------------
# Clients are benchmarks/load.py (raw HTTP/1.1 on asyncio): the load generator shares the two
# cores with the service, and httpx's own CPU per request would be measured as the service's.
def service_latency(url: str, n: int) -> tuple[list[float], list[float]]:
    replies = load.sequential(url, "/v1/chat/completions", [request(i) for i in range(n)])
    return [r.seconds for r in replies], [r.json()["service"]["generation_seconds"] for r in replies]


def httpx_latency(url: str, n: int) -> list[float]:
    """The same sequential requests through httpx, for comparison with a typical Python client."""
    latencies = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(n):
            started = time.perf_counter()
            client.post("/v1/chat/completions", json=request(i)).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def concurrent(
    url: str, total: int, clients: int, make: Callable[[int], dict[str, Any]], path: str
) -> tuple[float, list[load.Reply]]:
    """(wall seconds, replies) of `total` requests sent by `clients` connections back to back."""
    return load.concurrent(url, path, total, clients, make)


def streaming_ttft(url: str, n: int) -> tuple[list[float], list[float], list[float]]:
    stream, whole, worker = [], [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(n):
            started = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=request(i, stream=True)) as r:
                lines = r.iter_lines()
                for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        stream.append(time.perf_counter() - started)
                        break
                for _ in lines:
                    pass
            started = time.perf_counter()
            body = client.post("/v1/chat/completions", json=request(i)).json()
            whole.append(time.perf_counter() - started)
            worker.append(body["service"]["time_to_first_token_seconds"] or 0.0)
    return stream, whole, worker


def noise_jpeg(seed: int, size: tuple[int, int] = (1024, 768)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


# --- the suite -----------------------------------------------------------------------------------
def run(quick: bool) -> str:
    n_latency, n_through, n_images = (6, 16, 8) if quick else (40, 96, 48)
    command = "make bench" + (" BENCH_ARGS=--quick" if quick else "")
    report = Report()
    data = ROOT / ".omega" / "bench"
    demo = ensure_demo_model(data / "demo-model")
    torch.set_num_threads(COMPUTE_THREADS)
    settings = load_settings(environ={"MODEL_PATH": str(demo)})
    engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    engine.warmup()

    host = start_image_host()
    service = BenchService(demo, IMAGE_FETCH_ALLOW_NETWORKS=ALLOW_NETWORK)
    try:
        # 1. latency: full path against in-process, same model, same request, one at a time.
        service.start_worker(**BENCH_WORKER)
        local = in_process_latency(engine, n_latency)
        remote, gen = service_latency(service.url, n_latency)
        with_httpx = httpx_latency(service.url, n_latency)
        overhead = percentile(remote, 50) - percentile(local, 50)
        report.add(
            "Latency: full service path vs in-process engine",
            command,
            [
                f"{n_latency} sequential chat requests, {NEW_TOKENS} new tokens each (greedy, min_tokens=max_tokens).",
                "",
                "| path | p50 | p99 |",
                "|---|---|---|",
                f"| in-process `Engine.generate` | {ms(percentile(local, 50))} | {ms(percentile(local, 99))} |",
                f"| HTTP -> API -> Redis -> worker -> API -> HTTP | {ms(percentile(remote, 50))} | {ms(percentile(remote, 99))} |",
                f"| (worker's own generate time inside that) | {ms(percentile(gen, 50))} | {ms(percentile(gen, 99))} |",
                f"| the same path, client httpx instead of the lean client | {ms(percentile(with_httpx, 50))} | {ms(percentile(with_httpx, 99))} |",
                "",
                f"**Service overhead at p50: {overhead * 1000:.1f} ms** (target: at most 5 ms on this machine), "
                "measured with the lean client (benchmarks/load.py: raw HTTP/1.1 on one keep-alive connection); "
                f"httpx's own time adds {(percentile(with_httpx, 50) - percentile(remote, 50)) * 1000:.1f} ms at p50.",
            ],
        )

        # 3. time to first token, on the worker of section 1 (reported in its place below): each
        # worker start costs seconds of CPU, and `make test` runs this file's quick mode.
        stream, whole, worker = streaming_ttft(service.url, n_latency // 2)
        ttft_lines = [
            "| | p50 | p99 |",
            "|---|---|---|",
            f"| streaming: first content chunk at the client | {ms(percentile(stream, 50))} | {ms(percentile(stream, 99))} |",
            f"| not streaming: the whole answer at the client | {ms(percentile(whole, 50))} | {ms(percentile(whole, 99))} |",
            f"| worker: start of generate to first token | {ms(percentile(worker, 50))} | {ms(percentile(worker, 99))} |",
        ]

        # 2. throughput at MAX_BATCH_SIZE 1, 4, 8 with 16 concurrent clients; 2b. requests with an
        # image each, the worker's read-ahead on and off; 3b. the two engines side by side. Each
        # worker start costs seconds of CPU (`make test` runs the quick mode), so everything that
        # runs on BENCH_WORKER (MAX_BATCH_SIZE=8, continuous) runs on section 1's worker
        # first, and the other settings follow; the report keeps its order.
        captions = [data_url(noise_jpeg(1000 + i), "image/jpeg") for i in range(CLIENTS + n_through)]

        def caption(i: int) -> dict[str, Any]:
            image = {"type": "image", "image": captions[i]}
            return {**request(i), "messages": [{"role": "user", "content": [image, {"type": "text", "text": "caption"}]}]}

        def throughput_row(batch: int) -> tuple[float, str]:
            service.start_worker(**{**BENCH_WORKER, "MAX_BATCH_SIZE": str(batch)})
            wall, responses = concurrent(service.url, n_through, CLIENTS, request, "/v1/chat/completions")
            bodies = [r.json() for r in responses]
            tokens = sum(b["usage"]["completion_tokens"] for b in bodies)
            mean_batch = statistics.mean(b["service"]["batch_size"] for b in bodies)
            reference = in_process_throughput(engine, batch, n_through)
            row = f"| {batch} | {tokens / wall:.0f} | {reference:.0f} | {tokens / wall / reference:.2f} | {mean_batch:.1f} |"
            return tokens / wall, row

        def images_row(label: str, extra: dict[str, str]) -> str:
            service.start_worker(**BENCH_WORKER, **extra)
            concurrent(service.url, CLIENTS, CLIENTS, caption, "/v1/chat/completions")  # warm-up
            wall, responses = concurrent(service.url, n_through, CLIENTS, lambda i: caption(CLIENTS + i), "/v1/chat/completions")
            tokens = sum(r.json()["usage"]["completion_tokens"] for r in responses)
            return f"| {label} | {n_through / wall:.1f} | {tokens / wall:.0f} |"

        through = {8: throughput_row(8)}
        image_rows = {"on": images_row("read-ahead on (default)", {})}
        engines = {"continuous": mixed.measure(service.url, quick)}
        through[4] = throughput_row(4)
        through[1] = throughput_row(1)
        image_rows["off"] = images_row("read-ahead off (IMAGE_CACHE_SIZE=0)", {"IMAGE_CACHE_SIZE": "0"})
        image_rows["whole"] = images_row(
            "read-ahead on, images decoded whole (IMAGE_REDUCED_DECODE=false)", {"IMAGE_REDUCED_DECODE": "false"}
        )
        service.start_worker(**{**BENCH_WORKER, "ENGINE": "static"})
        engines["static"] = mixed.measure(service.url, quick)

        report.add(
            f"Throughput: {CLIENTS} concurrent clients, {n_through} requests of {NEW_TOKENS} tokens",
            command,
            [
                "| MAX_BATCH_SIZE | service tokens/s | in-process tokens/s (same batch size) | ratio | mean batch |",
                "|---|---|---|---|---|",
                *(through[batch][1] for batch in (1, 4, 8)),
                "",
                f"**Batch 8 vs batch 1 through the service: {through[8][0] / through[1][0]:.2f}x** output "
                "tokens/s (target: at least 4x); the ratio column is the full path against in-process "
                "batched generation (target: at least 0.85).",
            ],
        )
        report.add(
            "Requests with images: read-ahead on and off",
            command,
            [
                f"{n_through} requests, each with its own 1024x768 JPEG (data URL), {NEW_TOKENS} tokens, "
                f"{CLIENTS} clients, MAX_BATCH_SIZE=8. Read-ahead (workers/read_ahead.py) prepares the rows of the "
                "jobs waiting next (fetch, decode, processor) while a batch generates; IMAGE_CACHE_SIZE=0 turns it off.",
                "",
                "| worker | images/s | output tokens/s |",
                "|---|---|---|",
                image_rows["on"],
                image_rows["off"],
                image_rows["whole"],
                "",
                "By default a worker decodes each JPEG at the smallest scale that keeps twice what the model's "
                "processor resizes it to (IMAGE_REDUCED_DECODE; the demo model's processor keeps a 32 px shortest "
                "side, so a 1024x768 JPEG is decoded at 1/8); the last row decodes every image whole. The CPU "
                "this saves per image is in the \"Image intake\" section below.",
            ],
        )

        # 3. time to first token (measured after section 1, on the same worker).
        report.add("Time to first token", command, ttft_lines)

        # 3b. the two engines side by side: head-of-line blocking, idle latency, throughput.
        report.add("Continuous vs static engine", command, mixed.table(engines, quick))

        # 4. image intake (workers paused: only validation, fetch, probe, store and enqueue count).
        redis = Redis.from_url(service.env["REDIS_URL"])
        suspend(redis)
        images = [noise_jpeg(i) for i in range(n_images * 2)]
        urls = [host.add(f"/img{i}.jpg", img, headers={"Content-Type": "image/jpeg"}) for i, img in enumerate(images)]

        def image_job(source: str) -> dict[str, Any]:
            return {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": source}, {"type": "text", "text": "x"}]}
                ],
                "max_tokens": 1,
                "priority": "batch",
            }

        lines = [
            f"{n_images} distinct 1024x768 JPEGs (~{len(images[0]) // 1024} KiB each) per row; POST /v1/jobs "
            "with the workers paused, so nothing but the API's intake is measured.",
            "",
            "| source | ms per image (1 client) | images/s (8 clients) |",
            "|---|---|---|",
        ]
        for label, sources in (("data: URL", [data_url(i, "image/jpeg") for i in images]), ("http URL", urls)):
            one = [r.seconds for r in load.sequential(service.url, "/v1/jobs", [image_job(s) for s in sources[:n_images]])]
            wall, _ = concurrent(service.url, n_images, 8, lambda i, s=sources: image_job(s[n_images + i]), "/v1/jobs")
            lines.append(f"| {label} | {statistics.median(one) * 1000:.1f} | {n_images / wall:.1f} |")
        lines += ["", *worker_image_costs(engine, images[:16])]
        report.add("Image intake", command, lines)

        # 5. API intake capacity: validation + enqueue, text only.
        total = n_through * 2
        wall, responses = concurrent(service.url, total, CLIENTS, lambda i: request(i), "/v1/jobs")
        accepted = sum(1 for r in responses if r.status == 202)
        report.add(
            "API intake capacity",
            command,
            [
                f"{total} POST /v1/jobs (text) from {CLIENTS} clients, workers paused: **{accepted / wall:.0f} requests/s** "
                f"accepted ({accepted} of {total}) by one API process (uvicorn, 1 process), client on the same 2 cores."
            ],
        )
        resume(redis)
    finally:
        service.stop()
        host.stop()

    # 6. the worker's engine against plain transformers `generate`, in-process, same model.
    # Quick mode (a smoke run, `make test`) runs the same code on shorter rows, once, through
    # every path of the GPU benchmark's script (batch 32, the bandwidth floor; a smaller static
    # cache for the CPU's sake): `make test` runs the script only here.
    engine_args = ["--tiny", "--device", "cpu"]
    if quick:
        engine_args += ["--tokens", "4", "--batches", "1,2,32", "--runs", "1", "--bandwidth-tbs", "1"]
        engine_args += ["--max-model-length", "1024"]
    else:
        engine_args += ["--tokens", str(NEW_TOKENS), "--batches", "1,8", "--runs", "3"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "engine.md"
        subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_engine", *engine_args, "--out", str(out)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        table = out.read_text().splitlines()
    report.add(
        "Engine against plain transformers generate (CPU)",
        "python -m benchmarks.gpu_engine " + " ".join(engine_args),
        [
            "The GPU benchmark's script on a small LLaVA configuration on the CPU: the worker's engine "
            "(per-row sampling parameters and seeds, stop handling, static cache when TORCH_COMPILE is "
            "on) against transformers' own greedy `generate` on the same inputs. On the CPU torch.compile "
            "is skipped by transformers (it logs so); the static cache alone costs a little there.",
            "",
            *table[2:],
        ],
    )
    # 7. one Redis: admission and the workers' bookkeeping without a model (benchmarks/redis_scale.py).
    scale_args = ["--quick"] if quick else []
    report.add(
        "One Redis: admission and worker bookkeeping without a model",
        " ".join(["python -m benchmarks.redis_scale", *scale_args]),
        redis_scale.measure(quick),
    )
    return "\n".join(report.sections)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, no GPU; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--peer-path",
        type=Path,
        help="also run benchmarks/peer.py (transformers serve beside this service) with the peer's packages "
        "in this folder; it rewrites benchmarks/peer_results.md",
    )
    args = parser.parse_args()
    body = run(args.quick)
    if args.peer_path is not None:
        command = "make bench BENCH_ARGS='" + ("--quick " if args.quick else "") + f"--peer-path {args.peer_path}'"
        peer.write(args.peer_path, args.quick, 1, ROOT / "benchmarks" / "peer_results.md", command)
    template = (ROOT / "benchmarks" / "BENCHMARKS.template.md").read_text()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.write_text(
        template.format(
            machine=machine(),
            date=stamp,
            cpu_results=body,
            peer_results=(ROOT / "benchmarks" / "peer_results.md").read_text(),
            gpu_results=(ROOT / "benchmarks" / "gpu_results.md").read_text(),
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
