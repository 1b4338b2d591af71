"""Token log-probabilities, token entropy and trajectory entropy (mgrpo.algos.entropy)."""

from __future__ import annotations

import math

import pytest
import torch

from mgrpo.algos.entropy import logprobs_and_entropy, masked_mean, sampled_entropy_estimate, trajectory_entropy

LN3 = math.log(3.0)


def _direct(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Full (B, T, V) float64 computation, no chunking."""
    log_p = torch.log_softmax(logits.double() / temperature, dim=-1)
    logprobs = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logprobs, entropy


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.1])
def test_matches_direct_full_computation(seed: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, 11, generator=gen) * 3
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    logprobs, entropy = logprobs_and_entropy(logits, tokens, temperature=temperature)
    ref_logprobs, ref_entropy = _direct(logits, tokens, temperature)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    assert logprobs.shape == (3, 5) and entropy.shape == (3, 5)
    torch.testing.assert_close(logprobs.double(), ref_logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
def test_chunked_equals_unchunked(chunk_rows: int) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, 13, generator=gen)  # 20 rows: chunks of 3 and 7 leave a remainder
    tokens = torch.randint(0, 13, (4, 5), generator=gen)
    full_lp, full_h = logprobs_and_entropy(logits, tokens, temperature=1.1, chunk_rows=10_000)
    lp, h = logprobs_and_entropy(logits, tokens, temperature=1.1, chunk_rows=chunk_rows)
    torch.testing.assert_close(lp, full_lp, rtol=0, atol=1e-6)
    torch.testing.assert_close(h, full_h, rtol=0, atol=1e-6)


def test_bfloat16_logits_are_computed_in_float32() -> None:
    logits = torch.zeros(1, 2, 5, dtype=torch.bfloat16)
    logprobs, entropy = logprobs_and_entropy(logits, torch.zeros(1, 2, dtype=torch.long))
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    torch.testing.assert_close(entropy, torch.full((1, 2), 1.6094379))


def test_uniform_logits_entropy_is_ln_v() -> None:
    logits = torch.full((2, 3, 5), 7.0)  # any constant: uniform over V = 5
    tokens = torch.tensor([[0, 1, 2], [3, 4, 0]])
    for temperature in (0.5, 1.0, 2.0):
        logprobs, entropy = logprobs_and_entropy(logits, tokens, temperature=temperature)
        torch.testing.assert_close(entropy, torch.full((2, 3), 1.6094379))  # ln 5
        torch.testing.assert_close(logprobs, torch.full((2, 3), -1.6094379))


def test_one_hot_logits_entropy_is_zero() -> None:
    logits = torch.tensor([[[60.0, 0.0, 0.0, 0.0], [0.0, 0.0, 60.0, 0.0]]])
    logprobs, entropy = logprobs_and_entropy(logits, torch.tensor([[0, 1]]))
    assert entropy.abs().max() < 1e-20
    assert logprobs[0, 0].item() == pytest.approx(0.0, abs=1e-20)
    assert logprobs[0, 1].item() == pytest.approx(-60.0, abs=1e-4)


@pytest.mark.parametrize(
    "temperature, entropy, logprob",
    [
        # logits [0, ln 3]: p = [1/4, 3/4]; H = 1/4 ln 4 + 3/4 ln(4/3) = 0.5623351; log p1 = ln 0.75
        (1.0, 0.5623351, -0.2876821),
        # /2: logits [0, ln sqrt 3]: p = [1/(1+sqrt3), sqrt3/(1+sqrt3)] = [0.3660254, 0.6339746]
        # H = 0.3660254 * 1.0050525 + 0.6339746 * 0.4557464 = 0.6568064
        (2.0, 0.6568064, -0.4557464),
        # /0.5: logits [0, 2 ln 3]: p = [1/10, 9/10]; H = 0.1 ln 10 + 0.9 ln(10/9) = 0.3250830
        (0.5, 0.3250830, -0.1053605),
    ],
)
def test_temperature_hand_case(temperature: float, entropy: float, logprob: float) -> None:
    logits = torch.tensor([[[0.0, LN3]]])
    lp, h = logprobs_and_entropy(logits, torch.tensor([[1]]), temperature=temperature)
    assert h.item() == pytest.approx(entropy, abs=1e-6)
    assert lp.item() == pytest.approx(logprob, abs=1e-6)


def test_without_entropy() -> None:
    logits = torch.tensor([[[0.0, LN3]]])
    lp, h = logprobs_and_entropy(logits, torch.tensor([[1]]), with_entropy=False)
    assert h is None
    assert lp.item() == pytest.approx(-0.2876821, abs=1e-6)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="do not match"):
        logprobs_and_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), temperature=0.0)


def test_trajectory_entropy_masked_mean() -> None:
    token_entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.5, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    # row 0: (1 + 2) / 2 = 1.5; row 1: empty -> 0; row 2: (0.5 + 9 + 9) / 3 = 6.1666667
    result = trajectory_entropy(token_entropy, mask)
    torch.testing.assert_close(result, torch.tensor([1.5, 0.0, 6.1666667]))
    # A {0, 1} float mask gives the same.
    torch.testing.assert_close(trajectory_entropy(token_entropy, mask.float()), result)


def test_masked_mean_empty_mask_is_zero_not_nan() -> None:
    out = masked_mean(torch.tensor([[1.0, 2.0]]), torch.tensor([[0, 0]]))
    assert out.tolist() == [0.0]


def test_sampled_entropy_estimate_hand_case() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -10.0], [-0.5, -0.25, -4.0], [-3.0, -3.0, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    # row 0: -(-1 - 2) / 2 = 1.5; row 1: (0.5 + 0.25 + 4) / 3 = 1.5833333; row 2: empty -> 0
    estimate = sampled_entropy_estimate(logprobs, mask)
    torch.testing.assert_close(estimate, torch.tensor([1.5, 1.5833333, 0.0]))


def test_sampled_estimate_is_unbiased_for_the_full_entropy() -> None:
    """E[-log p(y)] over y ~ p is H(p): average the estimate over many sampled tokens."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 1, 6, generator=gen) * 2
    probs = torch.softmax(logits[0, 0] / 1.1, -1)
    tokens = torch.multinomial(probs, 20_000, replacement=True, generator=gen).view(1, -1)
    lp, h = logprobs_and_entropy(logits.expand(1, tokens.shape[1], 6), tokens, temperature=1.1)
    estimate = sampled_entropy_estimate(lp, torch.ones_like(lp))
    full = trajectory_entropy(h, torch.ones_like(h))
    assert estimate.item() == pytest.approx(full.item(), abs=0.03)
