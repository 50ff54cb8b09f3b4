"""The mixed workload of issue 10, through the service: short requests arriving (fixed-seed
Poisson) while long ones run, plus the idle and throughput figures the engines are compared on.

`make bench` runs every function here once per engine (ENGINE=static, then continuous) on the
same worker settings, and reports the two side by side with their ratio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks import load

SHORT_TOKENS = 4
LONG_TOKENS = 256
MIXED_LENGTHS = (4, 16, 64, 256)


def body(i: int, tokens: int, image: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat request of `tokens` new tokens, with `image` (a data URL, as OpenAI's `image_url`
    part, which the peer reads too) before its text if given; an `extra` key set to None is left
    out (the peer rejects fields it does not know, min_tokens among them)."""
    text = f"benchmark request number {i}"
    content: Any = text if image is None else [
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "text", "text": text},
    ]
    fields = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
        **extra,
    }
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Shape:
    """What every request of a run carries besides its text and length: `extra` fields (see
    `body`), fields that depend on the request's length (`per_tokens`), and an image if `image`
    is set (called once per request: a data URL)."""

    extra: dict[str, Any] = field(default_factory=dict)
    image: Callable[[], str] | None = None
    per_tokens: Callable[[int], dict[str, Any]] | None = None

    def body(self, i: int, tokens: int, **more: Any) -> dict[str, Any]:
        image = self.image() if self.image else None
        sized = self.per_tokens(tokens) if self.per_tokens else {}
        return body(i, tokens, image, **{**self.extra, **sized, **more})

    def encoded(self, i: int, tokens: int, **more: Any) -> bytes:
        return msgspec.json.encode(self.body(i, tokens, **more))


TEXT = Shape()
PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Mixed:
    short: list[float]  # seconds, each short request's latency at the client
    long: list[float]
    long_tokens_per_s: float


async def back_to_back(
    url: str,
    shape: Shape,
    first_id: int,
    tokens: int,
    done: asyncio.Event,
    on_reply: Callable[[load.Reply], None] | None = None,
) -> None:
    """One client of a load: `tokens`-token requests on one connection, each sent as the last
    one's answer arrives, until `done` is set."""
    conn = await load.Connection.open(url)
    try:
        i = first_id
        while not done.is_set():
            reply = await conn.post(PATH, shape.encoded(i, tokens))
            assert reply.status == 200, reply.body
            if on_reply is not None:
                on_reply(reply)
            i += 1
    finally:
        await conn.close()


def mixed(url: str, n_short: int, gap_s: float, long_clients: int, seed: int = 10, shape: Shape = TEXT) -> Mixed:
    """`long_clients` connections send LONG_TOKENS requests back to back; meanwhile `n_short`
    SHORT_TOKENS requests arrive at exponential gaps of mean `gap_s` (fixed seed), each on a
    connection of its own."""
    gaps = np.random.default_rng(seed).exponential(gap_s, n_short)
    short: list[float] = []
    long: list[float] = []
    tokens: list[int] = []
    done = asyncio.Event()

    def on_long(reply: load.Reply) -> None:
        long.append(reply.seconds)
        tokens.append(int(reply.json()["usage"]["completion_tokens"]))

    async def one_short(i: int, request: bytes) -> None:
        conn = await load.Connection.open(url)
        try:
            reply = await conn.post(PATH, request)
            assert reply.status == 200, reply.body
            short.append(reply.seconds)
        finally:
            await conn.close()

    async def go() -> float:
        started = time.perf_counter()
        longs = [
            asyncio.create_task(back_to_back(url, shape, 1000 * k, LONG_TOKENS, done, on_long))
            for k in range(long_clients)
        ]
        await asyncio.sleep(0.3)  # the long rows are decoding when the first short one arrives
        shorts = []
        for i, gap in enumerate(gaps):
            request = shape.encoded(i, SHORT_TOKENS)
            await asyncio.sleep(float(gap))
            shorts.append(asyncio.create_task(one_short(i, request)))
        await asyncio.gather(*shorts)
        done.set()
        await asyncio.gather(*longs)
        return time.perf_counter() - started

    wall = load._run(go())
    return Mixed(short, long, sum(tokens) / wall)


def idle(url: str, n: int, shape: Shape = TEXT) -> list[float]:
    """One SHORT_TOKENS request at a time on an idle service."""
    replies = load.sequential(url, PATH, [shape.body(i, SHORT_TOKENS) for i in range(n)])
    assert all(r.status == 200 for r in replies), replies[0].body
    return [r.seconds for r in replies]


def throughput(url: str, total: int, clients: int, lengths: tuple[int, ...], shape: Shape = TEXT) -> float:
    """Output tokens/s of `clients` connections sending `total` requests; request i asks for
    lengths[i % len(lengths)] tokens."""
    wall, replies = load.concurrent(url, PATH, total, clients, lambda i: shape.body(i, lengths[i % len(lengths)]))
    assert all(r.status == 200 for r in replies), replies[0].body
    tokens: int = sum(r.json()["usage"]["completion_tokens"] for r in replies)
    return tokens / wall


TTFT_TOKENS = 32


def ttft(url: str, n: int, shape: Shape = TEXT) -> list[float]:
    """Seconds to the first content chunk of a streamed TTFT_TOKENS answer, one request at a time
    on an idle service (the lean client's streaming reader, as under load below)."""
    return ttft_under_load(url, n, 0, 0, shape)


def ttft_under_load(
    url: str, n: int, load_clients: int, load_tokens: int, shape: Shape = TEXT, gap_s: float = 0.05, seed: int = 11
) -> list[float]:
    """Streaming time to first token while a load runs: `load_clients` connections send
    `load_tokens`-token requests back to back (not streamed), and `n` streamed TTFT_TOKENS requests
    are sent one after another on a connection of their own, each after an exponential pause of
    mean `gap_s` (fixed seed), so they arrive at random points of the running rows' decoding.
    With no load clients this is the idle time to first token."""
    pauses = np.random.default_rng(seed).exponential(gap_s, n) if load_clients else np.zeros(n)
    firsts: list[float] = []
    done = asyncio.Event()

    async def go() -> None:
        loaders = [
            asyncio.create_task(back_to_back(url, shape, 100_000 * (k + 1), load_tokens, done))
            for k in range(load_clients)
        ]
        if loaders:
            await asyncio.sleep(0.3)  # the load's rows are decoding when the first probe arrives
        conn = await load.Connection.open(url)
        try:
            for i, pause in enumerate(pauses):
                request = shape.encoded(i, TTFT_TOKENS, stream=True)
                await asyncio.sleep(float(pause))
                reply = await conn.stream(PATH, request)
                assert reply.status == 200, reply.body[:2000]
                assert reply.first_content is not None, reply.body[:2000]
                firsts.append(reply.first_content)
        finally:
            await conn.close()
            done.set()
            await asyncio.gather(*loaders)

    load._run(go())
    return firsts


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def counts(quick: bool) -> tuple[int, int, int, int]:
    """Idle requests, short requests of the mixed run, uniform/lengths requests, TTFT probes."""
    return (4, 8, 16, 3) if quick else (30, 60, 96, 20)


def measure(url: str, quick: bool) -> dict[str, float]:
    """Every figure of the table for the worker now serving `url`."""
    n_idle, n_short, total, n_probe = counts(quick)
    idle(url, 3)  # warm-up
    alone = idle(url, n_idle)
    first = ttft(url, n_idle)
    beside_long = ttft_under_load(url, n_probe, 4, LONG_TOKENS)
    beside_uniform = ttft_under_load(url, n_probe, 16, 32)
    run = mixed(url, n_short, gap_s=0.03, long_clients=4)
    uniform = throughput(url, total, 16, (32,))
    lengths = throughput(url, total, 16, MIXED_LENGTHS)
    return {
        "idle": _p(alone, 50),
        "ttft": _p(first, 50),
        "ttft_long": _p(beside_long, 50),
        "ttft_uniform": _p(beside_uniform, 50),
        "short50": _p(run.short, 50),
        "short99": _p(run.short, 99),
        "long50": _p(run.long, 50),
        "long_tps": run.long_tokens_per_s,
        "uniform": uniform,
        "lengths": lengths,
    }


def compare(start_worker: Callable[..., None], url: str, quick: bool) -> list[str]:
    """The report's table: each figure for ENGINE=static and ENGINE=continuous, and their ratio."""
    figures: dict[str, dict[str, float]] = {}
    for engine in ("static", "continuous"):
        start_worker(MAX_BATCH_SIZE="8", ENGINE=engine)
        figures[engine] = measure(url, quick)
    return table(figures, quick)


def table(figures: dict[str, dict[str, float]], quick: bool) -> list[str]:
    """The table and its summary lines from `measure`'s figures of each engine."""
    n_idle, n_short, _, n_probe = counts(quick)
    s, c = figures["static"], figures["continuous"]
    rows = [
        ("idle: one 4-token request, p50", "idle", "ms"),
        ("idle: streaming time to first token, p50", "ttft", "ms"),
        (f"streaming time to first token while 4 clients run {LONG_TOKENS}-token requests, p50", "ttft_long", "ms"),
        ("streaming time to first token while 16 clients run 32-token requests, p50", "ttft_uniform", "ms"),
        ("mixed: 4-token request beside 256-token ones, p50", "short50", "ms"),
        ("mixed: 4-token request beside 256-token ones, p99", "short99", "ms"),
        ("mixed: 256-token request, p50", "long50", "ms"),
        ("mixed: 256-token requests' output tokens/s", "long_tps", "tok/s"),
        ("uniform: 32-token requests, 16 clients, output tokens/s", "uniform", "tok/s"),
        ("mixed lengths (4/16/64/256), 16 clients, output tokens/s", "lengths", "tok/s"),
    ]
    lines = [
        f"Demo model, MAX_BATCH_SIZE=8, one worker; mixed workload: 4 clients sending {LONG_TOKENS}-token "
        f"requests back to back while {n_short} {SHORT_TOKENS}-token requests arrive (Poisson, 30 ms mean gap, "
        "seed 10), each on its own connection. Time to first token: streamed "
        f"{TTFT_TOKENS}-token requests, one at a time ({n_idle} idle; {n_probe} under each load, sent after "
        "random pauses of 50 ms mean while the load's clients send their requests back to back), read by "
        "the lean client.",
        "",
        "| figure | ENGINE=static | ENGINE=continuous | continuous / static |",
        "|---|---|---|---|",
    ]
    for label, key, unit in rows:
        scale, fmt = (1000, "{:.1f} ms") if unit == "ms" else (1, "{:.0f}")
        lines.append(
            f"| {label} | {fmt.format(s[key] * scale)} | {fmt.format(c[key] * scale)} | {c[key] / s[key]:.2f} |"
        )
    lines += [
        "",
        f"**Short requests beside long ones, p50: {s['short50'] / c['short50']:.1f}x faster with the continuous "
        f"engine** ({c['short50'] / c['idle']:.2f}x its idle latency; target at most 1.5x).",
        "",
        f"**Streaming time to first token under load, continuous engine: {c['ttft_long'] / c['ttft']:.2f}x its "
        f"idle TTFT beside the {LONG_TOKENS}-token clients, {c['ttft_uniform'] / c['ttft']:.2f}x under the "
        "16-client uniform load** (target at most 2x). Beside the long clients 4 of the 8 slots are free, so "
        "a request is admitted at the next step boundary; under the uniform load 16 clients keep all 8 slots "
        "taken and 8 requests waiting, so a new request also waits in the queue for slots to free (the service's "
        "default, 32 slots, leaves one for every request: the peer section below).",
    ]
    return lines


def engine_closed_loop(model: Path, lengths: tuple[int, ...], total: int = 96, clients: int = 16) -> float:
    """The continuous engine alone, in-process (no queue, no HTTP): `clients` rows in flight,
    each client sending its next request 4 ms after its answer, as the service's clients do;
    output tokens/s. What the engine's per-step cost decides, without the service's noise."""
    import heapq

    import torch

    from shared.contract import JobPayload, Message, SamplingParams, TextPart
    from shared.settings_sources import load_settings
    from workers.continuous.scheduler import ContinuousEngine
    from workers.engine import Engine
    from workers.loader import load_model

    settings = load_settings(environ={"MODEL_PATH": str(model), "MAX_BATCH_SIZE": "8"})
    engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    engine.warmup()

    def row(i: int) -> Any:
        tokens = lengths[i % len(lengths)]
        params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens)
        message = Message("user", (TextPart(f"benchmark request number {i}"),))
        return engine.prepare(JobPayload(id=f"e{i}", messages=(message,), params=params, created_at=time.time()), [])

    def run() -> float:
        rows = [row(i) for i in range(total)]
        arrivals: list[tuple[float, int]] = [(0.0, i) for i in range(min(clients, total))]
        sent, tokens, start = len(arrivals), 0, time.perf_counter()

        def done(_row: Any, out: Any) -> None:
            nonlocal sent, tokens
            tokens += out.completion_tokens
            if sent < total:
                heapq.heappush(arrivals, (time.perf_counter() - start + 0.004, sent))
                sent += 1

        def failed(_row: Any, exc: Exception) -> None:
            raise exc

        ce = ContinuousEngine(engine, done, failed)
        while arrivals or not ce.idle:
            now = time.perf_counter() - start
            while arrivals and arrivals[0][0] <= now:
                ce.submit(rows[heapq.heappop(arrivals)[1]])
            if ce.idle:
                time.sleep(max(0.0, arrivals[0][0] - now))
                continue
            ce.run_step()
        return tokens / (time.perf_counter() - start)

    return float(np.median([run() for _ in range(3)]))


def main() -> None:
    """`python -m benchmarks.mixed [--quick] [--engine]`: this section of `make bench` alone;
    `--engine`: the continuous engine's in-process closed-loop throughput only."""
    import argparse

    import torch

    from benchmarks.service import COMPUTE_THREADS, BenchService
    from workers.demo_model import ensure_demo_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engine", action="store_true", help="in-process continuous engine only (closed loop)")
    args = parser.parse_args()
    torch.set_num_threads(COMPUTE_THREADS)
    root = Path(__file__).resolve().parents[1]
    if args.engine:
        model = ensure_demo_model(root / ".omega" / "bench" / "demo-model")
        for name, lengths in (("uniform 32-token", (32,)), ("mixed lengths 4/16/64/256", MIXED_LENGTHS)):
            print(
                f"continuous engine in-process, {name}, 16 clients: {engine_closed_loop(model, lengths):.0f} tokens/s"
            )
        return
    service = BenchService(ensure_demo_model(root / ".omega" / "bench" / "demo-model"))
    try:
        print("\n".join(compare(service.start_worker, service.url, args.quick)))
    finally:
        service.stop()


if __name__ == "__main__":
    main()
