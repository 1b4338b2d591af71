"""Algorithm presets as data, and reward sources by name.

M-GRPO, SRT and ground-truth GRPO run on one code path. A preset is only a set of overrides of
`AlgoConfig` fields; the trainer never branches on the preset's name.

- ``mgrpo``: pseudo-label reward from the pooled vote of policy and momentum samples, momentum
  samples N = G // 4 (the paper's setting; `num_momentum_rollouts=None` means G // 4), IQR entropy
  filter with k = 0.75, m = 0.99.
- ``srt``: plain majority vote over the policy's own samples (Self-Rewarding Training):
  no momentum samples and no filter.
- ``gt_grpo``: reward from the dataset label, the supervised upper bound. No momentum, no filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mgrpo.algos.rewards import ground_truth_rewards, pseudo_label_rewards


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
}

REWARD_SOURCES: dict[str, Callable[..., Any]] = {
    "pseudo": pseudo_label_rewards,
    "ground_truth": ground_truth_rewards,
}
