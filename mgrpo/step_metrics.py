"""The per-step signals of DESIGN.md section 4, as one rank's (value, weight) pairs.

Each rank computes its metrics over its own prompts; `Ranks.reduce_metrics` then combines them:
weighted metrics as count-weighted means, summed ones as sums (the update's loss terms are
already divided by global counts), maxed ones as maxima. Gold answers are read here only, for
the diagnostics collapse/true_accuracy and collapse/label_accuracy. Metric names:
`mgrpo.metric_names`.

Label-free health signals (`LABEL_FREE_METRICS`) read only what a run without labels has: the
samples, their answers, votes and entropies. `LABEL_METRICS` read the hidden gold answers. The
early-warning detectors of `mgrpo_analysis.detectors` are built on the first kind only.

Besides the per-rank metrics, two signals need every rank's prompts and are computed on rank 0
from a gather (`PseudoLabelMemory`): the pseudo-label's stability on prompts seen again in a
later epoch (`train/label_flip_frac`, keyed by `Problem.uid`, kept in the checkpoint) and the
share of the step's prompts whose pseudo-label is the step's most common one
(`train/label_mode_frac`: a collapse onto one constant answer).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mgrpo import metric_names as names
from mgrpo.algos.answers import normalize_answer
from mgrpo.algos.voting import VoteResult, majority_vote
from mgrpo.rollout.base import Rollouts
from mgrpo.tasks import Problem


LABEL_METRICS = (names.TRUE_ACCURACY, names.LABEL_ACCURACY)
"""Per-step diagnostics that read the hidden gold answers (never an input to a label-free run's
update, monitor or checkpoint choice)."""

LABEL_FREE_METRICS = (
    names.PSEUDO_REWARD,
    names.VOTE_SHARE,
    names.NUM_ANSWER_CLASSES,
    names.UNLABELED_FRAC,
    names.NO_ANSWER_FRAC,
    names.ZERO_STD_FRAC,
    names.FILTERED_FRAC,
    names.ENTROPY,
    names.ENTROPY_MOMENTUM,
    names.RESPONSE_LENGTH,
    names.KL,
    names.EMA_PARAM_DISTANCE,
    names.POLICY_MOMENTUM_DISAGREEMENT,
    names.MOMENTUM_AGREEMENT,
    names.LABEL_FLIP_FRAC,
    names.LABEL_MODE_FRAC,
    names.ANSWER_LOG_MAGNITUDE,
    names.SELF_CERTAINTY,
)
"""Per-step health signals that a run without labels has: computed from samples, answers,
votes, entropies and weights only."""

UPDATE_METRICS = {
    "loss": names.LOSS,
    "pg_loss": names.PG_LOSS,
    "clip_frac": names.CLIP_FRAC,
    "kl": names.KL,
    "trained_samples": names.TRAINED_SAMPLES,
}
"""Key in `update_phase`'s result -> metric (summed over ranks)."""
TIS_METRICS = {"tis_weight_mean": names.TIS_WEIGHT_MEAN, "tis_clip_frac": names.TIS_CLIP_FRAC}
"""The same, for the keys only a step with algo.tis_cap has."""


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
        names.REWARD: float(rewards.float().mean()),
        names.PSEUDO_REWARD: float(np.mean(vote.agrees[:n_policy])),
        names.ENTROPY: float(policy_entropy.mean()),
        names.NO_ANSWER_FRAC: float(np.mean([a is None for a in policy_answers])),
        names.RESPONSE_LENGTH: float(policy_ro.response_lengths.float().mean()),
        names.ADVANTAGE_ABS_MEAN: float(advantages.abs().mean()),
    }
    m.weighted.update({k: (v, n_policy) for k, v in per_sample.items()})
    per_prompt = {
        names.VOTE_SHARE: float(np.mean([v.vote_share for v in group_votes])),
        names.NUM_ANSWER_CLASSES: float(np.mean([v.num_classes for v in group_votes])),
        names.UNLABELED_FRAC: 1.0 - len(labeled) / n_prompts,
    }
    m.weighted.update({k: (v, n_prompts) for k, v in per_prompt.items()})
    magnitudes = [v for v in (answer_log_magnitude(a) for a in policy_answers) if v is not None]
    m.weighted[names.ANSWER_LOG_MAGNITUDE] = (float(np.mean(magnitudes)) if magnitudes else 0.0, float(len(magnitudes)))
    m.weighted[names.FILTERED_FRAC] = (float(1.0 - keep.float().mean()), len(keep))
    m.weighted[names.ZERO_STD_FRAC] = (adv_metrics["zero_std_frac"], groups_with_members)

    gold_rows = [(a, problems[g].answer) for a, g in zip(policy_answers, policy_ro.group_ids.tolist()) if problems[g].answer is not None]
    if gold_rows:
        m.weighted[names.TRUE_ACCURACY] = (float(np.mean([a is not None and equivalent(gold, a) for a, gold in gold_rows])), len(gold_rows))
    else:
        m.weighted[names.TRUE_ACCURACY] = (0.0, 0.0)
    checkable = [g for g in labeled if problems[g].answer is not None]
    m.weighted[names.LABEL_ACCURACY] = (
        (float(np.mean([equivalent(problems[g].answer, group_votes[g].label) for g in checkable])), len(checkable))
        if checkable
        else (0.0, 0.0)
    )
    for key, name in UPDATE_METRICS.items():
        m.summed[name] = update[key]
    for key, name in TIS_METRICS.items():  # with algo.tis_cap, on a step that trained
        if key in update:
            m.summed[name] = update[key]
    m.maxed[names.GRAD_NORM] = update["grad_norm"]
    return m


_FRACTION = re.compile(r"^(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")


def answer_log_magnitude(answer: Optional[str]) -> Optional[float]:
    """sign(x) * log10(1 + |x|) of a numeric answer (a decimal number, "a/b" or a plain
    \\frac{a}{b}; thousands separators ignored), None for any other answer.

    `train/answer_log_magnitude` is its mean over the policy's numeric answers. Prompts are
    drawn i.i.d. from a fixed pool, so without labels the expected value of any statistic of
    the answers' marginal distribution is constant unless the policy changes: a sustained
    drift is a policy shifting its answers systematically (in the collapse lab, SRT's answers
    drift downwards by a ten at a time). The log keeps one huge answer from dominating.
    """
    if answer is None:
        return None
    text = normalize_answer(answer).replace(",", "").replace("{,}", "")
    value: Optional[float] = None
    match = _FRACTION.match(text)
    try:
        if match:
            value = (-1.0 if match.group(1) else 1.0) * float(match.group(2)) / float(match.group(3))
        elif "/" in text and text.count("/") == 1:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    return math.copysign(math.log10(1.0 + abs(value)), value)


def same_answers(pairs: Sequence[tuple[str, str]], equivalent: Callable[[str, str], bool]) -> list[bool]:
    """Whether each pair of answers is one equivalence class: identical normalised strings
    without asking `equivalent`, the rest in one `equivalent.many` batch when it has one."""
    out = [normalize_answer(a) == normalize_answer(b) for a, b in pairs]
    ask = [i for i, same in enumerate(out) if not same]
    if ask:
        many = getattr(equivalent, "many", None)
        asked = [pairs[i] for i in ask]
        verdicts = list(many(asked)) if callable(many) else [equivalent(a, b) for a, b in asked]
        for i, verdict in zip(ask, verdicts):
            out[i] = bool(verdict)
    return out


def role_signals(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    num_policy: int,
    vote: VoteResult,
    equivalent: Callable[[str, str], bool],
) -> dict[str, tuple[float, float]]:
    """M-GRPO's label-free policy-vs-momentum signals of one rank, as (mean, weight) pairs.

    - `train/policy_momentum_disagreement`: over prompts where both roles cast votes, the
      fraction whose policy-only majority answer (a vote over the policy's own samples, no
      filter) is not the momentum-only majority answer (over the momentum's own samples). The
      momentum model is the slow EMA anchor, so a policy drifting away from it shows here
      first. With few momentum samples (N = 2 in the lab) each momentum majority is noisy, so
      the level is high; its trend is what matters.
    - `train/momentum_agreement`: the fraction of momentum samples whose answer is in the pooled
      pseudo-label's class (the pseudo-reward the momentum samples would get).

    Args:
        answers: (B_pooled,) extracted answers, policy samples first.
        group_ids: (B_pooled,) prompt index of each sample.
        num_policy: how many of the pooled samples are the policy's.
        vote: the step's pooled vote (its `agrees` flags).
    Returns {} when there are no momentum samples.
    """
    if len(answers) <= num_policy:
        return {}
    offset = max(group_ids) + 1
    role_groups = [g if i < num_policy else g + offset for i, g in enumerate(group_ids)]
    roles = majority_vote(answers, role_groups, equivalent)
    prompts = sorted(set(group_ids))
    pairs = [
        (roles.groups[g].label, roles.groups[g + offset].label)
        for g in prompts
        if g in roles.groups and g + offset in roles.groups
        and roles.groups[g].label is not None and roles.groups[g + offset].label is not None
    ]
    same = same_answers(pairs, equivalent)
    momentum_agrees = vote.agrees[num_policy:]
    return {
        names.POLICY_MOMENTUM_DISAGREEMENT: (1.0 - float(np.mean(same)) if same else 0.0, float(len(same))),
        names.MOMENTUM_AGREEMENT: (float(np.mean(momentum_agrees)), float(len(momentum_agrees))),
    }


def step_pseudo_labels(problems: Sequence[Problem], vote: VoteResult) -> list[tuple[str, Optional[str]]]:
    """(uid, pseudo-label or None) of each of this rank's prompts, for `PseudoLabelMemory`."""
    return [(p.uid, vote.groups[g].label if g in vote.groups else None) for g, p in enumerate(problems)]


class PseudoLabelMemory:
    """The last pseudo-label of every prompt seen so far (uid -> label), held on rank 0 and kept
    in the checkpoint, so a prompt seen again in a later epoch, on any rank, is compared with
    its previous label. Label-free: it stores pseudo-labels, never gold answers."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def state_dict(self) -> dict[str, dict[str, str]]:
        return {"pseudo_labels": dict(self.labels)}

    def load_state_dict(self, state: dict) -> None:
        self.labels = dict(state.get("pseudo_labels", {}))

    def observe(self, labelled: Sequence[tuple[str, Optional[str]]], equivalent: Callable[[str, str], bool]) -> dict[str, float]:
        """Record one step's (uid, pseudo-label) pairs, gathered from every rank; return its
        rank-0 metrics.

        - `train/label_flip_frac`: of the labelled prompts seen before with a label, the
          fraction whose label left the previous label's equivalence class (absent when no
          prompt was seen again, as in the first epoch).
        - `train/label_mode_frac`: the share of this step's labelled prompts whose label is the
          step's most common one (1/B for distinct answers; near 1 when the model answers every
          prompt alike).
        An unlabeled prompt (no votes, or below algo.min_vote_share) keeps its previous label.
        """
        now = [(uid, label) for uid, label in labelled if label is not None]
        seen = [(self.labels[uid], label) for uid, label in now if uid in self.labels]
        out: dict[str, float] = {}
        if seen:
            out[names.LABEL_FLIP_FRAC] = 1.0 - float(np.mean(same_answers(seen, equivalent)))
        if now:
            mode = majority_vote([label for _, label in now], [0] * len(now), equivalent)
            out[names.LABEL_MODE_FRAC] = mode.groups[0].vote_share
        self.labels.update(now)
        return out
