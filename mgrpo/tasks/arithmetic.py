"""The synthetic default task: sums of `num_operands` numbers of `num_digits` digits each.

Prompt ``63+46+94=``; target response ``63+46=109,109+94=203####203`` (the trainer appends EOS);
gold answer ``203``. The worked chain gives a small char-level model intermediate steps to get
right or wrong, so its samples disagree in interesting ways, and ``####`` marks the final answer
for `mgrpo.algos.answers.extract_answer`.

Held-out and training problems are disjoint by construction, whatever their sizes: a seeded hash
of each operand tuple puts 1/`HELDOUT_REGION` of all problems in a held-out region. The held-out
set is a seeded stream of distinct held-out-region problems, the training pool one of
training-region problems. Each set is a prefix of its stream, so a smaller `heldout_size` gives a
subset of a larger one, and neither set depends on the other's size. Problems are operand tuples:
``46+63+94`` is a different problem from ``63+46+94`` (its chain differs), so a permutation of a
held-out problem may be in the training pool.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mgrpo.tasks.base import DataError, Problem, TaskData, format_prompt

if TYPE_CHECKING:
    from mgrpo.config import DataConfig

DEFAULT_TRAIN_POOL = 50_000
"""Training problems when `data.max_train_problems` is null."""
HELDOUT_REGION = 8
"""One problem in this many belongs to the held-out region."""
ENUMERATE_LIMIT = 200_000
"""Spaces up to this many distinct problems are enumerated and shuffled; larger ones are drawn
by rejection (either way each set is a prefix of a seeded stream)."""
_CHUNK = 4096


def arithmetic_text(operands: Sequence[int]) -> str:
    """The problem text, e.g. (63, 46, 94) -> '63+46+94='."""
    return "+".join(map(str, operands)) + "="


def arithmetic_solution(operands: Sequence[int]) -> str:
    """The worked response, e.g. (63, 46, 94) -> '63+46=109,109+94=203####203' (no EOS)."""
    if len(operands) < 2:
        raise ValueError(f"a sum needs at least 2 operands, got {list(operands)}")
    steps, total = [], operands[0]
    for x in operands[1:]:
        steps.append(f"{total}+{x}={total + x}")
        total += x
    return ",".join(steps) + f"####{total}"


def max_response_chars(num_operands: int, num_digits: int) -> int:
    """Length of the longest solution (all digits 9): a bound on response tokens, before EOS,
    for a character tokenizer."""
    return len(arithmetic_solution([10**num_digits - 1] * num_operands))


def arithmetic_problem(operands: Sequence[int], prompt_template: str | None = "{problem}") -> Problem:
    """The `Problem` of one operand tuple; the answer is the sum as a decimal string. A template
    of None is the task's default, '{problem}' (`data.prompt_template: null`)."""
    text = arithmetic_text(operands)
    template = "{problem}" if prompt_template is None else prompt_template
    return Problem(uid=f"arith:{text[:-1]}", prompt=format_prompt(template, text), answer=str(sum(operands)))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def heldout_region_mask(operands: np.ndarray, seed: int) -> np.ndarray:
    """(rows,) bool: which rows of a (rows, num_operands) array are in the held-out region."""
    h = np.full(operands.shape[0], np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    with np.errstate(over="ignore"):
        for column in operands.T:
            h = _mix(h ^ _mix(column.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
    return h % np.uint64(HELDOUT_REGION) == 0


def in_heldout_region(operands: Sequence[int], seed: int) -> bool:
    """Whether a problem is reserved for held-out sets (about 1 in `HELDOUT_REGION`)."""
    return bool(heldout_region_mask(np.asarray([operands], dtype=np.int64), seed)[0])


def _num_problems(num_operands: int, num_digits: int) -> int:
    return (9 * 10 ** (num_digits - 1)) ** num_operands


def _stream_rng(seed: int, purpose: str) -> np.random.Generator:
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, tag])


def arithmetic_stream(
    num_operands: int, num_digits: int, seed: int, heldout: bool, count: int
) -> list[tuple[int, ...]]:
    """The first `count` distinct problems of one region's seeded stream (fewer only when a
    small, enumerated space runs out). Large spaces are drawn in fixed chunks of `_CHUNK` rows,
    so the stream, and hence every prefix, does not depend on `count`."""
    purpose = f"arithmetic-{'heldout' if heldout else 'train'}:{num_operands}x{num_digits}"
    rng = _stream_rng(seed, purpose)
    lo, hi = 10 ** (num_digits - 1), 10**num_digits - 1
    total = _num_problems(num_operands, num_digits)
    if total <= ENUMERATE_LIMIT:
        grid = np.stack(np.meshgrid(*[np.arange(lo, hi + 1)] * num_operands, indexing="ij"), -1)
        grid = grid.reshape(-1, num_operands)
        region = grid[heldout_region_mask(grid, seed) == heldout]
        return [tuple(map(int, row)) for row in region[rng.permutation(len(region))[:count]]]
    if count > total // 4:
        key = "data.heldout_size" if heldout else "data.max_train_problems"
        raise DataError(
            f"{key}={count} is more than a quarter of the {total} distinct problems with "
            f"num_operands={num_operands}, num_digits={num_digits}; lower {key}"
        )
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < count:
        chunk = rng.integers(lo, hi + 1, size=(_CHUNK, num_operands))
        for row in chunk[heldout_region_mask(chunk, seed) == heldout].tolist():
            ops = tuple(row)
            if ops not in seen:
                seen.add(ops)
                out.append(ops)
                if len(out) == count:
                    break
    return out


def arithmetic_operands(cfg: DataConfig) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(training pool, held-out set) as operand tuples, deterministic in the config.

    The pool has `data.max_train_problems` problems (null: `DEFAULT_TRAIN_POOL`), or all of the
    training region when it is smaller; the held-out set has exactly `data.heldout_size`.
    """
    n, d, seed = cfg.num_operands, cfg.num_digits, cfg.seed
    heldout = arithmetic_stream(n, d, seed, True, cfg.heldout_size)
    if len(heldout) < cfg.heldout_size:
        raise DataError(
            f"data.heldout_size={cfg.heldout_size} is more than the {len(heldout)} held-out problems "
            f"available with data.num_operands={n}, data.num_digits={d} (1 in {HELDOUT_REGION} of the "
            f"{_num_problems(n, d)} distinct problems is held out); lower data.heldout_size or raise "
            f"data.num_digits"
        )
    pool_size = cfg.max_train_problems if cfg.max_train_problems is not None else DEFAULT_TRAIN_POOL
    if pool_size < 1:
        raise DataError(f"data.max_train_problems={pool_size} must be >= 1 (or null for {DEFAULT_TRAIN_POOL})")
    train = arithmetic_stream(n, d, seed, False, pool_size)
    if not train:
        raise DataError(f"no training problems with data.num_operands={n}, data.num_digits={d}; raise data.num_digits")
    return train, heldout


def load_arithmetic(cfg: DataConfig) -> TaskData:
    """The arithmetic task as problems (see `arithmetic_operands` for the sizes)."""
    train, heldout = arithmetic_operands(cfg)
    return TaskData(
        train=[arithmetic_problem(ops, cfg.resolved_prompt_template()) for ops in train],
        heldout=[arithmetic_problem(ops, cfg.resolved_prompt_template()) for ops in heldout],
    )
