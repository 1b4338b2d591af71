"""Policy-gradient loss, KL penalty to the reference, and loss aggregation.

J(theta) = clipped PG objective over kept policy samples - beta * KL(pi_theta || pi_ref).
Each function takes tensors and plain values and returns (loss, metrics) or a tensor.

Truncated importance sampling (TIS, as verl's `tis_imp_ratio_cap` and TRL's
`vllm_importance_sampling_cap`): the sampler (vLLM, bf16 kernels) and the trainer assign the
same weights slightly different probabilities, so the samples come from a policy a little off
the one the loss assumes. Each token's PG term is then weighted by the detached ratio
min(pi_trainer_old / pi_sampler, cap); the KL term is not weighted (as in both peers).

Aggregation modes (over a (B, T) per-token loss and mask):
- ``token-mean``: sum over all tokens / number of tokens (DAPO's choice; the default).
- ``seq-mean-token-mean``: mean over sequences of each sequence's token mean (GRPO paper).
- ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
- ``seq-mean-token-sum-norm``: sum over all tokens / (sequences * a constant length), the
  constant normaliser of Dr. GRPO that removes the length bias.
Only sequences with at least one unmasked token count as sequences (filtered samples have an
all-zero mask). For gradient accumulation, pass the counts of the whole mini-batch as
`num_tokens` / `num_seqs` so the sum of micro-batch losses equals the mini-batch loss.
"""

from __future__ import annotations

from typing import Optional

import torch

KL_ESTIMATORS = ("k1", "k2", "low_var_kl")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def agg_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
    norm_length: Optional[float] = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    Args:
        loss_mat: (B, T) per-token loss.
        mask: (B, T) 1 on tokens that count.
        mode: one of LOSS_AGG_MODES.
        num_tokens: token count to divide by (token-mean); default this batch's.
        num_seqs: sequence count to divide by (seq-* modes); default this batch's.
        norm_length: the constant length of seq-mean-token-sum-norm; default T.
    Returns:
        () scalar.
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else torch.tensor(float(num_tokens))
        return (loss_mat * mask).sum() / denom.clamp(min=1.0)
    seq_has_tokens = mask.sum(-1) > 0
    seqs = seq_has_tokens.sum().to(loss_mat.dtype) if num_seqs is None else torch.tensor(float(num_seqs))
    seqs = seqs.clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (loss_mat * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / seqs
    if mode == "seq-mean-token-sum":
        return (loss_mat * mask).sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        length = float(loss_mat.shape[-1] if norm_length is None else norm_length)
        return (loss_mat * mask).sum() / (seqs * length)
    raise ValueError(f"unknown loss aggregation mode {mode!r}; allowed: {', '.join(LOSS_AGG_MODES)}")


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 0.2,
    clip_ratio_dual: Optional[float] = None,
    agg_mode: str = "token-mean",
    token_weights: Optional[torch.Tensor] = None,
    **agg_kwargs: Optional[float],
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, negated to be minimised.

    Per token: max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), with ratio = exp(logp - old).
    Dual clip (Ye et al., 2020): for A < 0 the loss is also capped at -A * c.

    On-policy (one epoch of one mini-batch, the default), the weights that sampled are the
    current weights, so `old_logprobs` may simply be `logprobs.detach()` from the same pass: the
    ratio is exactly 1, clipping never acts, and no separate scoring pass is needed.

    Args:
        logprobs: (B, T) current log-probs (with grad).
        old_logprobs: (B, T) log-probs of the policy that sampled (no grad).
        advantages: (B,) per-sequence advantage (broadcast over tokens) or (B, T).
        mask: (B, T) 1 on trained tokens.
        clip_ratio: eps.
        clip_ratio_dual: c > 1, or None.
        agg_mode, agg_kwargs: see `agg_loss`.
        token_weights: (B, T) constant weights of each token's clipped term (the TIS weights of
            `tis_weights`), or None for 1.
    Returns:
        loss: () scalar.
        metrics: clip_frac (share of tokens where the clipped term was taken), approx_kl
            (mean old - new log-prob), ratio_mean, all over masked tokens.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    loss_mat = torch.maximum(unclipped, clipped)
    if clip_ratio_dual is not None:
        capped = torch.minimum(loss_mat, -advantages * clip_ratio_dual)
        loss_mat = torch.where(advantages < 0, capped, loss_mat)
    if token_weights is not None:
        loss_mat = loss_mat * token_weights
    loss = agg_loss(loss_mat, mask, agg_mode, **agg_kwargs)
    with torch.no_grad():
        m = mask.float()
        tokens = m.sum().clamp(min=1.0)
        metrics = {
            "clip_frac": float(((clipped > unclipped).float() * m).sum() / tokens),
            "approx_kl": float((-log_ratio * m).sum() / tokens),
            "ratio_mean": float((ratio * m).sum() / tokens),
        }
    return loss, metrics


def tis_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance-sampling weights min(exp(old - sampler), cap), per token, detached.

    The ratio corrects the PG term for sampling from the sampler's distribution rather than the
    trainer's (see the module docstring); the cap bounds the variance that a token the sampler
    found much less likely than the trainer would otherwise add. Only the upper side is
    truncated: a weight below 1 (the sampler over-sampled the token) is kept, as in verl and TRL.

    Args:
        old_logprobs: (B, T) the trainer's log-probs of the sampled tokens under the weights that
            sampled (no grad is taken through them).
        sampler_logprobs: (B, T) the sampler's log-probs of the same tokens, at the same
            temperature.
        cap: the truncation C >= 1.
    Returns:
        weights: (B, T) float, no grad; 1 where the two log-probs agree.
        truncated: (B, T) bool, the tokens whose ratio exceeded the cap.
    """
    ratio = torch.exp((old_logprobs.detach() - sampler_logprobs.detach()).float())
    return ratio.clamp(max=cap), ratio > cap


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "low_var_kl") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    With d = logp - ref_logp:
    - ``k1``: d (unbiased, high variance, can be negative);
    - ``k2``: d^2 / 2 (biased, low variance);
    - ``low_var_kl`` (k3, Schulman 2020): exp(-d) - 1 + d, unbiased and >= 0; clamped to
      [-10, 10] as in verl, so one wild token cannot dominate (d itself is clamped to [-20, 20]
      first, also as in verl, so exp(-d) cannot overflow into a NaN gradient).

    Args:
        logprobs, ref_logprobs: (B, T).
        estimator: one of KL_ESTIMATORS.
    Returns:
        (B, T) per-token KL estimate.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "low_var_kl":
        d = d.clamp(-20.0, 20.0)  # as verl: exp(-d) must not overflow (inf * 0 grad = NaN); value unchanged
        return (torch.exp(-d) - 1.0 + d).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {', '.join(KL_ESTIMATORS)}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 0.2,
    clip_ratio_dual: Optional[float] = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "low_var_kl",
    agg_mode: str = "token-mean",
    sampler_logprobs: Optional[torch.Tensor] = None,
    tis_cap: Optional[float] = None,
    **agg_kwargs: Optional[float],
) -> tuple[torch.Tensor, dict[str, float]]:
    """-J(theta) = PPO-clip loss (each token's term weighted by TIS when `tis_cap` is set) + beta
    * KL to the reference, both aggregated the same way.

    Args:
        ref_logprobs: (B, T), or None when kl_coef == 0.
        sampler_logprobs: (B, T) the sampler's log-probs of the sampled tokens; needed when
            `tis_cap` is set.
        tis_cap: the TIS cap C (see `tis_weights`), or None for the plain loss.
        Others: see `ppo_clip_loss` and `kl_penalty`.
    Returns:
        loss: () scalar; metrics: pg_loss, kl, the PPO metrics and, with TIS, tis_weight_mean
            (mean weight) and tis_clip_frac (share of tokens truncated at the cap), over masked
            tokens.
    """
    weights = None
    tis_metrics = {}
    if tis_cap is not None:
        if sampler_logprobs is None:
            raise ValueError("tis_cap needs the sampler's log-probs")
        weights, truncated = tis_weights(old_logprobs, sampler_logprobs, tis_cap)
        m = mask.float()
        tokens = m.sum().clamp(min=1.0)
        tis_metrics = {
            "tis_weight_mean": float((weights * m).sum() / tokens),
            "tis_clip_frac": float((truncated.float() * m).sum() / tokens),
        }
    pg_loss, metrics = ppo_clip_loss(
        logprobs, old_logprobs, advantages, mask, clip_ratio, clip_ratio_dual, agg_mode, weights, **agg_kwargs
    )
    metrics.update(tis_metrics)
    loss = pg_loss
    metrics["pg_loss"] = float(pg_loss.detach())
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        kl = agg_loss(kl_penalty(logprobs, ref_logprobs, kl_estimator), mask, agg_mode, **agg_kwargs)
        loss = loss + kl_coef * kl
        metrics["kl"] = float(kl.detach())
    return loss, metrics
