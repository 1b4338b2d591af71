"""Problems from records: local files (task=jsonl, task=parquet) and Hugging Face datasets (task=hf).

All go through `problems_from_records`, one mapping from a record to a `Problem`:
- the problem text is `record[data.problem_key]`, formatted with `data.prompt_template` (its
  task default when null: `mgrpo.tasks.prompts.MATH_PROMPT`);
- the gold answer is `record[data.answer_key]` when present and not null, otherwise the final
  answer of `record[data.solution_key]` (its last ``\\boxed{}``, or ``####`` answer as in
  GSM8K), otherwise None (an unlabeled problem, which label-free training can still use).
  Integral floats become integers ('27.0' -> '27', as AMC files store them).

Local files are read by suffix (`read_records`): `.parquet` (or a directory of `.parquet` shards)
with pyarrow, `.csv` with the csv module, `.json` as one JSON array, anything else as JSONL. No
network is touched. `task=hf` takes a hub name or a local copy of a dataset: a directory written
by `hf download --repo-type dataset` (read by `datasets.load_dataset`, which needs no
network for a local directory) or by `Dataset.save_to_disk` (`datasets.load_from_disk`).

Selection set (`TaskData.heldout`): the file (or dataset) `data.eval_path` when set, capped at
`data.heldout_size` problems; otherwise a seeded slice of the training records of
`data.heldout_size` problems, at most `HELDOUT_MAX_FRACTION` of them. Caps pick a seeded subset
and keep the records' order.
"""

from __future__ import annotations

import csv
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
    template = cfg.resolved_prompt_template()
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
                prompt=format_prompt(template, text),
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
    file = _existing(path, config_key, "a JSONL file of problems")
    if file.is_dir():
        raise DataError(f"{config_key}={path!r} is a directory; give a .jsonl file, or a directory of .parquet shards")
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
    return _nonempty(records, file, config_key)


def read_parquet(path: str, config_key: str) -> list[Record]:
    """Rows of a Parquet file, or of every `*.parquet` shard directly in a directory (in name
    order), located by row number. Read with pyarrow: no `datasets`, no network."""
    import pyarrow.parquet as pq

    file = _existing(path, config_key, "a Parquet file (or a directory of .parquet shards)")
    shards = sorted(file.glob("*.parquet")) if file.is_dir() else [file]
    if not shards:
        raise DataError(
            f"{config_key}={path!r}: no .parquet files directly in this directory; point {config_key} at a shard "
            "file, or use data.task=hf with this directory for a downloaded Hugging Face dataset (it picks the split)"
        )
    rows: list[dict[str, Any]] = []
    for shard in shards:
        try:
            rows += pq.read_table(shard).to_pylist()
        except Exception as e:
            raise DataError(f"{shard} ({config_key}) is not a readable Parquet file: {e}") from e
    return _nonempty([(f"row {i}", row) for i, row in enumerate(rows, start=1)], file, config_key)


def read_csv(path: str, config_key: str) -> list[Record]:
    """Rows of a CSV file with a header line (e.g. GPQA's release), located by row number."""
    file = _existing(path, config_key, "a CSV file with a header line")
    with file.open(encoding="utf-8", newline="") as f:
        records: list[Record] = [(f"row {i}", dict(row)) for i, row in enumerate(csv.DictReader(f), start=1)]
    return _nonempty(records, file, config_key)


def read_json_array(path: str, config_key: str) -> list[Record]:
    """Objects of a JSON file holding one array (JSONL content in a .json file is read too)."""
    file = _existing(path, config_key, "a JSON file")
    text = file.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return read_jsonl(path, config_key)
    if not isinstance(value, list):
        raise DataError(f"{file} ({config_key}): expected a JSON array of objects, got {type(value).__name__}")
    return _nonempty([(f"row {i}", row) for i, row in enumerate(value, start=1)], file, config_key)


def read_records(path: str, config_key: str) -> list[Record]:
    """Records of a local file, by its suffix (see the module docstring)."""
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix == ".parquet" or (file.is_dir() and any(file.glob("*.parquet"))):
        return read_parquet(path, config_key)
    if suffix == ".csv":
        return read_csv(path, config_key)
    if suffix == ".json":
        return read_json_array(path, config_key)
    return read_jsonl(path, config_key)


def _existing(path: str, config_key: str, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"{config_key}={path!r}: no such file; set {config_key} to {what}")
    return file


def _nonempty(records: list[Record], file: Path, config_key: str) -> list[Record]:
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


def load_files(cfg: DataConfig) -> TaskData:
    """task=jsonl or parquet: problems from the local file `data.train_path`, the selection set
    from `data.eval_path` or a seeded slice (each path read by its suffix, see `read_records`)."""
    if not cfg.train_path:
        raise DataError(f"data.task={cfg.task} needs data.train_path, a local file of problems")
    train = problems_from_records(read_records(cfg.train_path, "data.train_path"), Path(cfg.train_path).name, cfg)
    heldout = None
    if cfg.eval_path:
        heldout = problems_from_records(read_records(cfg.eval_path, "data.eval_path"), Path(cfg.eval_path).name, cfg)
    return assemble(train, heldout, cfg, cfg.train_path)


load_jsonl = load_files
"""task=jsonl (the name kept for callers of the JSONL-only loader)."""


def is_saved_to_disk(path: Path) -> bool:
    """Whether `path` was written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def hf_records(name: str, split: str, config_key: str) -> list[Record]:
    """Rows of one split of a Hugging Face dataset: a hub name (from the local cache when
    `HF_HUB_OFFLINE=1` / `HF_DATASETS_OFFLINE=1`), a downloaded dataset directory, or a
    `save_to_disk` directory. Located by row number."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{config_key}: data.task=hf needs the Hugging Face `datasets` package: pip install datasets") from None
    local = Path(name).expanduser()
    try:
        if local.is_dir() and is_saved_to_disk(local):
            rows = datasets.load_from_disk(str(local))
            if isinstance(rows, datasets.DatasetDict):
                rows = rows[split]
        else:
            rows = datasets.load_dataset(str(local) if local.is_dir() else name, split=split)
    except Exception as e:
        raise DataError(
            f"could not load the Hugging Face dataset {config_key}={name!r}, split {split!r}: {e}. Offline, download it "
            "once where the hub is reachable (`hf download --repo-type dataset <name> --local-dir <dir>`) "
            f"and set {config_key}=<dir>"
        ) from e
    return [(f"row {i}", row) for i, row in enumerate(rows)]


def load_hf(cfg: DataConfig) -> TaskData:
    """task=hf: `datasets.load_dataset(data.train_path, split=data.split)` (or a local copy),
    the selection set from `data.eval_path` (split `data.eval_split`) or a slice of the training rows."""
    if not cfg.train_path:
        raise DataError("data.task=hf needs data.train_path, a Hugging Face dataset name or local dataset directory")
    source = f"{cfg.train_path}/{cfg.split}"
    train = problems_from_records(hf_records(cfg.train_path, cfg.split, "data.train_path"), source, cfg)
    heldout = None
    if cfg.eval_path:
        eval_source = f"{cfg.eval_path}/{cfg.eval_split}"
        heldout = problems_from_records(hf_records(cfg.eval_path, cfg.eval_split, "data.eval_path"), eval_source, cfg)
    return assemble(train, heldout, cfg, source)
