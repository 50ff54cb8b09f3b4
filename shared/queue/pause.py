"""Pausing every worker's pulls fleet-wide (rq's suspension flag, what `rq suspend` sets): workers
finish what they hold and take nothing new until resumed. Benchmarks and tests use it to let a
queue fill up; operators can use `rq suspend` / `rq resume` for the same."""

from __future__ import annotations

from redis import Redis
from rq.suspension import resume as _resume
from rq.suspension import suspend as _suspend


def pause_pulls(redis: Redis) -> None:
    _suspend(redis)


def resume_pulls(redis: Redis) -> None:
    _resume(redis)
