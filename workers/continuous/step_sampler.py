"""Each row's next token in a continuous batch, by its own parameters, seed and step.

The same choice as the static engine's `RowSampler` (penalties, min_tokens, temperature, top-k,
top-p, the counter-based exponential race of `workers.sampling`), except that every row counts
its own step: the noise a row draws is a function of (its seed, its own step, token id) only, so
a seeded row gives the same tokens alone, batched, or joined mid-flight. Built once per batch
composition; its penalty history is rebuilt from the rows' own tokens when the batch changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.continuous.live import LiveRow
from workers.sampling import exponential_noise_at


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


class StepSampler:
    def __init__(self, rows: Sequence[LiveRow], eos_ids: Sequence[int], device: torch.device) -> None:
        self.rows = list(rows)
        self.device = device
        self.eos_ids = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
        params = [r.plan.params for r in self.rows]
        self.sampling_rows = torch.tensor([r.plan.sampled for r in self.rows], device=device)
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
        self.seeds = torch.tensor([r.plan.seed for r in self.rows], dtype=torch.int64, device=device)
        # Each row's own step, counted here from its tokens at composition time: every `choose`
        # gives every row exactly one token, so no per-step rebuild from the rows is needed.
        self.steps = torch.tensor([len(r.tokens) for r in self.rows], dtype=torch.long, device=device)
        self.seen: torch.Tensor | None = None  # (B, V): prompt + generated tokens, for repetition
        self.counts: torch.Tensor | None = None  # (B, V): generated token counts
        self._groups: list[tuple[int, torch.Tensor]] | None = None

    def _history(self, vocab: int) -> None:
        """Penalty state from the rows' own tokens (prompt without padding + generated)."""
        if self.use_repetition and self.seen is None:
            self.seen = torch.zeros(len(self.rows), vocab, dtype=torch.bool, device=self.device)
            for i, live in enumerate(self.rows):
                ids = torch.cat([live.row.input_ids, torch.tensor(live.tokens, dtype=torch.long)])
                self.seen[i, ids.to(self.device)] = True
        if self.use_counts and self.counts is None:
            self.counts = torch.zeros(len(self.rows), vocab, dtype=torch.float32, device=self.device)
            for i, live in enumerate(self.rows):
                if live.tokens:
                    ids = torch.tensor(live.tokens, dtype=torch.long, device=self.device)
                    self.counts[i].scatter_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))

    def _penalise(self, scores: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            penalised = torch.where(scores > 0, scores / self.repetition, scores * self.repetition)
            scores = torch.where(self.seen, penalised, scores)
        if self.counts is not None:
            scores = scores - self.presence * (self.counts > 0) - self.frequency * self.counts
        return scores

    def _kinds(self, vocab: int) -> list[tuple[int, torch.Tensor]]:
        """Sampling rows by how candidates are found: top-k k, a full sort (0), or none (-1)."""
        if self._groups is None:
            by_kind: dict[int, list[int]] = {}
            for i, live in enumerate(self.rows):
                if not live.plan.sampled:
                    continue
                k, top_p = live.plan.params.top_k, live.plan.params.top_p
                kind = k if 0 < k < vocab else (0 if top_p < 1.0 else -1)
                by_kind.setdefault(kind, []).append(i)
            self._groups = [(kind, torch.tensor(rows, device=self.device)) for kind, rows in by_kind.items()]
        return self._groups

    def _sample(self, scores: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        logits = scores / self.temperature
        chosen = torch.zeros(scores.shape[0], dtype=torch.long, device=self.device)
        for kind, rows in self._kinds(scores.shape[-1]):
            sub, seeds, row_steps = logits.index_select(0, rows), self.seeds.index_select(0, rows), steps[rows]
            if kind == -1:
                ids = torch.arange(sub.shape[-1], device=self.device).unsqueeze(0)
                race = torch.log_softmax(sub, dim=-1) - torch.log(exponential_noise_at(seeds, row_steps, ids))
                chosen.index_copy_(0, rows, race.argmax(dim=-1))
                continue
            if kind > 0:
                values, order = torch.topk(sub, kind, dim=-1, sorted=True)
            else:
                values, order = torch.sort(sub, dim=-1, descending=True, stable=True)
            probs = torch.softmax(values, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs
            ranks = torch.arange(values.shape[-1], device=self.device).unsqueeze(0)
            keep = (before < self.top_p.index_select(0, rows)) | (ranks == 0)
            log_probs = torch.log(probs).masked_fill(~keep, float("-inf"))
            race = log_probs - torch.log(exponential_noise_at(seeds, row_steps, order))
            chosen.index_copy_(0, rows, torch.gather(order, 1, race.argmax(dim=-1, keepdim=True)).squeeze(1))
        return chosen

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits of each row's last position -> (B,) each row's next token id."""
        steps = self.steps
        self.steps = steps + 1
        scores = logits.float()
        self._history(scores.shape[-1])
        scores = self._penalise(scores)
        if self.use_min:
            # Only the EOS columns can be blocked: rewrite those (B, n_eos) instead of building
            # and applying a (B, vocab) mask at every step. `scores` is this step's own tensor
            # (the model's output or a penalised copy), so writing into it is safe.
            blocked = (steps < self.min_new).unsqueeze(1)
            eos = scores.index_select(1, self.eos_ids)
            scores.index_copy_(1, self.eos_ids, eos.masked_fill(blocked, float("-inf")))
        chosen = scores.argmax(dim=-1)
        if self.any_sampling:
            chosen = torch.where(self.sampling_rows, self._sample(scores, steps), chosen)
        column = chosen.unsqueeze(1)
        if self.seen is not None:
            self.seen.scatter_(1, column, True)
        if self.counts is not None:
            self.counts.scatter_add_(1, column, torch.ones_like(column, dtype=torch.float32))
        return chosen
