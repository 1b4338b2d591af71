"""Problems from records: local JSONL files (task=jsonl) and Hugging Face datasets (task=hf).

Both go through `problems_from_records`, one mapping from a record to a `Problem`:
- the problem text is `record[data.problem_key]`, formatted with `data.prompt_template`;
- the gold answer is `record[data.answer_key]` when present and not null, otherwise the final
  answer of `record[data.solution_key]` (its last ``\\boxed{}``, or ``####`` answer as in
  GSM8K), otherwise None (an unlabeled problem, which label-free training can still use).
  Integral floats become integers ('27.0' -> '27', as AMC files store them).

Held-out set: the file (or dataset) `data.eval_path` when set, capped at `data.heldout_size`
problems; otherwise a seeded split of the training records of `data.heldout_size` problems, at
most `HELDOUT_MAX_FRACTION` of them. Caps pick a seeded subset and keep the records' order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from mgrpo.algos.answers import extract_answer
from mgrpo.tasks.base import DataError, Problem, TaskData, format_prompt, seeded_rng, seeded_subset

if TYPE_CHECKING:
    from mgrpo.config import DataConfig

HELDOUT_MAX_FRACTION = 0.2
"""Without `data.eval_path`, at most this fraction of the training records is held out."""

Record = tuple[str, Mapping[str, Any]]
"""(location for error messages and uids, e.g. 'line 3' or 'row 2'; the record itself)."""


def _answer_text(value: Any, where: str, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {key!r} is a {type(value).__name__}, expected a string or number")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def gold_answer(record: Mapping[str, Any], cfg: DataConfig, where: str) -> str | None:
    """The record's gold answer (see the module docstring for the fallback order)."""
    if cfg.answer_key is not None and record.get(cfg.answer_key) is not None:
        return _answer_text(record[cfg.answer_key], where, cfg.answer_key)
    solution = record.get(cfg.solution_key)
    if isinstance(solution, str):
        return extract_answer(solution)
    return None


def problems_from_records(records: Iterable[Record], source: str, cfg: DataConfig) -> list[Problem]:
    """Map records to problems; uid is '<source>:<location number>'.

    Raises DataError naming the source, the record's location and `data.problem_key` when the
    problem text is missing or not a non-empty string.
    """
    problems = []
    for location, record in records:
        where = f"{source} {location}"
        if not isinstance(record, Mapping):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        text = record.get(cfg.problem_key)
        if text is None:
            raise DataError(
                f"{where}: no field {cfg.problem_key!r} (fields: {', '.join(map(str, record)) or 'none'}); "
                f"set data.problem_key to the field that holds the problem text"
            )
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {cfg.problem_key!r} (data.problem_key) must be a non-empty string")
        problems.append(
            Problem(
                uid=f"{source}:{location.split()[-1]}",
                prompt=format_prompt(cfg.prompt_template, text),
                answer=gold_answer(record, cfg, where),
            )
        )
    return problems


def read_jsonl(path: str, config_key: str) -> list[Record]:
    """Records of a JSONL file, one JSON object per non-blank line, located by line number.

    Args:
        path: the file (`~` is expanded).
        config_key: the setting that named the file, e.g. 'data.train_path', for error messages.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{config_key}={path!r}: no such file; set {config_key} to a JSONL file of problems")
    records: list[Record] = []
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{file} line {number}: invalid JSON ({e.msg}, column {e.colno}); each line of "
                    f"{config_key} must be one JSON object"
                ) from None
            records.append((f"line {number}", record))
    if not records:
        raise DataError(f"{file} ({config_key}) has no records")
    return records


def split_heldout(problems: list[Problem], heldout_size: int, seed: int, source: str) -> TaskData:
    """A seeded held-out split: min(heldout_size, HELDOUT_MAX_FRACTION of the problems), at
    least one; the rest is the training pool. Both keep the original order."""
    if len(problems) < 2:
        raise DataError(f"{source} has {len(problems)} problem(s): too few to hold some out; set data.eval_path")
    size = max(1, min(heldout_size, int(len(problems) * HELDOUT_MAX_FRACTION)))
    held = set(seeded_rng(seed, "heldout-split").sample(range(len(problems)), size))
    return TaskData(
        train=[p for i, p in enumerate(problems) if i not in held],
        heldout=[p for i, p in enumerate(problems) if i in held],
    )


def assemble(train: list[Problem], heldout: list[Problem] | None, cfg: DataConfig, source: str) -> TaskData:
    """Split or cap the held-out set, then cap the training pool (see the module docstring)."""
    if heldout is None:
        data = split_heldout(train, cfg.heldout_size, cfg.seed, source)
    else:
        data = TaskData(train=train, heldout=seeded_subset(heldout, cfg.heldout_size, cfg.seed, "heldout-cap"))
    if cfg.max_train_problems is not None:
        data.train = seeded_subset(data.train, cfg.max_train_problems, cfg.seed, "train-cap")
    return data


def load_jsonl(cfg: DataConfig) -> TaskData:
    """task=jsonl: problems from `data.train_path`, held out from `data.eval_path` or a split."""
    if not cfg.train_path:
        raise DataError("data.task=jsonl needs data.train_path, a JSONL file of problems")
    train = problems_from_records(read_jsonl(cfg.train_path, "data.train_path"), Path(cfg.train_path).name, cfg)
    heldout = None
    if cfg.eval_path:
        heldout = problems_from_records(read_jsonl(cfg.eval_path, "data.eval_path"), Path(cfg.eval_path).name, cfg)
    return assemble(train, heldout, cfg, cfg.train_path)


def _hf_records(name: str, split: str, config_key: str) -> list[Record]:
    try:
        import datasets
    except ImportError:
        raise ImportError("data.task=hf needs the Hugging Face `datasets` package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(f"could not load the Hugging Face dataset {config_key}={name!r}, split {split!r}: {e}") from e
    return [(f"row {i}", row) for i, row in enumerate(rows)]


def load_hf(cfg: DataConfig) -> TaskData:
    """task=hf: `datasets.load_dataset(data.train_path, split=data.split)`, held out from
    `data.eval_path` (split `data.eval_split`) or a split of the training rows."""
    if not cfg.train_path:
        raise DataError("data.task=hf needs data.train_path, a Hugging Face dataset name")
    source = f"{cfg.train_path}/{cfg.split}"
    train = problems_from_records(_hf_records(cfg.train_path, cfg.split, "data.train_path"), source, cfg)
    heldout = None
    if cfg.eval_path:
        eval_source = f"{cfg.eval_path}/{cfg.eval_split}"
        heldout = problems_from_records(_hf_records(cfg.eval_path, cfg.eval_split, "data.eval_path"), eval_source, cfg)
    return assemble(train, heldout, cfg, source)
