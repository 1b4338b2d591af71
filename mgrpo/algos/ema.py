"""The momentum (EMA) update: theta_k <- m * theta_k + (1 - m) * theta_q.

`m` is the weight on the *old momentum* parameters (m = 0.99 in the paper).

The momentum parameters are kept in float32 whatever the policy's dtype: with lr 1e-6 and
m = 0.99, one EMA increment is about 1e-8 relative, far below bfloat16's 2^-8 resolution, so a
bfloat16 EMA rounds every update away (a test shows it).

The update is an in-place `lerp_` on whatever tensors it is given. Under FSDP each rank passes its
local shards (`DTensor.to_local()`), so the EMA needs no communication; only handing full weights
to a rollout engine gathers them. Departure from the authors' code: it all-gathers two full fp32
models on every rank at every step.
"""

from __future__ import annotations

from typing import Iterable

import torch


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-local storage of a (possibly distributed) tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


@torch.no_grad()
def ema_update_(
    momentum_params: Iterable[tuple[str, torch.Tensor]],
    policy_params: Iterable[tuple[str, torch.Tensor]],
    m: float,
) -> dict[str, float]:
    """In place: k <- m * k + (1 - m) * q, for each pair of same-named parameters.

    Args:
        momentum_params: (name, tensor) pairs of the momentum model; float32, updated in place.
        policy_params: (name, tensor) pairs of the policy; any float dtype, same names and shapes.
        m: momentum in [0, 1).
    Returns:
        metrics: {"ema_param_distance": L2 distance between the two parameter sets after the step}.
    Raises:
        ValueError: names or shapes differ, or a momentum tensor is not float32; checked for every
            parameter before any is updated.
    """
    if not 0.0 <= m < 1.0:
        raise ValueError(f"momentum m must be in [0, 1), got {m}")
    momentum = dict(momentum_params)
    policy = dict(policy_params)
    if momentum.keys() != policy.keys():
        missing = sorted(policy.keys() - momentum.keys())[:5]
        extra = sorted(momentum.keys() - policy.keys())[:5]
        raise ValueError(f"momentum and policy parameters differ: missing {missing}, unexpected {extra}")
    pairs = []
    for name, k in momentum.items():
        k_local, q_local = _local(k), _local(policy[name])
        if k_local.shape != q_local.shape:
            raise ValueError(f"parameter {name}: momentum shape {tuple(k_local.shape)} != policy {tuple(q_local.shape)}")
        if k_local.dtype != torch.float32:
            raise ValueError(f"parameter {name}: the momentum copy must be float32, got {k_local.dtype}")
        pairs.append((k_local, q_local))
    squared_distance = 0.0
    for k_local, q_local in pairs:
        k_local.lerp_(q_local.float(), 1.0 - m)
        squared_distance += float((k_local - q_local.float()).square().sum())
    return {"ema_param_distance": squared_distance**0.5}
