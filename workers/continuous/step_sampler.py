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
from workers.sampling import RowChoice


class StepSampler(RowChoice):
    """Each row's next token at every decoding step of a continuous batch."""

    def __init__(self, rows: Sequence[LiveRow], eos_ids: Sequence[int], device: torch.device) -> None:
        super().__init__([r.plan for r in rows], eos_ids, device)
        self.rows = list(rows)
        # Each row's own step, counted here from its tokens at composition time: every `choose`
        # gives every row exactly one token, so no per-step rebuild from the rows is needed.
        self.steps = torch.tensor([len(r.tokens) for r in self.rows], dtype=torch.long, device=device)

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
