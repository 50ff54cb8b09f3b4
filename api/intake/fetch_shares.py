"""Shares of the image-fetch connection pool, so batch traffic cannot starve anything else.

Interactive requests take connections freely. Batch lines together hold at most the batch
share of the pool (IMAGE_FETCH_BATCH_SHARE), and one batch at most half of that, so a second
batch still makes progress beside a large first one. Waiting for a share is not counted in an
image's fetch deadline: a batch line waits its turn, it does not fail for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class _BatchSlots:
    slots: asyncio.Semaphore
    users: int = 0


class FetchShares:
    def __init__(self, pool_size: int, batch_share: float) -> None:
        self.batch_limit = max(1, int(pool_size * batch_share))
        self.per_batch_limit = max(1, self.batch_limit // 2)
        self._batch = asyncio.Semaphore(self.batch_limit)
        self._per_batch: dict[str, _BatchSlots] = {}

    @asynccontextmanager
    async def slot(self, batch_id: str | None) -> AsyncIterator[None]:
        """Hold a share for one fetch: nothing to wait for unless the fetch is batch work."""
        if batch_id is None:
            yield
            return
        entry = self._per_batch.setdefault(batch_id, _BatchSlots(asyncio.Semaphore(self.per_batch_limit)))
        entry.users += 1
        try:
            async with entry.slots, self._batch:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._per_batch[batch_id]
