"""Evaluation against hidden gold answers, inside training and in `mgrpo-eval`.

Two uses, one code path:
- the *selection set* (`score_answers`, `evaluation_report`): `collapse/selection_accuracy`
  (mean over the n samples), read by the collapse monitor and the objective, and
  `eval/selection/maj_accuracy`, ... (`mgrpo.metric_names`);
- the *benchmarks* (`score_benchmark`): per benchmark mean@n with its standard error, maj@n and
  the unbiased pass@k (`mgrpo.algos.metrics`), logged as `eval/<benchmark>/...` and never read by
  anything that chooses a run or a step.

Sampling and scoring are split so that several ranks can each sample a share of the problems
and one of them scores the gathered answers. Each problem's samples are seeded from (run seed,
step, problem index, and for a benchmark its name): `mgrpo-eval` on the checkpoint of step s
draws the same samples as training's evaluation at step s did, with the same engine and dtype.

MLflow forbids '@' in metric names, so `mean@8` of AIME 2024 is logged as
`eval/aime24/mean_at_8` (and `mean_at_8_se`, `maj_at_8`, `pass_at_1` ...); tables, JSON and CSV
keep the '@'.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from mgrpo.algos.answers import extract_answer
from mgrpo.algos.metrics import benchmark_metrics
from mgrpo.algos.voting import majority_vote
from mgrpo.metric_names import benchmark_metric
from mgrpo.rollout.base import RolloutEngine, sample_seed
from mgrpo.tasks.benchmarks import Benchmark, load_benchmark
from mgrpo.tasks.prompts import render_benchmark_prompts

if TYPE_CHECKING:
    from mgrpo.config import DataConfig


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
    extract: Callable[[str], Optional[str]] = extract_answer,
) -> EvalSamples:
    """Generate on some held-out prompts (token ids) and extract each sample's answer."""
    rollouts = engine.generate(list(prompts), samples_per_prompt, temperature, max_new_tokens, seeds)
    indices = [problem_indices[g] for g in rollouts.group_ids.tolist()]
    return EvalSamples(indices, list(rollouts.texts), [extract(t) for t in rollouts.texts], rollouts.response_lengths.tolist())


def eval_seeds(seed: int, step: int, indices: Sequence[int], benchmark: Optional[str] = None) -> list[int]:
    """The sampling seed of each problem index: the selection set's (benchmark None) are
    `sample_seed(seed, step, 'eval', i)`; a benchmark's are offset by a hash of its name, so two
    benchmarks never share a problem's random stream."""
    offset = 0
    if benchmark is not None:
        offset = (int.from_bytes(hashlib.sha256(benchmark.encode()).digest()[:4], "little") + 1) << 32
    return [sample_seed(seed, step, "eval", offset + int(i)) for i in indices]


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


# ---- benchmarks ---------------------------------------------------------------------------------


def prepare_benchmarks(
    names: Sequence[str], data: DataConfig, tokenizer, max_prompt_tokens: int, limit: Optional[int] = None
) -> list[Benchmark]:
    """Load benchmarks by name (`mgrpo.tasks.benchmarks`), their first `limit` problems when set,
    with prompts rendered as the model sees them (`data.chat_template`). Raises DataError when a
    prompt is longer than `max_prompt_tokens`: a benchmark is never cut down by length."""
    out = []
    for name in names:
        benchmark = load_benchmark(name, data, limit)
        benchmark.problems = render_benchmark_prompts(name, benchmark.problems, tokenizer, data.chat_template, max_prompt_tokens)
        out.append(benchmark)
    return out


@dataclass
class BenchmarkResult:
    """One benchmark's evaluation."""

    name: str
    n: int
    """Samples per problem."""
    num_problems: int
    """Problems evaluated."""
    metrics: dict[str, float]
    """'mean@n', 'mean@n_se', 'maj@n', 'pass@k' for k = 1, 2, 4, ..., n, 'no_answer_frac' and
    'response_length' (mean counted response tokens)."""
    completions: list[dict[str, Any]] = field(default_factory=list)
    """Every sample: problem uid, sample index, prompt (first sample only), response, extracted
    answer, gold, correct, and whether it agrees with the problem's majority answer."""

    def tracking_metrics(self) -> dict[str, float]:
        """The metrics under MLflow-safe names: 'eval/<benchmark>/mean_at_8', ..."""
        return {benchmark_metric(self.name, key): value for key, value in self.metrics.items()}


def score_benchmark(
    name: str,
    samples: EvalSamples,
    problems: Sequence[Any],
    n: int,
    equivalent: Callable[[str, str], bool],
    keep_completions: Optional[int] = None,
) -> BenchmarkResult:
    """Score the gathered samples of one benchmark.

    Args:
        name: the benchmark's name.
        samples: n samples of each problem, in any order (`problem_indices` index `problems`).
        problems: the benchmark's problems (`uid`, `prompt`, `answer` = gold).
        n: samples per problem.
        equivalent: the benchmark's answer equivalence, called as equivalent(gold, pred).
        keep_completions: keep the completions of the first this many problems (None: all).
    """
    by_problem: dict[int, list[int]] = {}
    for row, index in enumerate(samples.problem_indices):
        by_problem.setdefault(index, []).append(row)
    short = [i for i, rows in by_problem.items() if len(rows) != n]
    if short or not by_problem:
        raise ValueError(f"benchmark {name}: every problem needs {n} samples; problems {short[:5]} have another count")
    order = sorted(by_problem)
    correct_of = [
        a is not None and problems[i].answer is not None and equivalent(problems[i].answer, a)
        for a, i in zip(samples.answers, samples.problem_indices)
    ]
    vote = majority_vote(samples.answers, samples.problem_indices, equivalent)
    majority = {i: vote.groups[i].label for i in order}
    maj_correct = [majority[i] is not None and equivalent(problems[i].answer, majority[i]) for i in order]
    metrics = benchmark_metrics([[correct_of[r] for r in by_problem[i]] for i in order], maj_correct)
    metrics["no_answer_frac"] = sum(a is None for a in samples.answers) / len(samples.answers)
    metrics["response_length"] = sum(samples.lengths) / len(samples.lengths)
    kept = set(order if keep_completions is None else order[:keep_completions])
    completions = []
    for i in order:
        if i not in kept:
            continue
        for j, row in enumerate(by_problem[i]):
            completions.append(
                {
                    "benchmark": name,
                    "uid": problems[i].uid,
                    "sample": j,
                    **({"prompt": problems[i].prompt} if j == 0 else {}),
                    "response": samples.texts[row],
                    "answer": samples.answers[row],
                    "gold": problems[i].answer,
                    "correct": correct_of[row],
                    "agrees_with_majority": vote.agrees[row],
                }
            )
    return BenchmarkResult(name, n, len(order), metrics, completions)
