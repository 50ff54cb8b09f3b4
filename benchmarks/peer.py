"""The issue-10 peer: `transformers serve --continuous-batching` beside this service, on the same
tiny text-only model folder, the same torch threads and the same client (benchmarks/mixed.py).

`python -m benchmarks.peer --peer-path DIR`: DIR holds the packages `transformers serve` needs
beyond this project's (`pip install --target DIR fastapi` and `pip install --no-deps --target DIR
accelerate`), so the service's own environment is untouched. The peer rejects `min_tokens`, so
both get requests without it (a row may end early at EOS; tokens/s counts the usage reported).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks import mixed
from benchmarks.service import COMPUTE_THREADS, BenchService
from tests.support.procs import free_port
from workers.tiny_models.build import ensure_family_model
from workers.tiny_models.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000


def measure(url: str, extra: dict[str, object], n: int) -> dict[str, float]:
    mixed.idle(url, 3, extra)
    alone = mixed.idle(url, n, extra)
    first = mixed.ttft(url, n, extra)
    run = mixed.mixed(url, 40, gap_s=0.03, long_clients=4, extra=extra)
    return {
        "idle": _p(alone, 50),
        "ttft": _p(first, 50),
        "short50": _p(run.short, 50),
        "short99": _p(run.short, 99),
        "long_tps": run.long_tokens_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer-path", required=True, type=Path)
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    folder = ensure_family_model(FAMILIES["llama"], ROOT / ".omega" / "bench" / "families")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(args.peer_path), "OMP_NUM_THREADS": str(COMPUTE_THREADS)}
    peer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            str(folder),
            "--continuous-batching",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--device",
            "cpu",
            "--cb-num-blocks",
            "256",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peer_url = f"http://127.0.0.1:{port}"
    results = {}
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{peer_url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or peer.poll() is not None:
                raise RuntimeError("transformers serve did not start")
            time.sleep(0.5)
        results["transformers serve --continuous-batching"] = measure(
            peer_url, {"model": str(folder), "min_tokens": None}, args.n
        )
    finally:
        peer.terminate()
        peer.wait(30)
    service = BenchService(folder)
    try:
        service.start_worker(MAX_BATCH_SIZE="8", ENGINE="continuous")
        results["this service, ENGINE=continuous"] = measure(service.url, {"min_tokens": None}, args.n)
    finally:
        service.stop()
    print(
        "| Llama (text), tiny | idle 4-token p50 | stream TTFT p50 | short p50 beside long | short p99 | long tokens/s |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['idle']:.1f} ms | {r['ttft']:.1f} ms | {r['short50']:.1f} ms | {r['short99']:.1f} ms | {r['long_tps']:.0f} |"
        )


if __name__ == "__main__":
    main()
