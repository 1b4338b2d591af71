"""Tasks: the problems a run trains on and evaluates on.

`load_task(cfg.data)` dispatches on `data.task` through `TASK_LOADERS`:
- ``arithmetic``: the synthetic default, sums with a worked chain (`mgrpo.tasks.arithmetic`);
- ``jsonl``: a local file of records, e.g. MATH (`mgrpo.tasks.datasets`);
- ``hf``: a Hugging Face dataset, with the same record mapping as ``jsonl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from mgrpo.tasks.arithmetic import arithmetic_solution, load_arithmetic
from mgrpo.tasks.base import DataError, Problem, TaskData
from mgrpo.tasks.datasets import load_hf, load_jsonl

if TYPE_CHECKING:
    from mgrpo.config import DataConfig

TASK_LOADERS: dict[str, Callable[["DataConfig"], TaskData]] = {
    "arithmetic": load_arithmetic,
    "jsonl": load_jsonl,
    "hf": load_hf,
}


def load_task(cfg: DataConfig) -> TaskData:
    """The training pool and held-out set of `cfg.task` (deterministic in `cfg`)."""
    if cfg.task not in TASK_LOADERS:
        raise DataError(f"data.task={cfg.task!r} is unknown; allowed values are {', '.join(TASK_LOADERS)}")
    return TASK_LOADERS[cfg.task](cfg)


__all__ = ["DataError", "Problem", "TASK_LOADERS", "TaskData", "arithmetic_solution", "load_task"]
