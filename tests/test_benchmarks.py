"""The benchmark scripts keep working: `make bench` (quick) writes every section of BENCHMARKS.md,
the GPU engine benchmark's among them (its whole code path on a small configuration on the CPU).

These check that the figures are produced and well-formed, never how large they are: speed is
for `make bench` to report, not for tests to assert on a shared machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The scripts run for minutes on a loaded two-core machine: their own subprocess timeouts rule, not
# the suite-wide 300 s one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run_module(*args: str, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def number(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the report"
    return float(found.group(1))


def test_make_bench_quick_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    run_module("benchmarks.run", "--quick", "--out", str(out), timeout=900)
    report = out.read_text()
    assert not re.search(r"\{(machine|date|cpu_results|peer_results|gpu_results)\}", report), "template placeholders left"
    for section in (
        "### Latency: full service path vs in-process engine",
        "### Throughput: 16 concurrent clients",
        "### Requests with images: read-ahead on and off",
        "### Time to first token",
        "### Continuous vs static engine",
        "### Image intake",
        "### API intake capacity",
        "### Engine against plain transformers generate (CPU)",
        "### One Redis: admission and worker bookkeeping without a model",
        "## Against the issue's peer: transformers serve",
        "## GPU",
    ):
        assert section in report, section
    # Every section names the command that produced it.
    assert report.count("Command: `make bench BENCH_ARGS=--quick`") == 7
    assert number(report, r"Service overhead at p50: (-?[\d.]+) ms") > -1000
    for batch in (1, 4, 8):
        row = re.search(rf"^\| {batch} \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", report, re.M)
        assert row, f"no throughput row for MAX_BATCH_SIZE {batch}"
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0
    assert number(report, r"Batch 8 vs batch 1 through the service: ([\d.]+)x") > 0
    assert re.search(r"\| streaming: first content chunk at the client \| [\d.]+ ms \| [\d.]+ ms \|", report)
    assert re.search(r"\| data: URL \| [\d.]+ \| [\d.]+ \|", report)
    assert re.search(r"\| read-ahead on \(default\) \| [\d.]+ \| \d+ \|", report)
    assert re.search(r"\| read-ahead off \(IMAGE_CACHE_SIZE=0\) \| [\d.]+ \| \d+ \|", report)
    assert re.search(r"\| read-ahead on, images decoded whole \(IMAGE_REDUCED_DECODE=false\) \| [\d.]+ \| \d+ \|", report)
    assert re.search(r"\| http URL \| [\d.]+ \| [\d.]+ \|", report)
    for decode in (r"decoded whole \(IMAGE_REDUCED_DECODE=false\)", r"decoded at the floor \(IMAGE_REDUCED_DECODE=true: shortest"):
        assert re.search(rf"^\| {decode}.* \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ ms \|$", report, re.M), decode
    assert number(report, r"\*\*(\d+) requests/s\*\*") > 0
    row = r"^\| mixed: 4-token request beside 256-token ones, p50 \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ \|$"
    assert re.search(row, report, re.M)
    assert number(report, r"Short requests beside long ones, p50: ([\d.]+)x faster") > 0
    for load in ("4 clients run 256-token requests", "16 clients run 32-token requests"):
        row = rf"^\| streaming time to first token while {load}, p50 \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ \|$"
        assert re.search(row, report, re.M), load
    assert number(report, r"Streaming time to first token under load, continuous engine: ([\d.]+)x") > 0
    # The peer's section (benchmarks/peer_results.md, from `make bench-peer`) is included as written.
    assert (ROOT / "benchmarks" / "peer_results.md").read_text().strip() in report
    # The GPU benchmark's script, its whole path on a tiny model on the CPU (section 6).
    assert "Command: `python -m benchmarks.gpu_engine --tiny --device cpu" in report
    assert "| | engine, TORCH_COMPILE=on | engine, TORCH_COMPILE=off | plain transformers generate |" in report
    for label in ("single stream, tokens/s", "first token with a 1024 px image, ms", "batch 1,", "batch 2,", "batch 32,"):
        engine_row = next((line for line in report.splitlines() if line.startswith(f"| {label}")), None)
        assert engine_row, label
        values = [float(v) for v in engine_row.strip("|").split("|")[1:]]
        assert len(values) == 3 and all(v > 0 for v in values), engine_row
    assert "Memory-bandwidth floor:" in report and "Batch 32 vs single stream (engine):" in report
    # One Redis (benchmarks/redis_scale.py, quick): rates for 1 and 16 queues, 64 named as not run.
    for queues in (1, 16):
        row = re.search(rf"^\| {queues} \| (\d+) \| (\d+) \|$", report, re.M)
        assert row, f"no One Redis row for {queues} queue(s)"
        assert int(row.group(1)) > 0 and int(row.group(2)) > 0
    assert re.search(r"^\| 64 \| \d+ \| not run", report, re.M)
    assert number(report, r"memory per finished job: \*\*([\d.]+) KiB") > 0


def _worktrees() -> list[str]:
    listed = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return sorted(line for line in listed.stdout.splitlines() if line.startswith("worktree "))


def test_engine_ab_compares_a_commit_with_the_work_tree() -> None:
    before_run = _worktrees()
    out = run_module("benchmarks.engine_ab", "HEAD", "--tokens", "4", "--rounds", "1", "--alternations", "1", timeout=600)
    assert "| output tokens/s | before (HEAD) | after (work tree) | after / before |" in out
    for key in ("sampled, batch 1", "sampled, batch 8", "greedy, batch 1", "greedy, batch 8"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {key} |"))
        before, after, ratio = (cell.strip() for cell in row.strip("|").split("|")[1:])
        assert float(before) > 0 and float(after) > 0 and ratio.endswith("x")
    assert _worktrees() == before_run  # its temporary worktree is gone


def test_peer_report_names_every_figure_and_target() -> None:
    """benchmarks/peer.py's report from figures (the peer itself needs packages outside the
    project's environment, so `make test` does not start it; `make bench-peer` does)."""
    from benchmarks import peer

    keys = [key for _, key in peer.ROWS]
    side = {key: 0.01 + i / 1000 for i, key in enumerate(keys)}
    results = {model: {peer.PEER: side, peer.SERVICE: {k: v / 2 for k, v in side.items()}} for model in ("text", "vlm")}
    notes = {"version": "5.24.0", "text": peer.peer_behaviour(""), "vlm": peer.peer_behaviour("X does not support continuous batching.")}
    spreads = {model: {key: (0.4, 0.6) for key in keys} for model in ("text", "vlm")}
    command = "python -m benchmarks.peer --peer-path DIR"
    text = "\n".join(peer.report(results, notes, command, peer.Counts.of(True), 3, "1.0", 8, spreads))
    assert "Command: `python -m benchmarks.peer --peer-path DIR`" in text
    assert text.count("| 0.50 (0.40 to 0.60) |") == 2 * (len(keys) - 1)  # every timed figure, both models
    assert "{" not in text and "}" not in text
    for label, _ in peer.ROWS:
        assert text.count(f"| {label} |") == 2, label
    for target in ("target at most 2x", "target at least 1.0x", "target at least 10x", "target at least 5x"):
        assert target in text
    assert "Falling back to sequential generation" in text
