"""Evaluation inside training, on every rank: the selection set and the reported benchmarks.

Each set is split into contiguous shares, one per rank; every rank samples its share from the
policy engine (no collective while generating, so shares may differ in size), the samples are
gathered, and rank 0 scores them, writes the completions and logs the artifact. The selection
set's accuracy (`collapse/selection_accuracy`) is what the monitor and the objective read; a
benchmark's metrics (`eval/<benchmark>/...`) are reported only, with the seeds `mgrpo-eval` uses
on the same step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mgrpo.algos.answers import extract_answer
from mgrpo.evaluation import EvalSamples, eval_seeds, evaluation_report, sample_answers, score_benchmark
from mgrpo.metric_names import SELECTION_MAJ_ACCURACY, SELECTION_METRICS
from mgrpo.parallel import Ranks
from mgrpo.rollout import encode_prompts
from mgrpo.rollout.base import RolloutEngine
from mgrpo.tasks import Problem
from mgrpo.tasks.benchmarks import Benchmark, samples_for


class InTrainingEvaluator:
    """`evaluate(step, engine)` -> rank 0's metrics ({} on other ranks)."""

    def __init__(
        self,
        cfg,
        ranks: Ranks,
        tokenizer,
        equivalent: Callable[[str, str], bool],
        output_dir: Path,
        tracker,
        selection: Sequence[Problem],
        benchmarks: Sequence[Benchmark],
    ) -> None:
        self.cfg, self.ranks, self.tokenizer, self.equivalent = cfg, ranks, tokenizer, equivalent
        self.output_dir, self.tracker = output_dir, tracker
        self.selection = list(selection[: cfg.trainer.eval_size] if cfg.trainer.eval_size else selection)
        self.benchmarks = list(benchmarks)
        self._greedy_step: Optional[int] = None
        self._greedy_answers: list[Optional[str]] = []

    def greedy_answers(self, step: int) -> Optional[list[Optional[str]]]:
        """The policy's greedy answer to each selection problem at `step`, when that step's
        evaluation decoded greedily one sample each (`rollout.eval_temperature` 0,
        `rollout.eval_samples` 1); None otherwise. Every rank agrees on None; only rank 0 holds
        the answers (an empty list elsewhere)."""
        return self._greedy_answers if self._greedy_step == step else None

    def evaluate(self, step: int, engine: RolloutEngine) -> dict[str, float]:
        """Selection-set metrics, then each benchmark's."""
        out = self.selection_metrics(step, engine)
        for benchmark in self.benchmarks:
            out.update(self.benchmark_metrics(benchmark, step, engine))
        return out if self.ranks.is_main else {}

    def selection_metrics(self, step: int, engine: RolloutEngine) -> dict[str, float]:
        """collapse/selection_accuracy (mean over rollout.eval_samples) and eval/selection/*
        (maj_accuracy, ...) on the selection set."""
        r = self.cfg.rollout
        samples = self._sample(engine, self.selection, r.eval_samples, eval_seeds(self.cfg.trainer.seed, step, range(len(self.selection))), extract_answer)
        greedy = r.eval_temperature == 0 and r.eval_samples == 1
        self._greedy_step = step if greedy else None
        self._greedy_answers = [] if samples is None or not greedy else _by_problem(samples, len(self.selection))
        if samples is None:
            return {}
        problems = self.selection
        metrics, kept = evaluation_report(samples, [p.prompt for p in problems], [p.answer for p in problems], self.equivalent, self.cfg.trainer.log_completions)
        self._write(f"step_{step:06d}.json", json.dumps(kept, indent=1))
        out = {SELECTION_METRICS[k]: v for k, v in metrics.items()}
        if r.eval_samples == 1:
            out.pop(SELECTION_MAJ_ACCURACY)
        return out

    def benchmark_metrics(self, benchmark: Benchmark, step: int, engine: RolloutEngine) -> dict[str, float]:
        """eval/<benchmark>/mean_at_<n>, _se, maj_at_<n>, pass_at_<k>, ... (see `mgrpo.evaluation`).
        Never enters the history the monitor and the objective read."""
        n = samples_for(benchmark, self.cfg.trainer.eval_benchmark_samples, self.cfg.rollout.eval_temperature)
        extract, equivalent = benchmark.grader(self.equivalent)
        seeds = eval_seeds(self.cfg.trainer.seed, step, range(len(benchmark.problems)), benchmark.name)
        samples = self._sample(engine, benchmark.problems, n, seeds, extract)
        if samples is None:
            return {}
        result = score_benchmark(benchmark.name, samples, benchmark.problems, n, equivalent, self.cfg.trainer.log_completions)
        self._write(f"step_{step:06d}_{benchmark.name}.jsonl", "".join(json.dumps(c) + "\n" for c in result.completions))
        return result.tracking_metrics()

    def _sample(
        self, engine: RolloutEngine, problems: Sequence[Problem], n: int, seeds: Sequence[int], extract: Callable[[str], Optional[str]]
    ) -> Optional[EvalSamples]:
        """This rank samples its contiguous share; rank 0 gets everyone's samples, others None."""
        r = self.cfg.rollout
        share = np.array_split(np.arange(len(problems)), self.ranks.world_size)[self.ranks.rank].tolist()
        mine = EvalSamples([], [], [], [])
        if share:
            prompts = encode_prompts(self.tokenizer, [problems[i].prompt for i in share], r.max_prompt_tokens)
            mine = sample_answers(engine, prompts, share, n, r.eval_temperature, r.max_new_tokens, [seeds[i] for i in share], extract)
        gathered = self.ranks.all_gather_objects(mine)
        if not self.ranks.is_main:
            return None
        samples = EvalSamples([], [], [], [])
        for part in gathered:
            samples.extend(part)
        return samples

    def _write(self, name: str, text: str) -> None:
        path = self.output_dir / "completions" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.tracker.log_artifact(path, "completions")


def _by_problem(samples: EvalSamples, count: int) -> list[Optional[str]]:
    """The one sample's answer of each of `count` problems, in problem order."""
    answers: list[Optional[str]] = [None] * count
    for index, answer in zip(samples.problem_indices, samples.answers):
        answers[index] = answer
    return answers
