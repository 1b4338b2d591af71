"""Tasks: the problems a run trains on and evaluates on.

`load_task(cfg.data)` dispatches on `data.task` through `TASK_LOADERS`:
- ``arithmetic``: the synthetic default, sums with a worked chain (`mgrpo.tasks.arithmetic`);
- ``jsonl`` / ``parquet``: local files of records, e.g. MATH (`mgrpo.tasks.datasets`);
- ``hf``: a Hugging Face dataset (hub name or local copy), with the same record mapping.

Then `prepare_task` (`mgrpo.tasks.prompts`) applies the chat template and drops over-long
prompts, once the tokenizer is known; `load_benchmark` (`mgrpo.tasks.benchmarks`) reads the
reported benchmarks, which are kept apart from the selection set (`TaskData.heldout`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mgrpo.tasks.arithmetic import arithmetic_solution, load_arithmetic
from mgrpo.tasks.base import DataError, Problem, TaskData
from mgrpo.tasks.datasets import load_files, load_hf
from mgrpo.tasks.prompts import PreparedTask, prepare_task

if TYPE_CHECKING:
    from mgrpo.config import DataConfig

TASK_LOADERS: dict[str, Callable[["DataConfig"], TaskData]] = {
    "arithmetic": load_arithmetic,
    "jsonl": load_files,
    "parquet": load_files,
    "hf": load_hf,
}


def load_task(cfg: DataConfig) -> TaskData:
    """The training pool and held-out set of `cfg.task` (deterministic in `cfg`)."""
    if cfg.task not in TASK_LOADERS:
        raise DataError(f"data.task={cfg.task!r} is unknown; allowed values are {', '.join(TASK_LOADERS)}")
    return TASK_LOADERS[cfg.task](cfg)


__all__ = [
    "DataError",
    "PreparedTask",
    "Problem",
    "TASK_LOADERS",
    "TaskData",
    "arithmetic_solution",
    "load_task",
    "prepare_task",
]
