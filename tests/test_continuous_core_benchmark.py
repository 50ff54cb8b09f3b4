"""benchmarks/continuous_core.py runs end to end on a small mixed workload and reports both
engines (figures well-formed, never their size: speed is not for tests on a shared machine)."""

from __future__ import annotations

import pytest

from tests.test_benchmarks import run_module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # its own subprocess timeout rules


def test_continuous_core_benchmark_reports_both_engines() -> None:
    args = ("--longs", "1", "--long-tokens", "12", "--shorts", "3", "--rounds", "1")
    out = run_module("benchmarks.continuous_core", *args, timeout=600)
    for name in ("static", "continuous"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        cells = [float(cell) for cell in row.strip("|").split("|")[1:]]
        assert len(cells) == 7 and all(value > 0 for value in cells)
