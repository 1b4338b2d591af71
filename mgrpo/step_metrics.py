"""The per-step signals of DESIGN.md section 4, as one rank's (value, weight) pairs.

Each rank computes its metrics over its own prompts; `Ranks.reduce_metrics` then combines them:
weighted metrics as count-weighted means, summed ones as sums (the update's loss terms are
already divided by global counts), maxed ones as maxima. Gold answers are read here only, for
the diagnostics train/true_accuracy and train/label_accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mgrpo.algos.voting import VoteResult
from mgrpo.rollout.base import Rollouts
from mgrpo.tasks import Problem


@dataclass
class LocalMetrics:
    """One rank's share of a step's metrics (see `Ranks.reduce_metrics`)."""

    weighted: dict[str, tuple[float, float]] = field(default_factory=dict)
    summed: dict[str, float] = field(default_factory=dict)
    maxed: dict[str, float] = field(default_factory=dict)


def logprob_drift(rollouts: Rollouts, trainer_logprobs: torch.Tensor) -> tuple[float, float]:
    """(mean |sampler - trainer| log-prob per counted response token, token count)."""
    if rollouts.sampler_logprobs is None:
        return 0.0, 0.0
    mask = rollouts.response_mask
    tokens = float(mask.sum())
    drift = float(((rollouts.sampler_logprobs - trainer_logprobs).abs() * mask).sum()) / max(tokens, 1.0)
    return drift, tokens


def step_metrics(
    problems: Sequence[Problem],
    policy_ro: Rollouts,
    policy_entropy: torch.Tensor,
    answers: Sequence[Optional[str]],
    vote: VoteResult,
    keep: torch.Tensor,
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    members: torch.Tensor,
    adv_metrics: dict[str, float],
    update: dict[str, float],
    equivalent: Callable[[str, str], bool],
) -> LocalMetrics:
    """This rank's metrics for one step.

    Args:
        problems: this rank's prompts, indexed by the rollouts' group ids.
        answers: (B_pooled,) extracted answers of the pooled samples, policy samples first.
        keep: (B_pooled,) the filter's keep mask; rewards, advantages, members: (B_policy,).
    """
    n_policy = len(policy_ro)
    n_prompts = len(problems)
    policy_answers = answers[:n_policy]
    group_votes = [vote.groups[g] for g in range(n_prompts)]
    labeled = [g for g, v in enumerate(group_votes) if v.label is not None]
    groups_with_members = len(set(policy_ro.group_ids[members].tolist()))
    m = LocalMetrics()
    per_sample = {
        "train/reward": float(rewards.float().mean()),
        "train/pseudo_reward": float(np.mean(vote.agrees[:n_policy])),
        "train/entropy": float(policy_entropy.mean()),
        "train/no_answer_frac": float(np.mean([a is None for a in policy_answers])),
        "train/response_length": float(policy_ro.response_lengths.float().mean()),
        "train/advantage_abs_mean": float(advantages.abs().mean()),
    }
    m.weighted.update({k: (v, n_policy) for k, v in per_sample.items()})
    per_prompt = {
        "train/vote_share": float(np.mean([v.vote_share for v in group_votes])),
        "train/num_answer_classes": float(np.mean([v.num_classes for v in group_votes])),
        "train/unlabeled_frac": 1.0 - len(labeled) / n_prompts,
    }
    m.weighted.update({k: (v, n_prompts) for k, v in per_prompt.items()})
    m.weighted["train/filtered_frac"] = (float(1.0 - keep.float().mean()), len(keep))
    m.weighted["train/zero_std_frac"] = (adv_metrics["zero_std_frac"], groups_with_members)

    gold_rows = [(a, problems[g].answer) for a, g in zip(policy_answers, policy_ro.group_ids.tolist()) if problems[g].answer is not None]
    if gold_rows:
        m.weighted["train/true_accuracy"] = (float(np.mean([a is not None and equivalent(gold, a) for a, gold in gold_rows])), len(gold_rows))
    else:
        m.weighted["train/true_accuracy"] = (0.0, 0.0)
    checkable = [g for g in labeled if problems[g].answer is not None]
    m.weighted["train/label_accuracy"] = (
        (float(np.mean([equivalent(problems[g].answer, group_votes[g].label) for g in checkable])), len(checkable))
        if checkable
        else (0.0, 0.0)
    )
    for key in ("loss", "pg_loss", "clip_frac", "kl", "trained_samples"):
        m.summed[f"train/{key}"] = update[key]
    m.maxed["train/grad_norm"] = update["grad_norm"]
    return m
