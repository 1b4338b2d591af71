"""Self-certainty, Intuitor's reward (mgrpo.algos.self_certainty): hand-computed cases."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from mgrpo.algos.self_certainty import self_certainty_from_log_probs, token_self_certainty, trajectory_self_certainty


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_uniform_distribution_gives_zero(temperature: float) -> None:
    logits = torch.full((2, 3, 11), 4.2)
    assert torch.allclose(token_self_certainty(logits, temperature), torch.zeros(2, 3), atol=1e-6)


def test_two_tokens_by_hand() -> None:
    # p = (0.8, 0.2): KL(U || p) = 0.5 log(0.5 / 0.8) + 0.5 log(0.5 / 0.2) = 0.5 log(1.5625).
    logits = torch.log(torch.tensor([0.8, 0.2]))
    assert math.isclose(float(token_self_certainty(logits)), 0.5 * math.log(1.5625), rel_tol=1e-6)


def _one_top_token_kl(vocab: int, gap: float) -> float:
    """Top logit `gap` above V - 1 equal others: log p_top = gap - log Z, log p_other = -log Z with
    Z = e^gap + V - 1, so KL = -log V - mean log p = log(Z / V) - gap / V, evaluated with 50
    digits (the two terms cancel when the gap is small)."""
    with mpmath.workdps(50):
        gap_mp = mpmath.mpf(gap)
        return float(mpmath.log((mpmath.exp(gap_mp) + vocab - 1) / vocab) - gap_mp / vocab)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("vocab", [2, 10, 1000, 151_669])
@pytest.mark.parametrize("gap", [1e-6, 1e-3, 1.0, 5.0, 30.0, 100.0])
def test_one_top_token_by_hand(vocab: int, gap: float, dtype: torch.dtype) -> None:
    """Near one-hot (large gap) KL is about gap (1 - 1/V) - log V: it grows with the gap, without
    bound (KL(p || U), the other direction, tends to log V). Nearly flat (small gap) it is about
    gap^2 (V - 1) / (2 V^2): tiny, and the textbook logsumexp - mean - log V loses every digit of
    it in float32. The result must keep the input precision's relative accuracy whatever the
    conditioning: every term the centred form adds is >= 0, so the error is rounding in the
    centring and in a sum over V terms, a few ulps of the input's dtype (at most 10 measured over
    these cases in both dtypes; we allow 32)."""
    logits = torch.zeros(vocab, dtype=dtype)
    logits[3 % vocab] = gap
    expected = _one_top_token_kl(vocab, gap)
    got = token_self_certainty(logits)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rel = 32 * torch.finfo(dtype).eps
    assert math.isclose(float(got), expected, rel_tol=rel), (float(got), expected)
    if gap == 30.0:
        assert math.isclose(expected, gap * (1 - 1 / vocab) - math.log(vocab), rel_tol=1e-6)


def test_nearly_flat_distribution_does_not_cancel() -> None:
    """The failure that motivated the centred form: float64 logits with gap 1 over 1,000 tokens
    used to be computed in float32 as log(Z/V) - gap/V, which returned 7.1430e-4 for 7.1681e-4.
    float64 input is now computed in float64."""
    logits = torch.zeros(1000, dtype=torch.float64)
    logits[0] = 1.0
    expected = _one_top_token_kl(1000, 1.0)  # 7.16807e-4
    assert math.isclose(float(token_self_certainty(logits)), expected, rel_tol=1e-13)
    naive32 = float(torch.logsumexp(logits.float(), -1) - logits.float().mean() - math.log(1000))
    assert abs(naive32 - expected) / expected > 1e-4  # why the naive form is not used


def test_log_prob_form_is_shift_invariant_and_matches_logits_form() -> None:
    torch.manual_seed(4)
    logits = torch.randn(6, 500, dtype=torch.float64) * 0.01 + 40.0
    from_logits = token_self_certainty(logits, vocab_size=480)
    from_log_probs = self_certainty_from_log_probs(torch.log_softmax(logits, -1), 480)
    assert torch.allclose(from_logits, from_log_probs, rtol=1e-9, atol=0)
    assert (from_logits > 0).all()


def test_minus_inf_real_logit_gives_infinity() -> None:
    logits = torch.tensor([0.0, 1.0, -torch.inf])
    assert float(token_self_certainty(logits)) == math.inf


def test_verl_intuitor_form_differs_by_the_constant_log_v() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 50) * 3
    verl = torch.logsumexp(logits, -1) - logits.mean(-1)  # verl-intuitor's self_certainty_from_logits
    assert torch.allclose(token_self_certainty(logits), verl - math.log(50), atol=1e-5)
    assert (token_self_certainty(logits) >= -1e-6).all()  # Gibbs: KL >= 0


def test_temperature_divides_the_logits() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 30)
    assert torch.allclose(token_self_certainty(logits, 0.7), token_self_certainty(logits / 0.7), atol=1e-5)
    assert not torch.allclose(token_self_certainty(logits, 0.7), token_self_certainty(logits), atol=1e-3)
    with pytest.raises(ValueError, match="temperature"):
        token_self_certainty(logits, 0.0)


def test_padded_head_entries_are_not_part_of_the_vocabulary() -> None:
    """A head padded past the tokenizer (the padded rows' logits far below the rest): with the
    real vocabulary the value is that of the unpadded head; averaging over the padding instead
    adds a large term that says nothing about the response."""
    torch.manual_seed(2)
    real = torch.randn(3, 40)
    padded = torch.cat([real, torch.full((3, 24), -30.0)], dim=-1)
    assert torch.allclose(token_self_certainty(padded, 1.0, vocab_size=40), token_self_certainty(real), atol=1e-4)
    assert (token_self_certainty(padded) > token_self_certainty(real) + 5).all()
    # A tokenizer larger than the head: the head is the vocabulary.
    assert torch.allclose(token_self_certainty(real, 1.0, vocab_size=100), token_self_certainty(real))
    # Uniform over the real vocabulary, nothing on the padding: exactly 0.
    uniform_real = torch.cat([torch.zeros(1, 40), torch.full((1, 24), -torch.inf)], dim=-1)
    assert float(token_self_certainty(uniform_real, 1.0, vocab_size=40)) == pytest.approx(0.0, abs=1e-6)


def test_chunks_do_not_change_values_and_log_prob_form_agrees() -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 9, 33)
    whole = token_self_certainty(logits, 1.3, vocab_size=30, chunk_rows=10_000)
    assert torch.allclose(token_self_certainty(logits, 1.3, vocab_size=30, chunk_rows=4), whole)
    assert torch.allclose(self_certainty_from_log_probs(torch.log_softmax(logits / 1.3, -1), 30), whole, atol=1e-6)


def test_trajectory_mean_is_masked_by_the_response() -> None:
    values = torch.tensor([[1.0, 3.0, 100.0], [2.0, 4.0, 6.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert trajectory_self_certainty(values, mask).tolist() == [2.0, 4.0, 0.0]
