"""PPO-clip loss, KL estimators, loss aggregation (mgrpo.algos.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from mgrpo.algos.losses import LOSS_AGG_MODES, agg_loss, kl_penalty, policy_loss, ppo_clip_loss, tis_weights

LN2 = math.log(2.0)


def _logs(ratios: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(r) for r in ratios]])


# ---------------------------------------------------------------- PPO clip


def test_ppo_clip_hand_case() -> None:
    # eps = 0.2, per-token loss = max(-A r, -A clip(r, 0.8, 1.2)):
    #   A=+1 r=1.5: max(-1.5, -1.2) = -1.2  (clipped)
    #   A=+1 r=0.5: max(-0.5, -0.8) = -0.5  (unclipped)
    #   A=-1 r=1.5: max( 1.5,  1.2) =  1.5  (unclipped)
    #   A=-1 r=0.5: max( 0.5,  0.8) =  0.8  (clipped)
    #   A=+2 r=1.1: -2.2 (inside the range)
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1]
    logprobs = _logs(ratios).requires_grad_(True)
    old = torch.zeros(1, 5)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0]])
    loss, metrics = ppo_clip_loss(logprobs, old, advantages, torch.ones(1, 5), clip_ratio=0.2)
    # token-mean: (-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5 = -0.32
    assert loss.item() == pytest.approx(-0.32, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(0.4)  # tokens 1 and 4
    assert metrics["ratio_mean"] == pytest.approx(1.02, abs=1e-6)  # 5.1 / 5
    # approx_kl = mean(old - new) = -(2 ln 1.5 + 2 ln 0.5 + ln 1.1) / 5 = 0.0960108
    assert metrics["approx_kl"] == pytest.approx(0.0960108, abs=1e-6)
    loss.backward()
    # d/dlogp of -A r is -A r; clipped tokens get 0; all / 5 tokens.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.1, 0.3, 0.0, -0.44]]))


def test_dual_clip_hand_case() -> None:
    # c = 3 caps the loss of negative-advantage tokens at -A * c:
    #   A=-1 r=5: max(5, 1.2) = 5 -> min(5, 3) = 3
    #   A=-1 r=2: 2 (below the cap)
    #   A=+1 r=5: -1.2 (positive advantage: no dual clip)
    #   A=-1 r=0.5: 0.8
    #   A=-2 r=2: max(4, 2.4) = 4 < 6
    #   A=-2 r=4: max(8, 2.4) = 8 -> 6
    ratios = [5.0, 2.0, 5.0, 0.5, 2.0, 4.0]
    advantages = torch.tensor([[-1.0, -1.0, 1.0, -1.0, -2.0, -2.0]])
    mask = torch.ones(1, 6)
    plain, plain_metrics = ppo_clip_loss(_logs(ratios), torch.zeros(1, 6), advantages, mask, agg_mode="seq-mean-token-sum")
    assert plain.item() == pytest.approx(5 + 2 - 1.2 + 0.8 + 4 + 8, abs=1e-5)
    logprobs = _logs(ratios).requires_grad_(True)
    dual, metrics = ppo_clip_loss(
        logprobs, torch.zeros(1, 6), advantages, mask, clip_ratio_dual=3.0, agg_mode="seq-mean-token-sum"
    )
    assert dual.item() == pytest.approx(3 + 2 - 1.2 + 0.8 + 4 + 6, abs=1e-5)
    # clip_frac counts the eps-clip only (tokens 3 and 4), not the dual cap.
    assert metrics["clip_frac"] == pytest.approx(2 / 6)
    assert plain_metrics["clip_frac"] == pytest.approx(2 / 6)
    dual.backward()
    # capped and clipped tokens: no gradient; others -A r: token 2 -> 2, token 5 -> 4
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 2.0, 0.0, 0.0, 4.0, 0.0]]))


def test_sequence_advantages_broadcast_over_tokens() -> None:
    logprobs = torch.zeros(2, 3)
    mask = torch.ones(2, 3)
    loss_seq, _ = ppo_clip_loss(logprobs, logprobs, torch.tensor([1.0, -2.0]), mask)
    loss_tok, _ = ppo_clip_loss(logprobs, logprobs, torch.tensor([[1.0] * 3, [-2.0] * 3]), mask)
    # ratio 1: per-token loss -A: (3 * -1 + 3 * 2) / 6 = 0.5
    assert loss_seq.item() == pytest.approx(0.5) and loss_tok.item() == pytest.approx(0.5)


def test_masked_tokens_do_not_count() -> None:
    logprobs = _logs([1.5, 3.0, 0.5]).requires_grad_(True)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    loss, metrics = ppo_clip_loss(logprobs, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 1.0]]), mask)
    # tokens 1 and 3: (-1.2 - 0.5) / 2
    assert loss.item() == pytest.approx(-0.85, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(0.5)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    assert logprobs.grad[0, 1].item() == 0.0


def _loop_ppo(logprobs, old, advantages, mask, eps, dual, mode, norm_length=None) -> float:
    """Per-token Python reference of the PPO-clip loss and its aggregation."""
    rows = []
    for b in range(len(logprobs)):
        row = []
        for t in range(len(logprobs[b])):
            if not mask[b][t]:
                continue
            a = advantages[b][t]
            r = math.exp(logprobs[b][t] - old[b][t])
            value = max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
            if dual is not None and a < 0:
                value = min(value, -a * dual)
            row.append(value)
        rows.append(row)
    seqs = [r for r in rows if r]
    if mode == "token-mean":
        return sum(sum(r) for r in seqs) / max(1, sum(len(r) for r in seqs))
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in seqs) / max(1, len(seqs))
    if mode == "seq-mean-token-sum":
        return sum(sum(r) for r in seqs) / max(1, len(seqs))
    length = len(logprobs[0]) if norm_length is None else norm_length
    return sum(sum(r) for r in seqs) / (max(1, len(seqs)) * length)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_vectorised_equals_loop(seed: int, mode: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(5, 7, generator=gen) * 3
    old = logprobs + torch.randn(5, 7, generator=gen) * 0.4
    advantages = torch.randn(5, 7, generator=gen)
    mask = torch.rand(5, 7, generator=gen) > 0.3
    mask[2] = False  # a fully masked sequence
    dual = 3.0 if seed % 2 else None
    loss, _ = ppo_clip_loss(logprobs, old, advantages, mask, clip_ratio=0.2, clip_ratio_dual=dual, agg_mode=mode)
    expected = _loop_ppo(logprobs.tolist(), old.tolist(), advantages.tolist(), mask.tolist(), 0.2, dual, mode)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- KL


@pytest.mark.parametrize(
    "estimator, plus, minus",
    [
        # d = +ln 2 and d = -ln 2
        ("k1", 0.6931472, -0.6931472),
        ("k2", 0.2402265, 0.2402265),  # (ln 2)^2 / 2
        ("low_var_kl", 0.1931472, 0.3068528),  # e^-d - 1 + d: 0.5 - 1 + ln2 ; 2 - 1 - ln2
    ],
)
def test_kl_hand_values(estimator: str, plus: float, minus: float) -> None:
    logprobs = torch.tensor([[LN2, -LN2, 0.0]])
    kl = kl_penalty(logprobs, torch.zeros(1, 3), estimator)
    torch.testing.assert_close(kl, torch.tensor([[plus, minus, 0.0]]))


def test_low_var_kl_is_clamped_and_non_negative() -> None:
    d = torch.linspace(-30.0, 30.0, 601)
    kl = kl_penalty(d, torch.zeros_like(d), "low_var_kl")
    assert bool((kl >= 0).all()) and bool((kl <= 10).all())
    # d = -5: e^5 - 1 - 5 = 142.4 -> 10; d = 15: e^-15 - 1 + 15 = 14.0000003 -> 10
    assert kl_penalty(torch.tensor([-5.0, 15.0]), torch.zeros(2), "low_var_kl").tolist() == [10.0, 10.0]
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=gen) * 3, torch.randn(1000, generator=gen) * 3
    assert bool((kl_penalty(a, b, "low_var_kl") >= 0).all())


def test_low_var_kl_gradient_is_finite_for_extreme_log_ratios() -> None:
    """Regression: exp(-d) overflowed to inf for d < -88 and the clamp's zero gradient times
    inf gave NaN, poisoning the whole step even from a masked (padding) token. verl clamps d
    to [-20, 20] first; the value is unchanged there because the output is clamped to 10."""
    logprobs = torch.tensor([[-100.0, -50.0, 0.0, 200.0]], requires_grad=True)
    kl = kl_penalty(logprobs, torch.zeros(1, 4), "low_var_kl")
    assert kl.tolist() == [[10.0, 10.0, 0.0, 10.0]]
    kl.sum().backward()
    assert bool(torch.isfinite(logprobs.grad).all())
    # Through policy_loss, with the extreme token masked out (padding):
    logprobs = torch.tensor([[-0.5, -100.0]], requires_grad=True)
    loss, _ = policy_loss(
        logprobs, logprobs.detach(), torch.tensor([[-0.5, 0.0]]), torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), kl_coef=0.1
    )
    loss.backward()
    assert bool(torch.isfinite(logprobs.grad).all())


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="KL estimator"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k3")
    with pytest.raises(ValueError, match="aggregation mode"):
        agg_loss(torch.zeros(1, 2), torch.ones(1, 2), "sum")


# ---------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])  # row 2 fully masked (a filtered sample)


@pytest.mark.parametrize(
    "mode, kwargs, expected",
    [
        ("token-mean", {}, 3.6),  # (1 + 2 + 4 + 5 + 6) / 5 tokens
        ("seq-mean-token-mean", {}, 3.25),  # (1.5 + 5) / 2 sequences (row 2 does not count)
        ("seq-mean-token-sum", {}, 9.0),  # (3 + 15) / 2
        ("seq-mean-token-sum-norm", {}, 3.0),  # 18 / (2 sequences * T = 3)
        ("seq-mean-token-sum-norm", {"norm_length": 4}, 2.25),  # 18 / (2 * 4)
        ("token-mean", {"num_tokens": 10}, 1.8),  # 18 / 10
        ("seq-mean-token-mean", {"num_seqs": 4}, 1.625),  # 6.5 / 4
        ("seq-mean-token-sum", {"num_seqs": 4}, 4.5),  # 18 / 4
        ("seq-mean-token-sum-norm", {"num_seqs": 4}, 1.5),  # 18 / (4 * 3)
    ],
)
def test_agg_loss_hand_cases(mode: str, kwargs: dict, expected: float) -> None:
    assert agg_loss(LOSS, MASK, mode, **kwargs).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    "mode, expected",
    [
        # (2, 3): row 0 has tokens 1 and 3 (sum 4, 2 tokens); row 1 is fully masked.
        ("token-mean", 2.0),  # 4 / 2
        ("seq-mean-token-mean", 2.0),  # (4 / 2) / 1
        ("seq-mean-token-sum", 4.0),  # 4 / 1
        ("seq-mean-token-sum-norm", 4.0 / 3.0),  # 4 / (1 * 3)
    ],
)
def test_agg_loss_small_case(mode: str, expected: float) -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert agg_loss(loss, mask, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_all_masked_is_zero(mode: str) -> None:
    out = agg_loss(LOSS, torch.zeros(3, 3), mode)
    assert out.item() == 0.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batches_sum_to_the_full_batch(mode: str) -> None:
    gen = torch.Generator().manual_seed(7)
    batch, length = 7, 6
    base = -torch.rand(batch, length, generator=gen) * 2
    old = base + torch.randn(batch, length, generator=gen) * 0.3
    ref = base + torch.randn(batch, length, generator=gen) * 0.3
    advantages = torch.randn(batch, generator=gen)
    mask = (torch.rand(batch, length, generator=gen) > 0.25).float()
    mask[3] = 0.0  # a filtered sample
    kwargs = dict(clip_ratio=0.2, clip_ratio_dual=3.0, kl_coef=0.05, agg_mode=mode)

    full_lp = base.clone().requires_grad_(True)
    full, _ = policy_loss(full_lp, old, ref, advantages, mask, **kwargs)
    full.backward()

    num_tokens = float(mask.sum())
    num_seqs = float((mask.sum(-1) > 0).sum())
    micro_lp = base.clone().requires_grad_(True)
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 5), slice(5, 7)):
        part, _ = policy_loss(
            micro_lp[rows], old[rows], ref[rows], advantages[rows], mask[rows],
            num_tokens=num_tokens, num_seqs=num_seqs, norm_length=length, **kwargs,
        )
        part.backward()
        total = total + part.detach()
    assert total.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(micro_lp.grad, full_lp.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- policy loss


def test_policy_loss_adds_beta_times_kl() -> None:
    logprobs = torch.tensor([[LN2, -LN2, 0.0], [0.0, 0.0, 0.0]])
    old = logprobs.clone()
    ref = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    loss, metrics = policy_loss(logprobs, old, ref, advantages, mask, kl_coef=0.5, kl_estimator="low_var_kl")
    # pg: ratio 1 everywhere, per-token -A: (3 * -1 + 1 * 1) / 4 = -0.5
    # kl (k3): (0.1931472 + 0.3068528 + 0 + 0) / 4 = 0.125 ; loss = -0.5 + 0.5 * 0.125
    assert metrics["pg_loss"] == pytest.approx(-0.5)
    assert metrics["kl"] == pytest.approx(0.125, abs=1e-6)
    assert loss.item() == pytest.approx(-0.4375, abs=1e-6)
    assert {"clip_frac", "approx_kl", "ratio_mean"} <= metrics.keys()


def test_policy_loss_without_kl() -> None:
    logprobs = torch.zeros(1, 2)
    loss, metrics = policy_loss(logprobs, logprobs, None, torch.tensor([2.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-2.0)
    assert "kl" not in metrics
    with pytest.raises(ValueError, match="reference"):
        policy_loss(logprobs, logprobs, None, torch.tensor([2.0]), torch.ones(1, 2), kl_coef=0.1)


# ---------------------------------------------------------------- truncated importance sampling


def test_tis_weights_hand_case() -> None:
    # trainer / sampler probability ratios 1, 1.5, 3, 0.5 with cap 2 -> weights 1, 1.5, 2, 0.5;
    # only the upper side is truncated (the third token).
    sampler = torch.tensor([[-0.7, -1.2, -2.0, -0.3]])
    old = (sampler + _logs([1.0, 1.5, 3.0, 0.5])).requires_grad_(True)
    weights, truncated = tis_weights(old, sampler, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 1.5, 2.0, 0.5]]))
    assert truncated.tolist() == [[False, False, True, False]]
    assert not weights.requires_grad, "the weights are constants of the loss"


def test_tis_weight_is_one_where_the_log_probs_agree() -> None:
    logprobs = torch.tensor([[-0.1, -3.7, -12.5]])
    weights, truncated = tis_weights(logprobs, logprobs.clone(), cap=1.0)
    assert weights.tolist() == [[1.0, 1.0, 1.0]] and not truncated.any()


def test_policy_loss_with_tis_hand_case() -> None:
    # On-policy (old = logprobs): PPO ratio 1, so each token's PG term is -A * w with the TIS
    # weights w = 1.5, 2 (3 truncated at the cap), 0.5; the fourth token is masked out (its
    # ratio e^10 must count nowhere). A = 1, token-mean: -(1.5 + 2 + 0.5) / 3 = -4/3.
    # KL (k1, d = 0.3 on each token) is not weighted: 0.3; loss = -4/3 + 0.5 * 0.3.
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -1.0]], requires_grad=True)
    old = logprobs.detach()
    sampler = (old - torch.log(torch.tensor([[1.5, 3.0, 0.5, math.exp(10.0)]]))).requires_grad_(True)
    ref = old - 0.3
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, metrics = policy_loss(
        logprobs, old, ref, torch.tensor([1.0]), mask, kl_coef=0.5, kl_estimator="k1", sampler_logprobs=sampler, tis_cap=2.0
    )
    assert metrics["pg_loss"] == pytest.approx(-4.0 / 3.0, abs=1e-6)
    assert metrics["kl"] == pytest.approx(0.3, abs=1e-6)
    assert loss.item() == pytest.approx(-4.0 / 3.0 + 0.15, abs=1e-6)
    assert metrics["tis_weight_mean"] == pytest.approx(4.0 / 3.0, abs=1e-6)
    assert metrics["tis_clip_frac"] == pytest.approx(1.0 / 3.0)
    loss.backward()
    # d/dlogp: -A * w / 3 from the PG term (ratio 1) + 0.5 / 3 from k1; nothing reaches the sampler.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.5 + 0.5 / 3, -2.0 / 3 + 0.5 / 3, -0.5 / 3 + 0.5 / 3, 0.0]]))
    assert sampler.grad is None


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_policy_loss_without_tis_cap_is_the_unweighted_loss(mode: str) -> None:
    """tis_cap=None ignores the sampler's log-probs; a cap with agreeing log-probs changes nothing."""
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(3, 5, generator=g) * 3
    sampler = old + 0.5 * torch.randn(3, 5, generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.3).float()
    advantages = torch.tensor([1.0, -0.5, 2.0])

    def run(**tis):
        logprobs = (old + 0.1 * torch.randn(3, 5, generator=torch.Generator().manual_seed(4))).requires_grad_(True)
        loss, metrics = policy_loss(logprobs, old, None, advantages, mask, clip_ratio_dual=3.0, agg_mode=mode, **tis)
        loss.backward()
        return loss, logprobs.grad, metrics

    plain, plain_grad, plain_metrics = run()
    off, off_grad, off_metrics = run(sampler_logprobs=sampler, tis_cap=None)
    assert off.item() == plain.item() and torch.equal(off_grad, plain_grad)
    assert "tis_weight_mean" not in off_metrics and "tis_weight_mean" not in plain_metrics
    agreeing, agreeing_grad, metrics = run(sampler_logprobs=old.clone(), tis_cap=2.0)
    assert agreeing.item() == pytest.approx(plain.item(), abs=1e-7)
    torch.testing.assert_close(agreeing_grad, plain_grad)
    assert metrics["tis_weight_mean"] == pytest.approx(1.0) and metrics["tis_clip_frac"] == 0.0
    weighted, _, _ = run(sampler_logprobs=sampler, tis_cap=2.0)
    assert weighted.item() != pytest.approx(plain.item()), "real mismatch must change the loss"
    with pytest.raises(ValueError, match="sampler"):
        policy_loss(old, old, None, advantages, mask, tis_cap=2.0)
