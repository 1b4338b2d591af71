"""The vote check: is the vote's pseudo-label better than the policy's own greedy answer?

Label-free RL rewards agreement with the vote. It can only raise accuracy while the vote's label
is right more often than what the policy already answers; when the label starts worse than the
greedy answer, every label-free method learns wrong answers, and the momentum anchor can at best
slow the fall. So at step 0 and at every evaluation the trainer measures that condition on the
first `trainer.vote_check_size` problems of the selection set:

- the training pool drawn exactly as a training step draws it: M policy + N momentum samples at
  rollout.temperature, the IQR filter over their trajectory entropies (algo.iqr_k), the majority
  vote (algo.min_vote_share); with their own seeds, so training's random streams are untouched;
- the policy's greedy answer (temperature 0): the evaluation's own answers when it just decoded
  the selection set greedily (`InTrainingEvaluator.greedy_answers`), else a greedy decode here.

Logged against the gold answers (`mgrpo_analysis.vote_check.VOTE_CHECK_METRICS`, where the report
reads them):
- eval/vote_check/label_accuracy: the pseudo-label is equivalent to the gold answer (a prompt left
  unlabelled counts as wrong);
- eval/vote_check/greedy_accuracy: the greedy answer is;
- eval/vote_check/label_minus_greedy: the first minus the second, on the same problems;
- eval/vote_check/labelled_frac: prompts that received a pseudo-label.

A labelled diagnostic only: no training phase, the collapse monitor (`MONITORED`), checkpoint
selection or a sweep's objective reads it (a test pins that). Ranks split the problems as the
evaluation does; rank 0 scores them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from mgrpo.algos.answers import extract_answer
from mgrpo.evaluation import eval_seeds
from mgrpo.phases import filter_phase, sampler_entropy, score_phase, vote_phase
from mgrpo.rollout import encode_prompts
from mgrpo_analysis.vote_check import VOTE_CHECK_METRICS

if TYPE_CHECKING:
    from mgrpo.trainer import Trainer



def vote_check(trainer: Trainer, step: int) -> dict[str, float]:
    """The vote check's metrics on rank 0 ({} on other ranks, and when vote_check_size is 0)."""
    cfg = trainer.cfg
    size = min(cfg.trainer.vote_check_size, len(trainer.evaluator.selection))
    if size <= 0:
        return {}
    problems = trainer.evaluator.selection[:size]
    evaluated = trainer.evaluator.greedy_answers(step)
    share = np.array_split(np.arange(size), trainer.ranks.world_size)[trainer.ranks.rank].tolist()
    mine = _check_share(trainer, step, [problems[i] for i in share], share, decode_greedy=evaluated is None) if share else []
    gathered = trainer.ranks.all_gather_objects(mine)
    if not trainer.ranks.is_main:
        return {}
    rows = [row for part in gathered for row in part]  # problem order: the shares are contiguous
    if evaluated is not None:
        rows = [(gold, label, evaluated[i]) for i, (gold, label, _) in enumerate(rows)]
    equivalent = trainer.equivalent
    label_right = [label is not None and equivalent(gold, label) for gold, label, _ in rows]
    greedy_right = [greedy is not None and equivalent(gold, greedy) for gold, _, greedy in rows]
    label_accuracy, greedy_accuracy = float(np.mean(label_right)), float(np.mean(greedy_right))
    return dict(
        zip(
            VOTE_CHECK_METRICS,
            (label_accuracy, greedy_accuracy, label_accuracy - greedy_accuracy, float(np.mean([r[1] is not None for r in rows]))),
        )
    )


def _check_share(
    trainer: Trainer, step: int, problems: list, indices: list[int], decode_greedy: bool
) -> list[tuple[str, Optional[str], Optional[str]]]:
    """(gold, pseudo-label, greedy answer) of this rank's share of the check's problems; the
    greedy answer is None unless `decode_greedy`."""
    cfg, a, r = trainer.cfg, trainer.cfg.algo, trainer.cfg.rollout
    prompts = encode_prompts(trainer.tokenizer, [p.prompt for p in problems], r.max_prompt_tokens)
    seed = cfg.trainer.seed
    pools = [("policy", trainer.num_policy)]
    if trainer.momentum is not None:
        pools.append(("momentum", trainer.num_momentum))
    texts, groups, entropies = [], [], []
    for role, n in pools:
        rollouts = trainer.sample(role, prompts, n, r.temperature, eval_seeds(seed, step, indices, f"vote_check/{role}"))
        entropy = sampler_entropy(rollouts, a.entropy_estimator)
        if entropy is None:
            model = trainer.policy if role == "policy" else trainer.momentum
            entropy = score_phase(model, rollouts, r.temperature, r.score_chunk_size, a.entropy_estimator, trainer.context).entropy
        texts += rollouts.texts
        groups.append(rollouts.group_ids)
        entropies.append(entropy)
    pooled_groups = torch.cat(groups)
    keep = filter_phase(torch.cat(entropies), pooled_groups, a.iqr_k)
    _, vote = vote_phase(texts, pooled_groups, keep, trainer.equivalent, a.min_vote_share)
    greedy_answers: list[Optional[str]] = [None] * len(problems)
    if decode_greedy:
        greedy = trainer.sample("policy", prompts, 1, 0.0, eval_seeds(seed, step, indices, "vote_check/greedy"))
        greedy_answers = [extract_answer(t) for t in greedy.texts]
    labels = [vote.groups[i].label if i in vote.groups else None for i in range(len(problems))]
    return [(p.answer, labels[i], greedy_answers[i]) for i, p in enumerate(problems)]
