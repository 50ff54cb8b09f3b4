"""The mixed workload of issue 10, through the service: short requests arriving (fixed-seed
Poisson) while long ones run, plus the idle and throughput figures the engines are compared on.

`make bench` runs every function here once per engine (ENGINE=static, then continuous) on the
same worker settings, and reports the two side by side with their ratio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

from benchmarks import load

SHORT_TOKENS = 4
LONG_TOKENS = 256
MIXED_LENGTHS = (4, 16, 64, 256)


def body(i: int, tokens: int, **extra: Any) -> dict[str, Any]:
    """A chat request of `tokens` new tokens; an `extra` key set to None is left out (the peer
    rejects fields it does not know, min_tokens among them)."""
    fields = {
        "messages": [{"role": "user", "content": f"benchmark request number {i}"}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
        **extra,
    }
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Mixed:
    short: list[float]  # seconds, each short request's latency at the client
    long: list[float]
    long_tokens_per_s: float


def mixed(
    url: str, n_short: int, gap_s: float, long_clients: int, seed: int = 10, extra: dict[str, Any] | None = None
) -> Mixed:
    """`long_clients` connections send LONG_TOKENS requests back to back; meanwhile `n_short`
    SHORT_TOKENS requests arrive at exponential gaps of mean `gap_s` (fixed seed), each on a
    connection of its own."""
    gaps = np.random.default_rng(seed).exponential(gap_s, n_short)
    short: list[float] = []
    long: list[float] = []
    tokens: list[int] = []
    done = asyncio.Event()

    async def long_client(k: int) -> None:
        conn = await load.Connection.open(url)
        try:
            i = 0
            while not done.is_set():
                reply = await conn.post(
                    "/v1/chat/completions", msgspec.json.encode(body(1000 * k + i, LONG_TOKENS, **(extra or {})))
                )
                long.append(reply.seconds)
                tokens.append(int(reply.json()["usage"]["completion_tokens"]))
                i += 1
        finally:
            await conn.close()

    async def one_short(i: int) -> None:
        conn = await load.Connection.open(url)
        try:
            reply = await conn.post("/v1/chat/completions", msgspec.json.encode(body(i, SHORT_TOKENS, **(extra or {}))))
            assert reply.status == 200, reply.body
            short.append(reply.seconds)
        finally:
            await conn.close()

    async def go() -> float:
        started = time.perf_counter()
        longs = [asyncio.create_task(long_client(k)) for k in range(long_clients)]
        await asyncio.sleep(0.3)  # the long rows are decoding when the first short one arrives
        shorts = []
        for i, gap in enumerate(gaps):
            await asyncio.sleep(float(gap))
            shorts.append(asyncio.create_task(one_short(i)))
        await asyncio.gather(*shorts)
        done.set()
        await asyncio.gather(*longs)
        return time.perf_counter() - started

    wall = load._run(go())
    return Mixed(short, long, sum(tokens) / wall)


def idle(url: str, n: int, extra: dict[str, Any] | None = None) -> list[float]:
    """One SHORT_TOKENS request at a time on an idle service."""
    bodies = [body(i, SHORT_TOKENS, **(extra or {})) for i in range(n)]
    return [r.seconds for r in load.sequential(url, "/v1/chat/completions", bodies)]


def throughput(url: str, total: int, clients: int, lengths: tuple[int, ...]) -> float:
    """Output tokens/s of `clients` connections sending `total` requests; request i asks for
    lengths[i % len(lengths)] tokens."""
    wall, replies = load.concurrent(
        url, "/v1/chat/completions", total, clients, lambda i: body(i, lengths[i % len(lengths)])
    )
    tokens: int = sum(r.json()["usage"]["completion_tokens"] for r in replies)
    return tokens / wall


def ttft(url: str, n: int, extra: dict[str, Any] | None = None) -> list[float]:
    """Seconds to the first content chunk of a streamed 32-token answer, one request at a time."""
    out = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(n):
            started = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body(i, 32, stream=True, **(extra or {}))) as r:
                lines = r.iter_lines()
                for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        out.append(time.perf_counter() - started)
                        break
                for _ in lines:
                    pass
    return out


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def compare(start_worker: Callable[..., None], url: str, quick: bool) -> list[str]:
    """The report's table: each figure for ENGINE=static and ENGINE=continuous, and their ratio."""
    n_idle, n_short, total = (8, 15, 32) if quick else (30, 60, 96)
    figures: dict[str, dict[str, float]] = {}
    for engine in ("static", "continuous"):
        start_worker(MAX_BATCH_SIZE="8", ENGINE=engine)
        idle(url, 3)  # warm-up
        alone = idle(url, n_idle)
        first = ttft(url, n_idle)
        run = mixed(url, n_short, gap_s=0.03, long_clients=4)
        uniform = throughput(url, total, 16, (32,))
        lengths = throughput(url, total, 16, MIXED_LENGTHS)
        figures[engine] = {
            "idle": _p(alone, 50),
            "ttft": _p(first, 50),
            "short50": _p(run.short, 50),
            "short99": _p(run.short, 99),
            "long50": _p(run.long, 50),
            "long_tps": run.long_tokens_per_s,
            "uniform": uniform,
            "lengths": lengths,
        }
    s, c = figures["static"], figures["continuous"]
    rows = [
        ("idle: one 4-token request, p50", "idle", "ms"),
        ("idle: streaming time to first token, p50", "ttft", "ms"),
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
        "seed 10), each on its own connection.",
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
