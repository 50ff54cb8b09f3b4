"""The decoding loop's pulse: when it last advanced, and whether it has work at all.

Read by the worker's liveness probe (workers/probes.py): a worker is alive while its loop is idle
or has advanced within WORKER_STALL_S. Only the loop itself beats here (a static `generate`'s
per-step stopping criteria, the continuous engine's `run_step`), never the heartbeat thread, so a
hung `generate` shows as stalled even though the process still heartbeats. One loop per process.
"""

from __future__ import annotations

import time

_last_beat = time.monotonic()
_working = False


def beat() -> None:
    """The loop advanced (a decoding step, a prefill); it has work until `rest()`."""
    global _last_beat, _working
    _last_beat = time.monotonic()
    _working = True


def rest() -> None:
    """The loop has no work: idle is alive, however long it lasts."""
    global _last_beat, _working
    _last_beat = time.monotonic()
    _working = False


def stalled_s() -> float:
    """Seconds the loop has had work without advancing (0 when idle)."""
    return time.monotonic() - _last_beat if _working else 0.0


def waiting(active: bool) -> None:
    """The worker's wait for its next job, one bounded turn at a time (a pull of a few seconds,
    each reply within the socket timeout): a turn that outlasts WORKER_STALL_S is stuck, so it
    counts as work while it runs, and the worker is idle again once it ends."""
    if active:
        beat()
    else:
        rest()
