"""Per-sample quantities a step needs that the sampler may already have recorded: the momentum
samples' trajectory entropy and the policy samples' self-certainty. The HF engine records them
while it samples (`mgrpo.rollout.hf`); where it did not (vLLM), a scoring pass computes them.
Each pass also measures the sampler-vs-trainer log-prob drift, reduced over all ranks: a metric
(stale weights are caught by the hand-off itself, `mgrpo.rollout.handoff`; a gap here is the
kernels' numerics, which algo.tis_cap corrects for).

Beside the trainer's loop, not inside its phases: these functions decide whether a pass runs.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from mgrpo import metric_names as names
from mgrpo.config import RolloutConfig
from mgrpo.models.scorer import ResponseScorer
from mgrpo.parallel import Ranks
from mgrpo.phases import sampler_entropy, sampler_self_certainty, score_phase
from mgrpo.rollout.base import Rollouts
from mgrpo.step_metrics import logprob_drift

Drifts = dict[str, tuple[float, float]]
"""metric name -> (drift over all ranks, token count)."""


def global_drift(ranks: Ranks, rollouts: Rollouts, trainer_logprobs: torch.Tensor) -> tuple[float, float]:
    """(mean |sampler - trainer| log-prob per counted token over all ranks, token count).

    `trainer_logprobs`: (B, T) the trainer's log-probs of `rollouts`' tokens.
    """
    drift, tokens = logprob_drift(rollouts, trainer_logprobs)
    total, count = ranks.all_reduce([drift * tokens, tokens])
    return (total / count if count else 0.0), count


def policy_drift_hook(ranks: Ranks, rollouts: Rollouts, drifts: Drifts) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """An `update_phase` hook (`before_first_step`) that measures the policy's drift on the rows
    the update's first forward ran: (B, T) log-probs and a (B,) mask of the rows."""

    def measure(logprobs: torch.Tensor, rows: torch.Tensor) -> None:
        rows = torch.nonzero(rows).squeeze(-1)
        drifts[names.ROLLOUT_LOGPROB_DRIFT] = global_drift(ranks, rollouts.select(rows), logprobs[rows])

    return measure


def policy_self_certainty(
    policy: ResponseScorer, rollouts: Rollouts, rollout: RolloutConfig, context, vocab_size: int
) -> Optional[torch.Tensor]:
    """(B,) the policy samples' self-certainty at the sampling temperature, over the tokenizer's
    `vocab_size` ids (the LM head may be padded past them): the sampler's, else a scoring pass."""
    certainty = sampler_self_certainty(rollouts)
    if certainty is None:
        scores = score_phase(policy, rollouts, rollout.temperature, rollout.score_chunk_size, "sampled", context, self_certainty_vocab=vocab_size)
        certainty = scores.self_certainty
    return certainty


def momentum_entropy(
    momentum: ResponseScorer,
    rollouts: Rollouts,
    estimator: str,
    rollout: RolloutConfig,
    context,
    ranks: Ranks,
    drifts: Drifts,
    probe_every: Optional[int],
) -> torch.Tensor:
    """(B,) trajectory entropy of the momentum samples: the sampler's (no pass), else a scoring
    pass, which also measures the momentum's drift. `probe_every`: without a pass, measure the
    drift on every `probe_every`-th sample (one per prompt) all the same; None: not at all (an
    engine that shares the trainer's weights has none to measure)."""
    entropy = sampler_entropy(rollouts, estimator)
    key = names.ROLLOUT_LOGPROB_DRIFT_MOMENTUM
    if entropy is None:
        scores = score_phase(momentum, rollouts, rollout.temperature, rollout.score_chunk_size, estimator, context)
        drifts[key] = global_drift(ranks, rollouts, scores.logprobs)
        return scores.entropy
    if probe_every is not None and rollouts.sampler_logprobs is not None:
        probe = rollouts.select(torch.arange(0, len(rollouts), probe_every))
        scores = score_phase(momentum, probe, rollout.temperature, rollout.score_chunk_size, "sampled", context)
        drifts[key] = global_drift(ranks, probe, scores.logprobs)
    return entropy
