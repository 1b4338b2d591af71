"""Held-out evaluation: accuracy against hidden gold answers (mean over n samples, and maj@n)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from mgrpo.algos.answers import extract_answer
from mgrpo.algos.voting import majority_vote
from mgrpo.rollout.base import RolloutEngine


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict[str, object]]
    """One dict per problem's first sample: prompt, response, answer, gold, correct."""


def score_answers(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    gold: Sequence[Optional[str]],
    equivalent: Callable[[str, str], bool],
) -> dict[str, float]:
    """Accuracy (mean over all samples) and maj@n (the vote of each problem's samples).

    Args:
        answers: (B,) extracted answers, n per problem.
        group_ids: (B,) problem index per sample.
        gold: per problem, indexed by group id.
    """
    correct = [a is not None and gold[g] is not None and equivalent(gold[g], a) for a, g in zip(answers, group_ids)]
    vote = majority_vote(answers, group_ids, equivalent)
    maj = [
        v.label is not None and gold[g] is not None and equivalent(gold[g], v.label) for g, v in sorted(vote.groups.items())
    ]
    return {
        "accuracy": sum(correct) / max(len(correct), 1),
        "maj_accuracy": sum(maj) / max(len(maj), 1),
        "no_answer_frac": sum(a is None for a in answers) / max(len(answers), 1),
    }


def evaluate(
    engine: RolloutEngine,
    prompts: Sequence[str],
    gold: Sequence[Optional[str]],
    equivalent: Callable[[str, str], bool],
    temperature: float,
    samples_per_prompt: int,
    max_new_tokens: int,
    seed: int,
    keep_samples: int = 16,
) -> EvalResult:
    """Generate on the held-out prompts and score against their gold answers."""
    rollouts = engine.generate(list(prompts), samples_per_prompt, temperature, max_new_tokens, seed)
    answers = [extract_answer(t) for t in rollouts.texts]
    groups = rollouts.group_ids.tolist()
    metrics = score_answers(answers, groups, gold, equivalent)
    metrics["response_length"] = float(rollouts.response_lengths.float().mean())
    samples = []
    for i in range(0, len(answers), samples_per_prompt)[:keep_samples]:
        g = groups[i]
        samples.append(
            {
                "prompt": prompts[g],
                "response": rollouts.texts[i],
                "answer": answers[i],
                "gold": gold[g],
                "correct": answers[i] is not None and gold[g] is not None and equivalent(gold[g], answers[i]),
            }
        )
    return EvalResult(metrics, samples)
