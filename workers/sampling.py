"""Per-row decoding inside one batched `generate`.

`generate` runs greedy over the batch; `RowSampler` (a logits processor) picks every row's next
token with that row's own parameters (temperature, top-k, top-p, penalties, min_tokens) and its
own seed, then leaves only the chosen token, so greedy takes it. Random numbers come from a
counter-based generator computed on the device: a hash of (seed, step, token id). One vectorised
op serves every row, nothing is read back to the host, and a row's draw depends only on its own
seed and logits, which is what makes a seeded request produce the same text alone or inside any
batch (and on CPU or GPU alike). `RowStopper` ends rows at their own
`max_tokens` or stop strings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria

from shared.contract import SamplingParams
from workers import progress
from workers.streaming import DeltaTracker


@dataclass
class RowPlan:
    """Decoding parameters of one row, plus what the stopper records while it runs."""

    params: SamplingParams
    max_new_tokens: int  # after the MAX_MODEL_LENGTH clamp
    seed: int
    stop_step: int | None = None  # generated-token count at which a stop string matched
    cancel_requested: bool = False  # set from another thread; the stopper ends the row
    cancel_step: int | None = None  # generated-token count at which the row was stopped for it
    first_token_at: float | None = None
    job_id: str = ""
    tracker: DeltaTracker | None = field(default=None, repr=False)  # streaming rows only

    @property
    def sampled(self) -> bool:
        return self.params.do_sample and self.params.temperature > 0


def _signed(value: int) -> int:
    """A 64-bit constant as torch's int64 holds it (torch has no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# splitmix64's constants, and an odd multiplier that spreads steps apart.
_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STEP = _signed(0x632BE59BD9B4E019)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def exponential_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(B, V) Exp(1) noise: splitmix64 of (seed, step, token id), wrapping int64 arithmetic."""
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64).unsqueeze(0)
    return exponential_noise_at(seeds, step, tokens)


def exponential_noise_at(seeds: torch.Tensor, step: int | torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The same noise for the given token ids only ((B, N) ids, or (1, N) for every row): a
    token's value does not depend on which other tokens are asked for. `step` is one step for
    every row, or a (B,) int64 tensor of per-row steps (rows of a continuous batch each count
    their own)."""

    def const(value: int) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.int64, device=seeds.device)

    steps = step.unsqueeze(1) if isinstance(step, torch.Tensor) else const(step)
    z = seeds.unsqueeze(1) * const(_GOLDEN) + steps * const(_STEP) + tokens + const(_GOLDEN)
    z = (z ^ _shift(z, 30)) * const(_MIX1)
    z = (z ^ _shift(z, 27)) * const(_MIX2)
    z = z ^ _shift(z, 31)
    uniform = (_shift(z, 40).to(torch.float32) + 0.5) / float(1 << 24)  # in (0, 1), never 0
    return -torch.log(uniform)


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


class RowChoice:
    """Each row's own sampling parameters as columns, its penalties and the exponential race:
    what both engines' samplers share (RowSampler for `generate`, the continuous engine's
    StepSampler). A row's path depends only on its own parameters, so its draw is the same in any
    batch."""

    def __init__(self, plans: Sequence[RowPlan], eos_ids: Sequence[int], device: torch.device) -> None:
        self.plans = list(plans)
        self.eos_ids = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
        self.device = device
        params = [p.params for p in self.plans]
        self.sampling_rows = torch.tensor([p.sampled for p in self.plans], device=device)
        self.any_sampling = bool(self.sampling_rows.any())
        self.temperature = _column([max(p.temperature, 1e-5) for p in params], device)
        self.top_p = _column([p.top_p for p in params], device)
        self.min_new = torch.tensor([p.min_new_tokens for p in params], dtype=torch.long, device=device)
        self.repetition = _column([p.repetition_penalty for p in params], device)
        self.presence = _column([p.presence_penalty for p in params], device)
        self.frequency = _column([p.frequency_penalty for p in params], device)
        self.use_repetition = any(p.repetition_penalty != 1.0 for p in params)
        self.use_counts = any(p.presence_penalty or p.frequency_penalty for p in params)
        self.use_min = any(p.min_new_tokens > 0 for p in params)
        self.seeds = torch.tensor([p.seed for p in self.plans], dtype=torch.int64, device=device)
        self.seen: torch.Tensor | None = None  # (B, V) tokens in prompt + output, for repetition
        self.counts: torch.Tensor | None = None  # (B, V) output token counts, for presence/frequency
        self._cached_groups: list[tuple[int, torch.Tensor]] | None = None

    def _penalise(self, scores: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            penalised = torch.where(scores > 0, scores / self.repetition, scores * self.repetition)
            scores = torch.where(self.seen, penalised, scores)
        if self.counts is not None:
            scores = scores - self.presence * (self.counts > 0) - self.frequency * self.counts
        return scores

    def _groups(self, vocab: int) -> list[tuple[int, torch.Tensor]]:
        """Sampling rows grouped by how their candidates are found: top-k k (> 0), a full sort
        (0: top-p without top-k), or none at all (-1: plain temperature sampling)."""
        if self._cached_groups is None:
            by_kind: dict[int, list[int]] = {}
            for row, plan in enumerate(self.plans):
                if not plan.sampled:
                    continue
                k, top_p = plan.params.top_k, plan.params.top_p
                kind = k if 0 < k < vocab else (0 if top_p < 1.0 else -1)
                by_kind.setdefault(kind, []).append(row)
            self._cached_groups = [
                (kind, torch.tensor(rows, dtype=torch.long, device=self.device)) for kind, rows in by_kind.items()
            ]
        return self._cached_groups

    def _sample(self, scores: torch.Tensor, steps: int | torch.Tensor) -> torch.Tensor:
        """Token ids for the sampling rows (exact categorical draw by the exponential race);
        other rows' entries are left at 0. `steps`: one step for all rows, or each row's own."""
        logits = scores / self.temperature
        chosen = torch.zeros(scores.shape[0], dtype=torch.long, device=self.device)
        for kind, rows in self._groups(scores.shape[-1]):
            sub, seeds = logits.index_select(0, rows), self.seeds.index_select(0, rows)
            step = steps[rows] if isinstance(steps, torch.Tensor) else steps
            if kind == -1:
                # No truncation: race over the whole vocabulary in token order, nothing sorted.
                ids = torch.arange(sub.shape[-1], device=self.device).unsqueeze(0)
                race = torch.log_softmax(sub, dim=-1) - torch.log(exponential_noise_at(seeds, step, ids))
                chosen.index_copy_(0, rows, race.argmax(dim=-1))
                continue
            if kind > 0:
                # Only the k best candidates matter: a top-k, not a sort of the whole vocabulary
                # (152k entries per row for some models), and noise for those k tokens only.
                values, order = torch.topk(sub, kind, dim=-1, sorted=True)
            else:
                values, order = torch.sort(sub, dim=-1, descending=True, stable=True)
            probs = torch.softmax(values, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
            ranks = torch.arange(values.shape[-1], device=self.device).unsqueeze(0)
            keep = (before < self.top_p.index_select(0, rows)) | (ranks == 0)
            log_probs = torch.log(probs).masked_fill(~keep, float("-inf"))
            # argmax(p / E) with E ~ Exp(1) is a draw from p; the noise is indexed by token id so
            # a row's draw does not depend on how its logits happened to sort.
            race = log_probs - torch.log(exponential_noise_at(seeds, step, order))
            chosen.index_copy_(0, rows, torch.gather(order, 1, race.argmax(dim=-1, keepdim=True)).squeeze(1))
        return chosen


class RowSampler(RowChoice, LogitsProcessor):
    """Choose each row's token by its own parameters; leave only that token for greedy to take."""

    def __init__(
        self,
        plans: Sequence[RowPlan],
        prompt_width: int,
        pad_lengths: Sequence[int],
        eos_ids: Sequence[int],
        device: torch.device,
    ) -> None:
        super().__init__(plans, eos_ids, device)
        self.prompt_width = prompt_width
        self.pad_lengths = list(pad_lengths)
        self._first_call = True

    def _update_history(self, input_ids: torch.Tensor, vocab: int) -> None:
        step = input_ids.shape[1] - self.prompt_width
        if self.use_repetition:
            if self.seen is None:
                # Left padding is not part of a row's prompt: leave it out, or a row would be
                # penalised differently alone than in a batch.
                positions = torch.arange(input_ids.shape[1], device=self.device).unsqueeze(0)
                real = positions >= torch.tensor(self.pad_lengths, device=self.device).unsqueeze(1)
                self.seen = torch.zeros(input_ids.shape[0], vocab, dtype=torch.bool, device=self.device)
                self.seen.scatter_(1, torch.where(real, input_ids, 0), real)
                # Tokens generated before the first call are none; later steps add one each.
            elif step > 0:
                self.seen.scatter_(1, input_ids[:, -1:], True)
        if self.use_counts:
            if self.counts is None:
                self.counts = torch.zeros(input_ids.shape[0], vocab, dtype=torch.float32, device=self.device)
            if step > 0:
                self.counts.scatter_add_(1, input_ids[:, -1:], torch.ones_like(input_ids[:, -1:], dtype=torch.float32))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._first_call:  # every row of the call gets its first token now
            self._first_call = False
            now = time.perf_counter()
            for plan in self.plans:
                plan.first_token_at = now
        scores_f = scores.float()
        self._update_history(input_ids, scores_f.shape[-1])
        scores_f = self._penalise(scores_f)
        if self.use_min:
            step = input_ids.shape[1] - self.prompt_width
            blocked = (step < self.min_new).unsqueeze(1)
            eos_mask = torch.zeros_like(scores_f, dtype=torch.bool)
            eos_mask[:, self.eos_ids] = True
            scores_f = scores_f.masked_fill(blocked & eos_mask, float("-inf"))
        chosen = scores_f.argmax(dim=-1)
        if self.any_sampling:
            step = input_ids.shape[1] - self.prompt_width
            chosen = torch.where(self.sampling_rows, self._sample(scores_f, step), chosen)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out  # type: ignore[return-value]


class RowStopper(StoppingCriteria):
    """Ends each row at its own max_tokens, or when its text contains one of its stop strings."""

    def __init__(
        self,
        plans: Sequence[RowPlan],
        prompt_width: int,
        decode: Callable[[list[int]], str],
        device: torch.device,
        on_delta: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plans = list(plans)
        self.on_delta = on_delta
        self.stream_rows = [i for i, p in enumerate(self.plans) if p.tracker is not None]
        self.prompt_width = prompt_width
        self.decode = decode
        self.limits = torch.tensor([p.max_new_tokens for p in self.plans], dtype=torch.long, device=device)
        self.stop_rows = [i for i, p in enumerate(self.plans) if p.params.stop]
        # A stop string of n characters spans at most n tokens, plus a few that decode to
        # partial UTF-8 sequences.
        self.windows = {i: max(len(s) for s in self.plans[i].params.stop) + 8 for i in self.stop_rows}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        progress.beat()  # one decoding step done: what the worker's /livez checks
        step = input_ids.shape[1] - self.prompt_width
        done = step >= self.limits
        if self.stream_rows and step > 0 and self.on_delta is not None:
            self._stream(input_ids[self.stream_rows, -1].tolist())
        canceled = [i for i, p in enumerate(self.plans) if p.cancel_requested]
        if canceled:
            done = done.clone()
            for i in canceled:
                if self.plans[i].cancel_step is None:
                    self.plans[i].cancel_step = step
                done[i] = True
        if self.stop_rows and step > 0:
            tails = input_ids[self.stop_rows, -min(step, max(self.windows.values())) :].tolist()
            for row, tail in zip(self.stop_rows, tails, strict=True):
                plan = self.plans[row]
                if plan.stop_step is not None:
                    continue
                text = self.decode(tail[-self.windows[row] :])
                if any(stop in text for stop in plan.params.stop):
                    plan.stop_step = step
            stopped = [i for i in self.stop_rows if self.plans[i].stop_step is not None]
            if stopped:
                done = done.clone()
                done[stopped] = True
        return done  # type: ignore[return-value]

    def _stream(self, last_tokens: list[int]) -> None:
        assert self.on_delta is not None
        for row, token in zip(self.stream_rows, last_tokens, strict=True):
            plan = self.plans[row]
            assert plan.tracker is not None
            if plan.cancel_step is None:
                self.on_delta(plan.job_id, plan.tracker.push(token))
