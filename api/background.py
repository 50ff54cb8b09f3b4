"""The skeleton every background loop of the API shares: run a step, sleep, survive Redis outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

# How long a loop rests after an error before it tries again.
ERROR_PAUSE_S = 1.0


async def run_forever(
    name: str,
    step: Callable[[], Awaitable[float]],
    log: logging.Logger,
    outage_level: int = logging.WARNING,
    error_pause_s: float = ERROR_PAUSE_S,
) -> None:
    """Call `step` forever; it returns how long to sleep before the next call. A Redis outage
    is logged at `outage_level` as "<name> paused", any other error with its traceback; both
    pause the loop for `error_pause_s`. Only cancellation ends it."""
    while True:
        try:
            pause = await step()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            log.log(outage_level, "%s paused: %s", name, exc)
            pause = error_pause_s
        except Exception:
            log.exception("%s error", name)
            pause = error_pause_s
        await asyncio.sleep(pause)
