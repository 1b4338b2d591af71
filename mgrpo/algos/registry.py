"""Algorithm presets as data, and reward sources by name.

M-GRPO, SRT, TTRL, Intuitor and ground-truth GRPO run on one code path. A preset is only a set of
overrides of `AlgoConfig` fields; the trainer never branches on the preset's name.

- ``mgrpo``: pseudo-label reward from the pooled vote of policy and momentum samples, momentum
  samples N = G // 4 (the paper's setting; `num_momentum_rollouts=None` means G // 4), IQR entropy
  filter with k = 0.75, m = 0.99.
- ``srt``: plain majority vote over the policy's own samples (Self-Rewarding Training):
  no momentum samples and no filter.
- ``gt_grpo``: reward from the dataset label, the supervised upper bound. No momentum, no filter.
- ``ttrl``: Test-Time RL (Zuo et al., 2025): majority vote over all G policy samples, but only
  the first half of each prompt's samples are trained on (`trained_fraction=0.5`: TTRL votes
  over 64 and trains on 32, the first 32 of each prompt as its `select_top_k_per_prompt` does).
  No momentum, no filter.
- ``intuitor``: Intuitor (Zhao et al., 2025): the reward is each sample's self-certainty under
  the current policy (`mgrpo.algos.self_certainty`), GRPO-normalised per prompt. No vote in the
  reward (the vote still runs, for the pseudo-reward and label-accuracy diagnostics), no
  momentum, no filter.

Ablations of M-GRPO are settings, not presets: ``algo=mgrpo algo.iqr_k=null`` (momentum without
the filter) and ``algo=srt algo.iqr_k=0.75`` (the filter without the momentum);
`conf/experiment/collapse_lab_ablation.yaml` sweeps the 2x2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mgrpo.algos.rewards import ground_truth_rewards, pseudo_label_rewards, self_certainty_rewards


@dataclass(frozen=True)
class AlgorithmPreset:
    """Overrides of `AlgoConfig` fields that define one algorithm."""

    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


ALGORITHM_PRESETS: dict[str, AlgorithmPreset] = {
    "mgrpo": AlgorithmPreset(
        "M-GRPO: momentum-anchored pseudo-labels with an IQR entropy filter",
        {"reward": "pseudo", "num_momentum_rollouts": None, "iqr_k": 0.75, "momentum": 0.99},
    ),
    "srt": AlgorithmPreset(
        "SRT: majority vote over the policy's own samples",
        {"reward": "pseudo", "num_momentum_rollouts": 0, "iqr_k": None},
    ),
    "gt_grpo": AlgorithmPreset(
        "GRPO with ground-truth rewards (supervised upper bound)",
        {"reward": "ground_truth", "num_momentum_rollouts": 0, "iqr_k": None},
    ),
    "ttrl": AlgorithmPreset(
        "TTRL: majority vote over all policy samples, training on half of them",
        {"reward": "pseudo", "num_momentum_rollouts": 0, "iqr_k": None, "trained_fraction": 0.5},
    ),
    "intuitor": AlgorithmPreset(
        "Intuitor: the policy's self-certainty as the reward",
        {"reward": "self_certainty", "num_momentum_rollouts": 0, "iqr_k": None},
    ),
}

REWARD_SOURCES: dict[str, Callable[..., Any]] = {
    "pseudo": pseudo_label_rewards,
    "ground_truth": ground_truth_rewards,
    "self_certainty": self_certainty_rewards,
}

NEEDS_SELF_CERTAINTY = frozenset({"self_certainty"})
"""Reward sources that read each policy sample's self-certainty (the trainer computes it only
for these, from the sampler's record or a scoring pass)."""
