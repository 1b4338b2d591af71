"""Rewards and GRPO advantages.

Reward sources share one signature, (answers, group_ids, vote, gold, equivalent, *,
self_certainty), over the pooled samples (policy first), and each reads only what it needs:
- binary rewards: r_i = 1 when sample i's answer is equivalent to the reference answer of its
  prompt, else 0; a sample with no answer, or a prompt with no reference (unlabeled by the
  vote), gets 0. The reference is the vote's pseudo-label (label-free methods) or the dataset's
  gold answer (ground-truth GRPO);
- self-certainty (Intuitor): r_i = the sample's own self-certainty under the policy that drew it
  (`mgrpo.algos.self_certainty`), a continuous value; no vote, no answer.
The label-free sources never read gold answers: that is what keeps hidden labels out of a
label-free update.

Which samples are trained: `first_per_group` marks the first k samples of each prompt, so that a
vote can run over a larger pool than the loss (TTRL: vote over 64, train on 32). Samples of a
prompt are i.i.d. draws, so the first k are as good as a random k, and deterministic.

Advantages, per prompt over the policy samples that survived the filter ("members"):
A_i = (r_i - mean r) / (std r + eps). Conventions pinned by tests:
- std is the unbiased std (divide by n - 1) by default, as torch.std computes it in verl (the
  authors' code base) and TRL, so numbers are comparable; `std_mode="population"` divides by n;
- eps = 1e-6 by default;
- a group whose member rewards are all equal (including a single member) gets advantage exactly
  0, never NaN or eps-amplified rounding noise;
- non-members (filtered out, or momentum samples) get advantage 0 and, in the loss, no gradient.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from mgrpo.algos.voting import VoteResult

Equivalence = Callable[[str, str], bool]


def binary_rewards(
    answers: Sequence[Optional[str]],
    references: Sequence[Optional[str]],
    equivalent: Equivalence,
) -> torch.Tensor:
    """r_i = 1 if answers[i] is equivalent to references[i] (reference first), else 0.

    Args:
        answers: (B,) extracted answers, None when absent.
        references: (B,) the reference answer of each sample's prompt, None when unlabeled.
    Returns:
        (B,) float32 in {0, 1}.
    """
    if len(answers) != len(references):
        raise ValueError(f"answers ({len(answers)}) and references ({len(references)}) differ in length")
    return torch.tensor(
        [float(a is not None and ref is not None and equivalent(ref, a)) for a, ref in zip(answers, references)],
        dtype=torch.float32,
    )


def pseudo_label_rewards(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    vote: VoteResult,
    gold: Sequence[Optional[str]],
    equivalent: Equivalence,
    *,
    self_certainty: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reward from the vote: agreement with the prompt's pseudo-label. `gold` is not read.

    Returns:
        (B,) float32 in {0, 1}.
    """
    del answers, group_ids, gold, equivalent, self_certainty
    return torch.tensor(vote.agrees, dtype=torch.float32)


def ground_truth_rewards(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    vote: VoteResult,
    gold: Sequence[Optional[str]],
    equivalent: Equivalence,
    *,
    self_certainty: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reward from the dataset label (the supervised reference). `gold` is per sample.

    Returns:
        (B,) float32 in {0, 1}.
    """
    del group_ids, vote, self_certainty
    return binary_rewards(answers, gold, equivalent)


def self_certainty_rewards(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    vote: VoteResult,
    gold: Sequence[Optional[str]],
    equivalent: Equivalence,
    *,
    self_certainty: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Intuitor's reward: each sample's self-certainty (mean KL(U || p) over its response tokens,
    under the policy that drew it, at the sampling temperature). Reads neither `gold`, nor the
    vote, nor the answers.

    Args:
        self_certainty: (B,) per-sample self-certainty (`trajectory_self_certainty`).
    Returns:
        (B,) float32.
    """
    del answers, vote, gold, equivalent
    if self_certainty is None:
        raise ValueError("the self-certainty reward needs each sample's self-certainty (self_certainty=...)")
    if self_certainty.shape != (len(group_ids),):
        raise ValueError(f"self_certainty has shape {tuple(self_certainty.shape)}, expected ({len(group_ids)},)")
    return self_certainty.detach().float().cpu()


def first_per_group(group_ids: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    """(B,) bool: the first `k` samples of each group, in the order they appear; all when k is None.

    Args:
        group_ids: (B,) long, any order, any ids.
    """
    if k is None:
        return torch.ones_like(group_ids, dtype=torch.bool)
    _, index = torch.unique(group_ids, return_inverse=True)
    order = torch.argsort(index, stable=True)  # each group's samples together, in their order
    counts = torch.bincount(index)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(index)
    rank[order] = torch.arange(index.numel()) - starts[index[order]]  # position within its group
    return rank < k


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    members: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    std_mode: str = "unbiased",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Group-normalised advantages, vectorised with scatter operations.

    Args:
        rewards: (B,) float rewards.
        group_ids: (B,) long, prompt id per sample (any order, any non-negative ids).
        members: (B,) bool, samples that form the groups and receive advantages; default all.
        eps: added to the std.
        std_mode: "population" (n) or "unbiased" (n - 1).
    Returns:
        advantages: (B,) float32, 0 for non-members and for constant groups.
        metrics: {"zero_std_frac": share of groups with >= 1 member whose rewards are constant}.
    """
    if std_mode not in ("population", "unbiased"):
        raise ValueError(f"std_mode must be 'population' or 'unbiased', got {std_mode!r}")
    if members is None:
        members = torch.ones_like(rewards, dtype=torch.bool)
    _, group_index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group_index.max().item()) + 1 if group_index.numel() else 0
    r = rewards.float()
    weight = members.float()

    def group_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_groups, device=r.device).index_add_(0, group_index, values * weight)

    count = group_sum(torch.ones_like(r))
    mean = group_sum(r) / count.clamp(min=1)
    centred = r - mean[group_index]
    dof = count if std_mode == "population" else count - 1
    var = group_sum(centred**2) / dof.clamp(min=1)
    std = var.sqrt()

    big = torch.finfo(torch.float32).max
    group_max = torch.full((num_groups,), -big, device=r.device).scatter_reduce(0, group_index, torch.where(members, r, -big), "amax")
    group_min = torch.full((num_groups,), big, device=r.device).scatter_reduce(0, group_index, torch.where(members, r, big), "amin")
    constant = (group_max <= group_min) | (dof < 1)

    advantages = centred / (std[group_index] + eps)
    advantages = torch.where(members & ~constant[group_index], advantages, torch.zeros_like(advantages))
    populated = count > 0
    zero_std_frac = float((constant & populated).sum() / populated.sum().clamp(min=1))
    return advantages, {"zero_std_frac": zero_std_frac}


def grpo_advantages_reference(
    rewards: Sequence[float],
    group_ids: Sequence[int],
    members: Optional[Sequence[bool]] = None,
    eps: float = 1e-6,
    std_mode: str = "unbiased",
) -> list[float]:
    """The same as `grpo_advantages`, written as a plain loop; tests check the two agree."""
    members = [True] * len(rewards) if members is None else list(members)
    advantages = [0.0] * len(rewards)
    for group in set(group_ids):
        idx = [i for i, g in enumerate(group_ids) if g == group and members[i]]
        values = [float(rewards[i]) for i in idx]
        n = len(values)
        if n == 0 or max(values) == min(values) or (std_mode == "unbiased" and n < 2):
            continue
        mean = sum(values) / n
        dof = n if std_mode == "population" else n - 1
        std = (sum((v - mean) ** 2 for v in values) / dof) ** 0.5
        for i, v in zip(idx, values):
            advantages[i] = (v - mean) / (std + eps)
    return advantages
