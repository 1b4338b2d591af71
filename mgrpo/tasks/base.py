"""What every task produces: problems with a prompt and a hidden gold answer, split into a
training pool and a fixed held-out set, plus the seeded helpers the tasks share.

All randomness here comes from `random.Random` seeded with a string (hashed with SHA-512 by
Python), so every split is identical across processes, machines and `PYTHONHASHSEED`s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

T = TypeVar("T")


class DataError(ValueError):
    """The task data cannot be built. The message names the file (or dataset), the line or row,
    and the config key to change."""


@dataclass(frozen=True)
class Problem:
    """One prompt of a task."""

    uid: str
    """Stable id, unique within a task (e.g. 'arith:63+46+94', 'math500.jsonl:12')."""
    prompt: str
    """The user message (`data.prompt_template` applied) as a task loader returns it; after
    `mgrpo.tasks.prompts.prepare_task`, the exact text given to the model (chat template applied
    when the tokenizer has one)."""
    answer: str | None
    """Hidden gold answer. Read only by diagnostics and by ground-truth rewards, never by a
    label-free update. None when the data has no label for this problem."""


@dataclass
class TaskData:
    """A task's problems: the pool training prompts are drawn from, and the held-out set."""

    train: list[Problem]
    heldout: list[Problem]


def format_prompt(template: str, problem: str) -> str:
    """`template` with '{problem}' replaced by `problem`.

    A plain replacement, not `str.format`: other braces in the template stay as written, so a
    template that asks for a `\\boxed{}` answer needs no escaping.
    """
    return template.replace("{problem}", problem)


def seeded_rng(seed: int, purpose: str) -> random.Random:
    """An RNG for one purpose (e.g. 'heldout'), independent of the other purposes' streams."""
    return random.Random(f"mgrpo:{purpose}:{seed}")


def seeded_subset(items: Sequence[T], k: int, seed: int, purpose: str) -> list[T]:
    """`k` items chosen at random (all of them when k >= len), kept in their original order."""
    if k >= len(items):
        return list(items)
    chosen = sorted(seeded_rng(seed, purpose).sample(range(len(items)), k))
    return [items[i] for i in chosen]
