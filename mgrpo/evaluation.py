"""Held-out evaluation: accuracy against hidden gold answers (mean over n samples, and maj@n).

Sampling and scoring are split so that several ranks can each sample a share of the problems
and one of them scores the gathered answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from mgrpo.algos.answers import extract_answer
from mgrpo.algos.voting import majority_vote
from mgrpo.rollout.base import RolloutEngine


@dataclass
class EvalSamples:
    """n samples for each of a list of problems; sample j of problem i is entry i * n + j."""

    problem_indices: list[int]
    """Index of each sample's problem in the full held-out list."""
    texts: list[str]
    answers: list[Optional[str]]
    lengths: list[int]
    """Counted response tokens of each sample."""

    def extend(self, other: "EvalSamples") -> None:
        self.problem_indices += other.problem_indices
        self.texts += other.texts
        self.answers += other.answers
        self.lengths += other.lengths


def sample_answers(
    engine: RolloutEngine,
    prompts: Sequence[Sequence[int]],
    problem_indices: Sequence[int],
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    seeds: Sequence[int],
) -> EvalSamples:
    """Generate on some held-out prompts (token ids) and extract each sample's answer."""
    rollouts = engine.generate(list(prompts), samples_per_prompt, temperature, max_new_tokens, seeds)
    indices = [problem_indices[g] for g in rollouts.group_ids.tolist()]
    return EvalSamples(indices, list(rollouts.texts), [extract_answer(t) for t in rollouts.texts], rollouts.response_lengths.tolist())


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


def evaluation_report(
    samples: EvalSamples,
    prompts: Sequence[str],
    gold: Sequence[Optional[str]],
    equivalent: Callable[[str, str], bool],
    keep_samples: int = 16,
) -> tuple[dict[str, float], list[dict[str, object]]]:
    """Metrics over all samples, and the first sample of the first `keep_samples` problems
    (prompt, response, answer, gold, correct) for the completions artifact."""
    metrics = score_answers(samples.answers, samples.problem_indices, gold, equivalent)
    metrics["response_length"] = sum(samples.lengths) / max(len(samples.lengths), 1)
    kept: list[dict[str, object]] = []
    seen: set[int] = set()
    for index, text, answer in zip(samples.problem_indices, samples.texts, samples.answers):
        if index in seen or len(kept) >= keep_samples:
            continue
        seen.add(index)
        correct = answer is not None and gold[index] is not None and equivalent(gold[index], answer)
        kept.append({"prompt": prompts[index], "response": text, "answer": answer, "gold": gold[index], "correct": correct})
    return metrics, kept
