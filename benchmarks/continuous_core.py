"""Static micro-batches vs the continuous engine, in-process on the demo model (not yet in `make bench`).

    python -m benchmarks.continuous_core [--text] [--shorts 40] [--longs 4] [--long-tokens 256] [--prefill-tokens 2048]

Mixed workload: `--longs` rows of 256 tokens arrive at t=0; 4-token rows arrive after them at
fixed-seed Poisson gaps (30 ms mean). The static side runs what the worker runs today: up to
MAX_BATCH_SIZE arrived rows per `Engine.generate`, every row of it done when the longest ends.
The continuous side is `ContinuousEngine.run_step` in a loop. Reported: short-row latency
(arrival to result) p50/p99 beside a short row alone, long-row latency, output tokens/s over the
whole run, and the longest step (the gap a running row waits between two tokens). Then a
uniform load (16 rows of 32 tokens at once): output tokens/s of each. Every request carries an
image unless --text.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from shared.contract import ImagePart, JobPayload, Message, SamplingParams, TextPart
from shared.settings_sources import load_settings
from workers.batch import PreparedRow
from workers.continuous.scheduler import ContinuousEngine, Limits
from workers.engine import Engine, RowOutput
from workers.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
IMAGE = Image.new("RGB", (64, 48), (200, 40, 40))


@dataclass
class Request:
    arrival: float  # seconds after the start
    row: PreparedRow
    long: bool = False
    done: float | None = None
    tokens: int = 0


def make_row(engine: Engine, i: int, tokens: int, image: bool) -> PreparedRow:
    parts = ((ImagePart("img"),) if image else ()) + (TextPart(f"request {i}: describe it"),)
    params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, seed=i, top_p=0.9)
    job = JobPayload(id=f"b{i}", messages=(Message("user", parts),), params=params, created_at=time.time())
    return engine.prepare(job, [IMAGE] if image else [])


def workload(engine: Engine, longs: int, long_tokens: int, shorts: int, gap_s: float, image: bool) -> list[Request]:
    rng = random.Random(7)
    requests = [Request(0.0, make_row(engine, i, long_tokens, image), long=True) for i in range(longs)]
    at = 0.0
    for i in range(shorts):
        at += rng.expovariate(1 / gap_s)
        requests.append(Request(at, make_row(engine, longs + i, 4, image)))
    return requests


def run_static(engine: Engine, requests: list[Request]) -> tuple[float, float]:
    """Today's worker: micro-batches of arrived rows, one generate each. (makespan, worst step)."""
    pending = sorted(requests, key=lambda r: r.arrival)
    start, worst = time.perf_counter(), 0.0
    while pending:
        now = time.perf_counter() - start
        if pending[0].arrival > now:
            time.sleep(pending[0].arrival - now)
            continue
        batch = [r for r in pending if r.arrival <= now][: engine.settings.max_batch_size]
        t0 = time.perf_counter()
        outputs = engine.generate([r.row for r in batch])
        worst = max(worst, time.perf_counter() - t0)  # running rows wait the whole call for news
        ended = time.perf_counter() - start
        for r, out in zip(batch, outputs, strict=True):
            r.done, r.tokens = ended, out.completion_tokens
            pending.remove(r)
    return time.perf_counter() - start, worst


def run_continuous(engine: Engine, requests: list[Request], limits: Limits) -> tuple[float, float]:
    by_id = {r.row.job.id: r for r in requests}
    start = time.perf_counter()

    def done(row: PreparedRow, out: RowOutput) -> None:
        by_id[row.job.id].done = time.perf_counter() - start
        by_id[row.job.id].tokens = out.completion_tokens

    def failed(row: PreparedRow, exc: Exception) -> None:
        raise exc

    ce = ContinuousEngine(engine, done, failed, limits)
    arrivals = sorted(requests, key=lambda r: r.arrival)
    worst = 0.0
    while arrivals or not ce.idle:
        now = time.perf_counter() - start
        while arrivals and arrivals[0].arrival <= now:
            ce.submit(arrivals.pop(0).row)
        if ce.idle:
            time.sleep(max(0.0, arrivals[0].arrival - now))
            continue
        t0 = time.perf_counter()
        ce.run_step()
        worst = max(worst, time.perf_counter() - t0)
    return time.perf_counter() - start, worst


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(name: str, requests: list[Request], makespan: float, worst: float) -> dict[str, float]:
    short = [(r.done or 0) - r.arrival for r in requests if not r.long]
    long = [(r.done or 0) - r.arrival for r in requests if r.long]
    tokens = sum(r.tokens for r in requests)
    return {
        "short p50 ms": 1000 * statistics.median(short),
        "short p99 ms": 1000 * pct(short, 0.99),
        "long mean ms": 1000 * statistics.mean(long),
        "tokens/s": tokens / makespan,
        "longest step ms": 1000 * worst,
    }


def fresh(requests: list[Request]) -> list[Request]:
    for r in requests:
        r.done, r.tokens = None, 0
        r.row.plan.first_token_at = r.row.plan.stop_step = None
    return requests


def best_of(rounds: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    results = [measure() for _ in range(rounds)]
    lower = {"tokens/s"}
    return {k: (max if k in lower else min)(r[k] for r in results) for k in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", action="store_true", help="requests without images")
    parser.add_argument("--longs", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=256)
    parser.add_argument("--shorts", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=30.0)
    parser.add_argument("--prefill-tokens", type=int, default=Limits(1).prefill_tokens)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from workers.demo_model import ensure_demo_model

    torch.set_num_threads(1)
    model = ensure_demo_model(ROOT / ".omega" / "bench" / "demo-model")
    settings = load_settings(environ={"MODEL_PATH": str(model)})
    engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    engine.warmup()
    image = not args.text
    limits = Limits(settings.max_batch_size, settings.max_batch_tokens, prefill_tokens=args.prefill_tokens)

    alone = [Request(0.0, make_row(engine, 9000 + i, 4, image)) for i in range(5)]
    solo = {
        "static": 1000 * min(run_static(engine, fresh([r]))[0] for r in alone),
        "continuous": 1000 * min(run_continuous(engine, fresh([r]), limits)[0] for r in alone),
    }
    requests = workload(engine, args.longs, args.long_tokens, args.shorts, args.gap_ms / 1000, image)
    mixed = {
        "static": best_of(args.rounds, lambda: summarise("static", fresh(requests), *run_static(engine, requests))),
        "continuous": best_of(
            args.rounds, lambda: summarise("continuous", fresh(requests), *run_continuous(engine, requests, limits))
        ),
    }
    uniform = [make_row(engine, 5000 + i, 32, image) for i in range(16)]
    uniform_rates = {}
    for name in ("static", "continuous"):
        reqs = [Request(0.0, row) for row in uniform]
        run = run_static if name == "static" else (lambda e, r: run_continuous(e, r, limits))
        uniform_rates[name] = max(16 * 32 / run(engine, fresh(reqs))[0] for _ in range(args.rounds))

    kind = "text" if args.text else "image"
    print(f"demo model, {kind} requests, {args.longs} x {args.long_tokens}-token rows + {args.shorts} x 4-token rows")
    print(
        f"(Poisson {args.gap_ms:.0f} ms), MAX_BATCH_SIZE={settings.max_batch_size}, prefill cap {args.prefill_tokens}"
    )
    print("| | " + " | ".join(mixed["static"]) + " | short alone ms | uniform tokens/s |")
    print("|---" * (len(mixed["static"]) + 3) + "|")
    for name in ("static", "continuous"):
        cells = " | ".join(f"{v:.0f}" for v in mixed[name].values())
        print(f"| {name} | {cells} | {solo[name]:.0f} | {uniform_rates[name]:.0f} |")


if __name__ == "__main__":
    main()
