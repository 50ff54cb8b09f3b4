"""The function name rq records for our jobs.

Omega workers run jobs in batches and never call it. A plain `rq worker` pointed at an Omega
queue would: fail the job loudly rather than run it without a model.
"""

from __future__ import annotations


def run_outside_batch_worker(payload: bytes) -> None:
    raise RuntimeError("Omega jobs must be run by `omega-vlm worker`, not by a plain rq worker")
