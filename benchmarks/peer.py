"""The issue-10 peer, `transformers serve`, beside this service: same model folders, same torch
threads, same client (benchmarks/mixed.py on benchmarks/load.py), run back to back in one go.

    make bench-peer      (installs the peer's packages into .omega/peer-deps, then runs this)
    python -m benchmarks.peer --peer-path DIR [--quick] [--rounds N] [--out FILE]

DIR holds the packages `transformers serve` needs beyond this project's environment, installed
with `pip install --no-deps --target DIR fastapi starlette accelerate opentelemetry-api psutil`
(the Makefile's `bench-peer` target does it), so the service's own environment is untouched: the
peer runs with PYTHONPATH=DIR on the project's interpreter, torch and transformers.

Two model folders: the tiny text-only Llama (workers/tiny_models) and the demo LLaVA VLM, whose
requests each carry their own JPEG as an OpenAI `image_url` data URL, which both accept. The peer
is started with `--continuous-batching` for both; for the VLM it logs that the model "does not
support continuous batching" and generates one request at a time (transformers 5.24 runs
continuous batching for text-only models only), and the report says so when its log does. The
peer's KV cache is capped (`--cb-num-blocks`), or it reserves most of the RAM. Every request
generates exactly the tokens it asks for on both sides, as in `make bench`: this service gets
`min_tokens`, which the peer rejects; the peer gets the model's generation config with
`min_new_tokens` in its `generation_config` request field (which replaces the model's whole
config, hence the model's own fields beside it). The peer's continuous batching ignores
`min_new_tokens` (its requests take only max_new_tokens and eos_token_id), so for the text model
that config also sets `eos_token_id` to -1, which it documents as "disabled". The tiny random
models otherwise end many rows at EOS after a few tokens, and the two sides would not do the
same work.

The report (default benchmarks/peer_results.md, included in BENCHMARKS.md by `make bench`) has,
per model, every figure for both and their ratio, and the issue's targets in bold.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks import load, mixed
from benchmarks.service import COMPUTE_THREADS, BenchService
from shared.settings_sources import load_settings
from tests.support.procs import free_port
from workers.demo_model import ensure_demo_model
from workers.tiny_models.build import ensure_family_model
from workers.tiny_models.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
PEER = "transformers serve"
SERVICE = "this service"
# Enough KV blocks for every row these runs hold at once, not the most of the RAM the peer takes
# by default (15 GB seen).
PEER_KV_BLOCKS = 256
IMAGE_SIZE = (512, 384)
DEFAULT_SLOTS = load_settings(environ={}).max_batch_size  # the service as shipped


@dataclass(frozen=True)
class Counts:
    idle: int  # sequential 4-token requests, and idle streamed ones
    probes: int  # streamed requests under each load
    short: int  # 4-token requests arriving during the mixed workload
    uniform: int  # 32-token requests of the 16-client uniform load

    @classmethod
    def of(cls, quick: bool) -> Counts:
        return cls(4, 3, 8, 32) if quick else cls(20, 10, 40, 96)


def peer_min_tokens(folder: Path, continuous: bool) -> Callable[[int], dict[str, Any]]:
    """The peer's request fields for exactly `tokens` new tokens (see the module's doc string)."""
    config = json.loads((folder / "generation_config.json").read_text())
    own = {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}
    if continuous:  # its continuous batching ignores min_new_tokens; eos_token_id -1 turns EOS off
        own["eos_token_id"] = -1

    def fields(tokens: int) -> dict[str, Any]:
        return {"min_tokens": None, "generation_config": json.dumps({**own, "min_new_tokens": tokens})}

    return fields


class UniqueJpegs:
    """A data URL of a JPEG per call, each different: one noise image with a comment segment
    naming the call inserted after its start marker. The pixels are the same, but neither side
    can tell without decoding: this service's decoded-image cache is keyed by the file's digest,
    so every request costs it an image decode, as it costs the peer (which has no cache)."""

    def __init__(self, size: tuple[int, int] = IMAGE_SIZE, seed: int = 0) -> None:
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "JPEG")
        self.jpeg = buf.getvalue()
        self.calls = itertools.count()

    def __call__(self) -> str:
        comment = f"omega benchmark image {next(self.calls)}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment  # COM, length, text
        data = self.jpeg[:2] + segment + self.jpeg[2:]
        return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def measure(url: str, shape: mixed.Shape, counts: Counts) -> dict[str, float]:
    """Every figure of one side, in seconds or output tokens/s."""

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(np.array(values), q))

    mixed.idle(url, 3, shape)  # warm-up
    # Both sides must see the same prompt (chat template, image tokens): its length is reported.
    prompt = load.sequential(url, mixed.PATH, [shape.body(0, 4)])[0].json()["usage"]["prompt_tokens"]
    alone = mixed.idle(url, counts.idle, shape)
    first = mixed.ttft(url, counts.idle, shape)
    beside_long = mixed.ttft_under_load(url, counts.probes, 4, mixed.LONG_TOKENS, shape)
    beside_uniform = mixed.ttft_under_load(url, counts.probes, 16, 32, shape)
    run = mixed.mixed(url, counts.short, gap_s=0.03, long_clients=4, shape=shape)
    uniform = mixed.throughput(url, counts.uniform, 16, (32,), shape)
    return {
        "prompt": float(prompt),
        "idle": p(alone, 50),
        "ttft": p(first, 50),
        "ttft_long": p(beside_long, 50),
        "ttft_uniform": p(beside_uniform, 50),
        "short50": p(run.short, 50),
        "short99": p(run.short, 99),
        "long50": p(run.long, 50),
        "long_tps": run.long_tokens_per_s,
        "uniform": uniform,
    }


@contextmanager
def peer_server(folder: Path, deps: Path, log: Path) -> Iterator[str]:
    """`transformers serve` on `folder` with the service's torch threads; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(deps.resolve()), "OMP_NUM_THREADS": str(COMPUTE_THREADS)}
    args = [
        *("serve", str(folder), "--continuous-batching", "--cb-num-blocks", str(PEER_KV_BLOCKS)),
        *("--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"transformers serve did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


ROWS = (
    ("prompt tokens of a request (chat template and image included)", "prompt"),
    ("idle: one 4-token request, p50", "idle"),
    ("idle: streaming time to first token, p50", "ttft"),
    (f"streaming time to first token while 4 clients run {mixed.LONG_TOKENS}-token requests, p50", "ttft_long"),
    ("streaming time to first token while 16 clients run 32-token requests, p50", "ttft_uniform"),
    ("mixed: 4-token request beside 256-token ones, p50", "short50"),
    ("mixed: 4-token request beside 256-token ones, p99", "short99"),
    ("mixed: 256-token request, p50", "long50"),
    ("mixed: 256-token requests' output tokens/s", "long_tps"),
    ("uniform: 32-token requests, 16 clients, output tokens/s", "uniform"),
)


Spread = dict[str, tuple[float, float]]  # figure -> lowest and highest per-round ratio


def table(title: str, peer: dict[str, float], ours: dict[str, float], spread: Spread | None = None) -> list[str]:
    """Medians side by side; with several rounds, the range of the rounds' own ratios (each
    round's service figure over the peer's measured just before it) in brackets."""
    lines = [f"| {title} | {PEER} | {SERVICE} | this service / peer |", "|---|---|---|---|"]
    for label, key in ROWS:
        tokens = key in ("prompt", "long_tps", "uniform")
        shown = (f"{peer[key]:.0f}", f"{ours[key]:.0f}") if tokens else (f"{peer[key] * 1000:.1f} ms", f"{ours[key] * 1000:.1f} ms")
        ratio = f"{ours[key] / peer[key]:.2f}"
        if spread and key != "prompt":
            ratio += f" ({spread[key][0]:.2f} to {spread[key][1]:.2f})"
        lines.append(f"| {label} | {shown[0]} | {shown[1]} | {ratio} |")
    return lines


def report(
    results: dict[str, dict[str, dict[str, float]]],
    notes: dict[str, str],
    command: str,
    counts: Counts,
    rounds: int,
    load: str,
    batch: int = DEFAULT_SLOTS,
    spreads: dict[str, Spread] | None = None,
) -> list[str]:
    text_p, text_s = results["text"][PEER], results["text"][SERVICE]
    vlm_p, vlm_s = results["vlm"][PEER], results["vlm"][SERVICE]
    slots = (
        f"with MAX_BATCH_SIZE={batch} the 16 clients keep every slot taken and requests wait for one, so that "
        "figure includes queueing"
        if batch < 17
        else f"MAX_BATCH_SIZE={batch} leaves a slot for every request"
    )
    runs = (
        f"the median of {rounds} rounds, peer and service alternating (in brackets: the lowest and highest "
        "of the rounds' own ratios)"
        if rounds > 1
        else "one round"
    )
    spreads = spreads or {}
    return [
        f"Command: `{command}`",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load} (1, 5, 15 min) on "
        f"{os.cpu_count()} cores shared with other work; each figure is {runs}. `{PEER} --continuous-batching "
        f"--cb-num-blocks {PEER_KV_BLOCKS} --device cpu` (transformers {notes['version']}) against this service "
        f"(ENGINE=continuous, MAX_BATCH_SIZE={batch}{' (the default)' if batch == DEFAULT_SLOTS else ''}, one worker), same model folder, OMP_NUM_THREADS / worker "
        f"torch threads {COMPUTE_THREADS}, the same lean client; every request generates exactly the tokens "
        "it asks for (`min_tokens` here, `min_new_tokens` in the peer's `generation_config` field). Mixed "
        f"workload: 4 clients sending {mixed.LONG_TOKENS}-token requests back to back while "
        f"{counts.short} 4-token requests arrive (Poisson, 30 ms mean gap, seed 10); {counts.idle} idle requests; "
        f"{counts.probes} streamed {mixed.TTFT_TOKENS}-token requests under each load; {counts.uniform} requests "
        "for the uniform load.",
        "",
        *table("Llama (text), tiny", text_p, text_s, spreads.get("text")),
        "",
        f"The peer on the text model: {notes['text']}",
        "",
        f"**Text model: a 4-token request beside long ones, p50, is {text_s['short50'] / text_p['short50']:.2f}x "
        f"the peer's** (target at most 2x) and {text_s['short50'] / text_s['idle']:.2f}x this service's idle "
        f"latency (target at most 1.5x); **uniform 32-token load, 16 clients: "
        f"{text_s['uniform'] / text_p['uniform']:.2f}x the peer's output tokens/s** (target at least 1.0x); idle "
        f"4-token request {text_s['idle'] / text_p['idle']:.2f}x and streaming time to first token "
        f"{text_s['ttft'] / text_p['ttft']:.2f}x the peer's (target at most 1.5x).",
        "",
        *table("demo LLaVA (VLM), an image per request", vlm_p, vlm_s, spreads.get("vlm")),
        "",
        f"Each request carries a {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} noise JPEG as an OpenAI `image_url` data URL, a "
        "different file each time (no side gains from a cache). The peer on the VLM: " + notes["vlm"],
        "",
        f"**VLM: a 4-token request beside long ones, p50, is {vlm_p['short50'] / vlm_s['short50']:.1f}x faster "
        f"here than on the peer** (target at least 10x; p99 {vlm_p['short99'] / vlm_s['short99']:.1f}x); "
        f"**uniform 32-token load, 16 clients: {vlm_s['uniform'] / vlm_p['uniform']:.2f}x the peer's output "
        "tokens/s** (target at least 5x).",
        "",
        "**Streaming time to first token under load, this service: "
        f"{text_s['ttft_long'] / text_s['ttft']:.2f}x (text) and {vlm_s['ttft_long'] / vlm_s['ttft']:.2f}x (VLM) "
        f"its idle TTFT beside the {mixed.LONG_TOKENS}-token clients, {text_s['ttft_uniform'] / text_s['ttft']:.2f}x "
        f"and {vlm_s['ttft_uniform'] / vlm_s['ttft']:.2f}x under the 16-client uniform load** (target at most 2x; "
        f"{slots}). The peer, for reference (no slot limit but its KV blocks): "
        f"{text_p['ttft_long'] / text_p['ttft']:.2f}x and {vlm_p['ttft_long'] / vlm_p['ttft']:.2f}x beside the "
        f"long clients, {text_p['ttft_uniform'] / text_p['ttft']:.2f}x and "
        f"{vlm_p['ttft_uniform'] / vlm_p['ttft']:.2f}x under the uniform load.",
    ]


def peer_behaviour(log: str) -> str:
    """What the peer's own log says about how it generated (continuous batching or not)."""
    if "does not support continuous batching" in log:
        return (
            "its log says the model \"does not support continuous batching. Falling back to sequential "
            "generation\": it answers one request at a time (`model.generate` on one inference thread)."
        )
    return "continuous batching (its log reports no fallback to sequential generation)."


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def run(
    deps: Path, quick: bool, rounds: int, batch: int = DEFAULT_SLOTS
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str], dict[str, Spread]]:
    import transformers

    counts = Counts.of(quick)
    data = ROOT / ".omega" / "bench"
    models = {
        "text": (ensure_family_model(FAMILIES["llama"], data / "families"), None),
        "vlm": (ensure_demo_model(data / "demo-model"), UniqueJpegs()),
    }
    # transformers 5.24 batches continuously for text-only models only (the VLM: see peer_behaviour).
    continuous = {"text": True, "vlm": False}
    results: dict[str, dict[str, dict[str, float]]] = {}
    spreads: dict[str, Spread] = {}
    notes = {"version": transformers.__version__}
    with tempfile.TemporaryDirectory(prefix="omega-peer-") as tmp:
        for name, (folder, images) in models.items():
            log = Path(tmp) / f"peer-{name}.log"
            per_round: dict[str, list[dict[str, float]]] = {PEER: [], SERVICE: []}
            service = BenchService(folder)
            try:
                service.start_worker(MAX_BATCH_SIZE=str(batch), ENGINE="continuous")
                with peer_server(folder, deps, log) as peer_url:
                    shape = mixed.Shape(image=images)
                    peer_shape = mixed.Shape({"model": str(folder)}, images, peer_min_tokens(folder, continuous[name]))
                    for k in range(rounds):
                        for side, url, side_shape in ((PEER, peer_url, peer_shape), (SERVICE, service.url, shape)):
                            figures = measure(url, side_shape, counts)
                            per_round[side].append(figures)
                            print(f"{name} round {k + 1} {side}: " + ", ".join(f"{key} {v:.4g}" for key, v in figures.items()), flush=True)
            finally:
                service.stop()
            results[name] = {side: median_of(values) for side, values in per_round.items()}
            ratios = [{k: ours[k] / theirs[k] for k in ours} for ours, theirs in zip(per_round[SERVICE], per_round[PEER], strict=True)]
            spreads[name] = {k: (min(r[k] for r in ratios), max(r[k] for r in ratios)) for k in ratios[0]}
            notes[name] = peer_behaviour(log.read_text())
    return results, notes, spreads


def write(deps: Path, quick: bool, rounds: int, out: Path, command: str, batch: int = DEFAULT_SLOTS) -> list[str]:
    started = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    results, notes, spreads = run(deps, quick, rounds, batch)
    ended = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    load = f"{started} at the start, {ended} at the end"
    lines = report(results, notes, command, Counts.of(quick), rounds, load, batch, spreads if rounds > 1 else None)
    out.write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-path", required=True, type=Path, help="the peer's extra packages (pip --target)")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, peer and service alternating; medians")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "peer_results.md")
    parser.add_argument(
        "--max-batch-size", type=int, default=DEFAULT_SLOTS, help=f"the service's MAX_BATCH_SIZE (its default: {DEFAULT_SLOTS})"
    )
    args = parser.parse_args()
    command = f"python -m benchmarks.peer --peer-path {args.peer_path}" + (" --quick" if args.quick else "")
    command += f" --rounds {args.rounds}" if args.rounds > 1 else ""
    command += f" --max-batch-size {args.max_batch_size}" if args.max_batch_size != DEFAULT_SLOTS else ""
    print("\n".join(write(args.peer_path, args.quick, args.rounds, args.out, command, args.max_batch_size)))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
