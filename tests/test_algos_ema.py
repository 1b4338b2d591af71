"""The momentum EMA update (mgrpo.algos.ema): theta_k <- m * theta_k + (1 - m) * theta_q."""

from __future__ import annotations

import copy

import pytest
import torch

from mgrpo.algos.ema import ema_update_


class Local:
    """Stands in for a DTensor shard: exposes its rank-local storage through `to_local()`."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._local = tensor

    def to_local(self) -> torch.Tensor:
        return self._local


def test_hand_case_m_is_the_weight_on_the_old_momentum() -> None:
    k = torch.tensor([0.0, 2.0, -1.0])
    q = torch.tensor([1.0, 0.0, 1.0])
    ema_update_([("w", k)], [("w", q)], m=0.99)
    # k <- 0.99 k + 0.01 q: [0.01, 1.98, -0.98] (m = 0.99 keeps the old momentum, not q)
    torch.testing.assert_close(k, torch.tensor([0.01, 1.98, -0.98]), rtol=0, atol=1e-7)
    assert q.tolist() == [1.0, 0.0, 1.0]  # the policy is untouched


def test_m_zero_copies_the_policy() -> None:
    k, q = torch.zeros(3), torch.tensor([1.5, -2.0, 3.25])
    ema_update_([("w", k)], [("w", q)], m=0.0)
    assert k.tolist() == [1.5, -2.0, 3.25]


def test_param_distance_metric() -> None:
    k, q = torch.zeros(2), torch.tensor([3.0, 4.0])
    metrics = ema_update_([("w", k)], [("w", q)], m=0.5)
    # k <- [1.5, 2.0]; distance ||k - q|| = ||[-1.5, -2]|| = 2.5
    assert k.tolist() == [1.5, 2.0]
    assert metrics["ema_param_distance"] == pytest.approx(2.5)


def test_several_parameters_by_name_not_order() -> None:
    momentum = [("a", torch.zeros(2)), ("b", torch.zeros(1, 2))]
    policy = [("b", torch.tensor([[10.0, 20.0]])), ("a", torch.tensor([1.0, 2.0]))]
    ema_update_(momentum, policy, m=0.9)
    torch.testing.assert_close(momentum[0][1], torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(momentum[1][1], torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize("m", [1.0, 1.5, -0.01])
def test_m_out_of_range_raises(m: float) -> None:
    with pytest.raises(ValueError, match="momentum m"):
        ema_update_([("w", torch.zeros(1))], [("w", torch.zeros(1))], m=m)


def test_name_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"missing \['v'\], unexpected \['w'\]"):
        ema_update_([("w", torch.zeros(1))], [("v", torch.zeros(1))], m=0.99)
    with pytest.raises(ValueError, match="differ"):
        ema_update_([("w", torch.zeros(1))], [("w", torch.zeros(1)), ("extra", torch.zeros(1))], m=0.99)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"parameter w: momentum shape \(2,\) != policy \(3,\)"):
        ema_update_([("w", torch.zeros(2))], [("w", torch.zeros(3))], m=0.99)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_non_float32_momentum_raises(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="float32"):
        ema_update_([("w", torch.zeros(2, dtype=dtype))], [("w", torch.zeros(2))], m=0.99)


def test_bfloat16_policy_params_work() -> None:
    k = torch.ones(3)
    q = torch.full((3,), 1.0 + 2**-7, dtype=torch.bfloat16)  # exactly representable in bf16
    ema_update_([("w", k)], [("w", q)], m=0.99)
    assert k.dtype == torch.float32
    # 1 + 0.01 * 2^-7 = 1.000078125
    torch.testing.assert_close(k, torch.full((3,), 1.000078125), rtol=0, atol=1e-7)


def test_bfloat16_ema_would_lose_the_update_ours_keeps() -> None:
    q = torch.tensor([1.0 + 2**-7], dtype=torch.bfloat16)  # the policy moved by one bf16 ulp
    ours = torch.tensor([1.0])  # float32 momentum
    naive = torch.tensor([1.0], dtype=torch.bfloat16)  # the same update kept in bf16
    for _ in range(100):
        ema_update_([("w", ours)], [("w", q)], m=0.99)
        naive.lerp_(q, 0.01)
    # Each step adds 0.01 * (q - k) < 2^-8 = half a bf16 ulp at 1.0: the bf16 EMA rounds it away.
    assert naive.item() == 1.0
    # float32: k_100 = q - (q - 1) * 0.99^100 = 1.0078125 - 0.0078125 * 0.3660323 = 1.0049529
    assert ours.item() == pytest.approx(1.0049529, abs=1e-6)


def test_works_on_to_local_tensors() -> None:
    k_local = torch.zeros(2, 2)
    q_local = torch.ones(2, 2, dtype=torch.bfloat16)
    metrics = ema_update_([("w", Local(k_local))], [("w", Local(q_local))], m=0.75)
    # the shard itself is updated in place: 0.75 * 0 + 0.25 * 1
    assert k_local.tolist() == [[0.25, 0.25], [0.25, 0.25]]
    assert metrics["ema_param_distance"] == pytest.approx(1.5)  # sqrt(4 * 0.75^2)
    with pytest.raises(ValueError, match="shape"):
        ema_update_([("w", Local(torch.zeros(2)))], [("w", Local(torch.zeros(3)))], m=0.5)


def test_with_modules_named_parameters() -> None:
    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2).to(torch.bfloat16)
    momentum = copy.deepcopy(policy).float()
    before = {n: p.detach().clone() for n, p in momentum.named_parameters()}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    ema_update_(momentum.named_parameters(), policy.named_parameters(), m=0.9)
    for name, p in momentum.named_parameters():
        assert p.requires_grad  # still a parameter, updated in place without autograd
        expected = 0.9 * before[name] + 0.1 * dict(policy.named_parameters())[name].float()
        torch.testing.assert_close(p.detach(), expected)
