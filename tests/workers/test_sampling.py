"""RowSampler on synthetic logits: it draws from the distribution each row asks for."""

from __future__ import annotations

import math

import torch

from shared.contract import SamplingParams
from workers.sampling import RowPlan, RowSampler

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])


def draws(params: SamplingParams, n: int = 3000) -> list[int]:
    plan = RowPlan(params=params, max_new_tokens=n, seed=params.seed or 0)
    sampler = RowSampler([plan], prompt_width=1, pad_lengths=[0], eos_ids=[4], device=torch.device("cpu"))
    out = []
    for step in range(n):  # one draw per decoding step: the step is part of the random counter
        ids = torch.zeros((1, 1 + step), dtype=torch.long)
        out.append(int(sampler(ids, LOGITS.clone()).argmax()))
    return out


def test_plain_sampling_matches_softmax() -> None:
    seen = draws(SamplingParams(max_new_tokens=1, do_sample=True, temperature=1.0, top_p=1.0, seed=3))
    probs = torch.softmax(LOGITS[0], -1).tolist()
    for token, p in enumerate(probs):
        freq = seen.count(token) / len(seen)
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / len(seen)) + 0.005, (token, freq, p)


def test_top_k_and_top_p_restrict_the_support() -> None:
    assert set(draws(SamplingParams(max_new_tokens=1, do_sample=True, top_k=2, seed=1), 500)) <= {0, 1}
    # p(0)=0.57, p(0)+p(1)=0.78: top_p 0.7 keeps exactly tokens 0 and 1.
    assert set(draws(SamplingParams(max_new_tokens=1, do_sample=True, top_p=0.7, seed=1), 500)) == {0, 1}


def test_temperature_zero_and_greedy_rows_take_the_argmax() -> None:
    assert set(draws(SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.0), 50)) == {0}
    assert set(draws(SamplingParams(max_new_tokens=1, do_sample=False), 50)) == {0}


def test_noise_depends_only_on_seed_step_and_token() -> None:
    from workers.sampling import exponential_noise

    alone = exponential_noise(torch.tensor([42]), 3, 50)
    batched = exponential_noise(torch.tensor([7, 42, 9]), 3, 50)
    assert torch.equal(alone[0], batched[1])
    assert not torch.equal(exponential_noise(torch.tensor([42]), 4, 50), alone)
    assert abs(float(exponential_noise(torch.arange(64), 1, 4096).mean()) - 1.0) < 0.02


def test_min_tokens_masks_eos() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, 50.0]])  # EOS (id 4) dominates
    plan = RowPlan(params=SamplingParams(max_new_tokens=5, min_new_tokens=2), max_new_tokens=5, seed=0)
    sampler = RowSampler([plan], prompt_width=3, pad_lengths=[0], eos_ids=[4], device=torch.device("cpu"))
    step0 = torch.zeros((1, 3), dtype=torch.long)
    assert int(sampler(step0, logits.clone()).argmax()) != 4
    step2 = torch.zeros((1, 5), dtype=torch.long)
    assert int(sampler(step2, logits.clone()).argmax()) == 4


def test_repetition_penalty_ignores_left_padding() -> None:
    # Token 0 appears only in the padding of row 0; it must not be penalised there.
    params = SamplingParams(max_new_tokens=1, repetition_penalty=2.0)
    plans = [RowPlan(params=params, max_new_tokens=1, seed=0), RowPlan(params=params, max_new_tokens=1, seed=0)]
    sampler = RowSampler(plans, prompt_width=3, pad_lengths=[2, 0], eos_ids=[4], device=torch.device("cpu"))
    ids = torch.tensor([[0, 0, 3], [0, 2, 3]])
    logits = torch.tensor([[1.0, 0.9, 0.0, 0.0, 0.0], [1.0, 0.9, 0.0, 0.0, 0.0]])
    chosen = sampler(ids, logits).argmax(-1).tolist()
    assert chosen == [0, 1]


def freq_matches(seen: list[int], probs: list[float]) -> None:
    for token, p in enumerate(probs):
        freq = seen.count(token) / len(seen)
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / len(seen)) + 0.005, (token, freq, p)


def test_top_k_and_top_p_paths_draw_from_the_renormalised_distribution() -> None:
    """Top-k rows take the k best by torch.topk, top-p-only rows sort: both must draw exactly
    from the distribution restricted to what they keep."""
    full = torch.softmax(LOGITS[0], -1)
    top3 = torch.cat([full[:3] / full[:3].sum(), torch.zeros(2)]).tolist()
    freq_matches(draws(SamplingParams(max_new_tokens=1, do_sample=True, temperature=1.0, top_k=3, seed=5)), top3)
    top2 = torch.cat([full[:2] / full[:2].sum(), torch.zeros(3)]).tolist()  # top_p 0.7 keeps 0 and 1
    freq_matches(draws(SamplingParams(max_new_tokens=1, do_sample=True, temperature=1.0, top_p=0.7, seed=6)), top2)


def test_a_rows_draws_do_not_depend_on_its_batch_mates() -> None:
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.9, top_k=20, seed=1),  # top-k path
        SamplingParams(max_new_tokens=1, do_sample=True, temperature=1.1, top_p=0.8, seed=2),  # sort path
        SamplingParams(max_new_tokens=1, do_sample=True, temperature=0.7, seed=3),  # plain path
        SamplingParams(max_new_tokens=1, do_sample=False),  # greedy
    ]

    def sample(rows: list[int], step: int) -> list[int]:
        plans = [RowPlan(params=params[r], max_new_tokens=1, seed=params[r].seed or 0) for r in rows]
        sampler = RowSampler(
            plans, prompt_width=1, pad_lengths=[0] * len(rows), eos_ids=[299], device=torch.device("cpu")
        )
        out = sampler(torch.zeros((len(rows), 1 + step), dtype=torch.long), logits[rows].clone())
        return out.argmax(dim=-1).tolist()

    for step in range(20):
        together = sample([0, 1, 2, 3], step)
        assert together == [sample([r], step)[0] for r in range(4)]
        assert sample([2, 0], step) == [together[2], together[0]]
