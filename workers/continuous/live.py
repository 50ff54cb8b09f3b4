"""One row of a running batch: its prepared input, the tokens it has generated, and when it ends.

`RowRules.accept` is what happens after each sampled token, mirroring the static engine's
`RowStopper`: the token is streamed, then the row ends at EOS, at its own max_tokens, at one of
its stop strings (checked on a window of recent tokens), or when its cancel flag is set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from workers.batch import PreparedRow
from workers.sampling import RowPlan


@dataclass
class LiveRow:
    row: PreparedRow
    started: float  # perf_counter when its prefill began: first-token time is measured from it
    tokens: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def plan(self) -> RowPlan:
        return self.row.plan

    @property
    def kv_worst(self) -> int:
        """KV columns this row can reach: its prompt plus every token it may generate."""
        return self.row.prompt_tokens + self.plan.max_new_tokens


class RowRules:
    """The end-of-row rules and the streaming hook, shared by every row of an engine."""

    def __init__(
        self,
        eos_ids: Sequence[int],
        decode: Callable[[list[int]], str],
        on_delta: Callable[[str, str], None] | None,
    ) -> None:
        self.eos = set(eos_ids)
        self.decode = decode
        self.on_delta = on_delta
        # Tokens each restarted row had streamed already (job id -> count): not sent again.
        self.streamed: dict[str, int] = {}

    def restart(self, live: LiveRow) -> None:
        """`live` leaves the batch to prefill again from its prompt (out of device memory): its
        tokens are dropped (a seeded or greedy row draws the same ones again), and those it has
        streamed already are not streamed twice."""
        plan = live.plan
        if plan.tracker is not None and live.tokens:
            self.streamed[plan.job_id] = max(self.streamed.get(plan.job_id, 0), len(live.tokens))
        plan.stop_step = None

    def accept(self, live: LiveRow, token: int) -> None:
        plan = live.plan
        live.tokens.append(token)
        count = len(live.tokens)
        if plan.tracker is not None and self.on_delta is not None and plan.cancel_step is None:
            if count > self.streamed.get(plan.job_id, 0):
                self.on_delta(plan.job_id, plan.tracker.push(token))
            elif count == self.streamed[plan.job_id]:
                del self.streamed[plan.job_id]  # caught up: from the next token on, stream
        if token in self.eos or count >= plan.max_new_tokens:
            live.done = True
        stops = plan.params.stop
        if stops and plan.stop_step is None:
            # A stop string of n characters spans at most n tokens, plus a few that decode to
            # partial UTF-8 sequences (the same window as the static engine's stopper).
            window = max(len(s) for s in stops) + 8
            text = self.decode(live.tokens[-window:])
            if any(stop in text for stop in stops):
                plan.stop_step = count
                live.done = True

    def check_cancel(self, live: LiveRow) -> bool:
        """End a row whose cancel flag was set (from another thread); True if it ended now."""
        plan = live.plan
        if live.done or not plan.cancel_requested:
            return False
        plan.cancel_step = len(live.tokens)
        live.done = True
        return True
