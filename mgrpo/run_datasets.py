"""The data a run saw, as MLflow dataset inputs (the runs table's Datasets column).

One record per data set, logged once per run by rank 0 (`Tracker.log_inputs`, which skips a
record the run already has, so a resumed run adds none):

- the training pool (context `training`), the selection set (`selection`: what
  `collapse/selection_accuracy`, the collapse monitor and the objective read) and each reported
  benchmark (`benchmark`);
- name: where it came from (the file's name, the hub dataset, `arithmetic`); a selection set
  held out of the training source is `<name>:heldout`; a benchmark is its own name;
- digest: a hash of the problems exactly as the run uses them (uid, rendered prompt, gold
  answer), so two runs with the same digest saw the same prompts;
- source: in MLflow's source formats: `local` (`{"uri": path}`), `hugging_face` (hub name and
  split) or `code` (the synthetic task's settings);
- profile: JSON counts. Training and selection: `problems` (after the length filter and, for
  the selection set, the `trainer.eval_size` cap), `labelled`, and `dropped_for_length` (prompts
  over `rollout.max_prompt_tokens`); a benchmark: `problems` evaluated of `source_problems`.

Records are plain dicts, so an unsent one is kept in the checkpoint like any other record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from mgrpo.tasks.base import Problem

if TYPE_CHECKING:
    from mgrpo.config import DataConfig
    from mgrpo.tasks.benchmarks import Benchmark
    from mgrpo.tasks.prompts import PreparedTask

CONTEXTS = ("training", "selection", "benchmark")
"""Values of the input tag `mlflow.data.context`."""
DIGEST_LENGTH = 8
"""Hex digits of a digest (MLflow's datasets use 8)."""


def digest(problems: Sequence[Problem]) -> str:
    """SHA-256 over the problems' (uid, prompt, answer), in order, cut to `DIGEST_LENGTH`."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.uid, p.prompt, p.answer]).encode())
    return h.hexdigest()[:DIGEST_LENGTH]


def _source(path: str, split: Optional[str]) -> tuple[str, tuple[str, str]]:
    """(name, (source type, source JSON)) of a local file or directory (named by its file name),
    else of a hub dataset (named by its hub name); ':split' is added for a Hugging Face split."""
    local = Path(path).expanduser()
    suffix = f":{split}" if split else ""
    if local.exists():
        # MLflow's own local source (LocalArtifactDatasetSource) is built at run time; its form is {"uri": ...}.
        return local.name + suffix, ("local", json.dumps({"uri": str(local.resolve())}))
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    return path + suffix, ("hugging_face", HuggingFaceDatasetSource(path, split=split).to_json())


def record(name: str, context: str, problems: Sequence[Problem], source: tuple[str, str], **counts: int) -> dict[str, Any]:
    """One dataset input as a plain dict (see the module docstring)."""
    if context not in CONTEXTS:
        raise ValueError(f"dataset context {context!r}: expected one of {', '.join(CONTEXTS)}")
    return {
        "name": name,
        "digest": digest(problems),
        "source_type": source[0],
        "source": source[1],
        "profile": json.dumps({"problems": len(problems), **counts}),
        "context": context,
    }


def _labelled(problems: Sequence[Problem]) -> int:
    return sum(p.answer is not None for p in problems)


def task_datasets(data: DataConfig, prepared: PreparedTask, selection: Sequence[Problem]) -> list[dict[str, Any]]:
    """Records of the training pool and the selection set of task `data.task` (`selection`: the
    part of `prepared.data.heldout` that is evaluated)."""
    train = prepared.data.train
    if data.task == "arithmetic":
        from mlflow.data.code_dataset_source import CodeDatasetSource

        settings = {"task": "arithmetic", "num_operands": data.num_operands, "num_digits": data.num_digits, "seed": data.seed}
        name, source = "arithmetic", ("code", CodeDatasetSource(settings).to_json())
    else:
        name, source = _source(data.train_path, data.split if data.task == "hf" else None)
    eval_name, eval_source = f"{name}:heldout", source
    if data.task != "arithmetic" and data.eval_path:
        eval_name, eval_source = _source(data.eval_path, data.eval_split if data.task == "hf" else None)
    return [
        record(name, "training", train, source, labelled=_labelled(train), dropped_for_length=prepared.dropped_train),
        record(eval_name, "selection", selection, eval_source, labelled=_labelled(selection), dropped_for_length=prepared.dropped_selection),
    ]


def benchmark_dataset(benchmark: Benchmark) -> dict[str, Any]:
    """The record of one reported benchmark (`Benchmark.source` is a path or 'hub:<dataset>:<split>')."""
    if benchmark.source.startswith("hub:"):
        _, dataset, split = benchmark.source.split(":", 2)
        _, source = _source(dataset, split)
    else:
        _, source = _source(benchmark.source, None)
    return record(benchmark.name, "benchmark", benchmark.problems, source, source_problems=benchmark.size)


def run_datasets(
    data: DataConfig, prepared: PreparedTask, selection: Sequence[Problem], benchmarks: Sequence[Benchmark]
) -> list[dict[str, Any]]:
    """Every dataset input of one run: training pool, selection set, then each benchmark."""
    return [*task_datasets(data, prepared, selection), *map(benchmark_dataset, benchmarks)]
