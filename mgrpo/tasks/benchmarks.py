"""Reported benchmarks by name: MATH-500, AIME 2024 and 2025, AMC 2023, and GPQA-Diamond.

Benchmarks are what a run *reports* (`trainer.eval_benchmarks`, `mgrpo-eval`). Nothing that
chooses a run or a step reads them: the collapse monitor, `monitor.stop_on_collapse` and the
Optuna objective read the selection set (`data.eval_path` or a seeded slice of the training
data), so a run is never selected on the numbers it reports.

Where a benchmark is read from, first found wins:
1. `data.benchmark_paths.<name>`: a local file or dataset directory, or a hub dataset name
   ('org/name', or 'org/name:split');
2. `<data.benchmarks_dir>/<name>.jsonl` (or .parquet, .json, .csv, or a `<name>/` directory of
   .parquet shards);
3. the hub dataset listed in `BENCHMARKS` (needs the `datasets` package and the hub, or its cache
   with `HF_HUB_OFFLINE=1`). GPQA is gated, so GPQA-Diamond is read from a user file only.

Math benchmarks: the problem is the record's `problem` (or `question`) field, formatted with
`data.prompt_template` (the run's own format), or with `mgrpo.tasks.prompts.MATH_PROMPT` when
that is null, whatever the training task; the gold answer its `answer` field (an integral float such as AMC's 27.0
becomes '27'), else the last \\boxed{} of its `solution`. Graded by extracting the final answer
(`mgrpo.algos.answers.extract_answer`) and mathematical equivalence.

Multiple choice (GPQA's release format: `Question`, `Correct Answer`, `Incorrect Answer 1..3`,
optional `Record ID`; matched ignoring case, '_' and spaces): the four options are shuffled with
a seed derived from the question alone (its Record ID, else a hash of its text), so every run,
rank and machine shows the same order and the same gold letter; the letter is extracted from the
response (`extract_choice`) and compared exactly.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from mgrpo.algos.answers import extract_answer
from mgrpo.tasks.base import DataError, Problem, format_prompt
from mgrpo.tasks.datasets import Record, hf_records, read_records
from mgrpo.tasks.prompts import MATH_PROMPT

if TYPE_CHECKING:
    from mgrpo.config import DataConfig

MATH = "math"
CHOICE = "choice"
LETTERS = "ABCD"
FILE_SUFFIXES = (".jsonl", ".parquet", ".json", ".csv")


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark known by name."""

    kind: str
    """'math' (final answer, mathematical equivalence) or 'choice' (a letter, exact match)."""
    samples: int
    """n when sampling (rollout.eval_temperature > 0): the paper averages AIME and GPQA-Diamond
    over 8 samples; MATH-500 has enough problems for one."""
    hub: Optional[tuple[str, str]]
    """(dataset, split) on the Hugging Face hub; None when only a user file can provide it."""
    description: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "math500": BenchmarkSpec(MATH, 1, ("HuggingFaceH4/MATH-500", "test"), "MATH-500, 500 problems of the MATH test split"),
    "aime24": BenchmarkSpec(MATH, 8, ("HuggingFaceH4/aime_2024", "train"), "AIME 2024 I and II, 30 problems"),
    "aime25": BenchmarkSpec(MATH, 8, ("math-ai/aime25", "test"), "AIME 2025 I and II, 30 problems"),
    "amc23": BenchmarkSpec(MATH, 8, ("math-ai/amc23", "test"), "AMC 2023, 40 problems"),
    "gpqa_diamond": BenchmarkSpec(CHOICE, 8, None, "GPQA-Diamond, 198 questions (gated: a user file in GPQA's format)"),
}
"""Benchmarks by name. Any other name given a source in `data.benchmark_paths` is a benchmark too
(math, or multiple choice when its records have GPQA's fields), with n = 1 by default."""

GPQA_PROMPT = (
    "Answer the following multiple choice question. Think step by step, then give the letter of the "
    "correct option as your final answer within \\boxed{}, e.g. \\boxed{A}.\n\n"
    "{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
"""The user message of a multiple-choice question ({question} and the options are replaced
literally; other braces stay)."""


@dataclass
class Benchmark:
    """One benchmark's problems, ready for sampling once their prompts are rendered."""

    name: str
    kind: str
    """'math' or 'choice' (see `BenchmarkSpec.kind`)."""
    source: str
    """Where it was read from (a path, or 'hub:<dataset>:<split>')."""
    problems: list[Problem]
    """User messages as prompts, gold answers (letters for 'choice'); the first `limit` only."""
    size: int
    """Problems in the source (more than len(problems) when a limit applied)."""
    default_samples: int
    """The benchmark's n when sampling (see `BenchmarkSpec.samples`)."""

    def grader(self, math_equivalence: Callable[[str, str], bool]) -> tuple[Callable[[str], Optional[str]], Callable[[str, str], bool]]:
        """(extract an answer from a response, is it equivalent to the gold answer(gold, pred))."""
        if self.kind == CHOICE:
            return extract_choice, _same_letter
        return extract_answer, math_equivalence


def _same_letter(gold: str, pred: str) -> bool:
    return gold.strip().upper() == pred.strip().upper()


def samples_for(benchmark: Benchmark, override: Optional[int], temperature: float) -> int:
    """n for one benchmark: `override` (trainer.eval_benchmark_samples) when set; else the
    benchmark's own count when sampling, and 1 under greedy decoding (identical samples)."""
    if override is not None:
        return override
    return benchmark.default_samples if temperature > 0 else 1


# ---- where a benchmark comes from -----------------------------------------------------------


def _looks_like_hub_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+(:[\w.\-]+)?", value)) and not value.startswith((".", "/", "~"))


def _in_dir(directory: str, name: str) -> Optional[Path]:
    root = Path(directory).expanduser()
    for suffix in FILE_SUFFIXES:
        if (root / f"{name}{suffix}").is_file():
            return root / f"{name}{suffix}"
    if (root / name).is_dir() and any((root / name).glob("*.parquet")):
        return root / name
    return None


def check_benchmark_names(names: Sequence[str], data: DataConfig) -> None:
    """Raise ValueError for a name that is neither known nor given a source in
    data.benchmark_paths, or that is listed twice (no file access: usable in config validation)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"benchmark {name!r} is listed twice")
        seen.add(name)
        if name not in BENCHMARKS and name not in data.benchmark_paths:
            raise ValueError(
                f"unknown benchmark {name!r}: known ones are {', '.join(BENCHMARKS)}; for another benchmark give its "
                f"file with +data.benchmark_paths.{name}=<path>"
            )


def benchmark_source(name: str, data: DataConfig) -> str:
    """Where benchmark `name` is read from: a local path, or 'hub:<dataset>:<split>'.

    Raises FileNotFoundError saying what to set when a configured file is missing or the
    benchmark has no source at all; ValueError for an unknown name.
    """
    check_benchmark_names([name], data)
    configured = data.benchmark_paths.get(name)
    if configured:
        if Path(configured).expanduser().exists():
            return str(Path(configured).expanduser())
        if _looks_like_hub_name(configured):
            dataset, _, split = configured.partition(":")
            return f"hub:{dataset}:{split or 'test'}"
        raise FileNotFoundError(
            f"data.benchmark_paths.{name}={configured!r}: no such file or directory; set it to the benchmark's file "
            "(.jsonl, .parquet, .json or .csv) or a hub dataset name 'org/name[:split]'"
        )
    if data.benchmarks_dir:
        found = _in_dir(data.benchmarks_dir, name)
        if found is not None:
            return str(found)
    spec = BENCHMARKS[name]
    if spec.hub is not None:
        return f"hub:{spec.hub[0]}:{spec.hub[1]}"
    where = f"no {name}.jsonl/.parquet/.json/.csv in data.benchmarks_dir={data.benchmarks_dir!r}" if data.benchmarks_dir else "data.benchmarks_dir is not set"
    raise FileNotFoundError(
        f"benchmark {name} needs a file ({spec.description}): {where}. Put {name}.csv (GPQA's release format) or "
        f"{name}.jsonl there, or set +data.benchmark_paths.{name}=<file>"
    )


def same_source(path: str, other: str) -> bool:
    """Whether two sources (paths or hub names) are the same data set."""
    if other.startswith("hub:"):
        return path.split(":")[0] == other.split(":")[1]
    a, b = Path(path).expanduser(), Path(other).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


# ---- records to problems ----------------------------------------------------------------------


def _field(record: Mapping[str, Any], *names: str) -> Any:
    """The first of `names` present (and not None) in `record`, matched ignoring case, '_' and
    surrounding spaces."""
    canonical = {re.sub(r"[\s_]+", " ", str(k)).strip().lower(): v for k, v in record.items()}
    for name in names:
        value = canonical.get(name)
        if value is not None:
            return value
    return None


def is_choice_record(record: Mapping[str, Any]) -> bool:
    """Whether a record has GPQA's fields (a question, one correct and three incorrect answers)."""
    return all(_field(record, key) is not None for key in ("question", "correct answer", "incorrect answer 1", "incorrect answer 2", "incorrect answer 3"))


def _gold_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: the answer is a {type(value).__name__}, expected a string or number")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def math_problem(name: str, location: str, record: Mapping[str, Any], template: str) -> Problem:
    """A math benchmark record as a problem (see the module docstring for the fields)."""
    where = f"benchmark {name} {location}"
    text = _field(record, "problem", "question")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: no problem text (fields: {', '.join(map(str, record))}); expected 'problem' or 'question'")
    answer = _field(record, "answer")
    if answer is not None:
        gold: Optional[str] = _gold_text(answer, where)
    else:
        solution = _field(record, "solution")
        gold = extract_answer(solution) if isinstance(solution, str) else None
    if not gold:
        raise DataError(f"{where}: no gold answer (an 'answer' field, or a 'solution' with a \\boxed{{}} answer)")
    return Problem(uid=f"{name}:{location.split()[-1]}", prompt=format_prompt(template, text), answer=gold)


def shuffled_options(question_id: str, correct: str, incorrect: Sequence[str]) -> tuple[list[str], str]:
    """(the four options in this question's fixed order, the gold letter). The order depends on
    `question_id` alone: a SHA-256-seeded shuffle, the same in every process and run."""
    options = [correct, *incorrect]
    order = list(range(len(options)))
    random.Random(hashlib.sha256(f"mgrpo:choice:{question_id}".encode()).hexdigest()).shuffle(order)
    return [options[i] for i in order], LETTERS[order.index(0)]


def choice_problem(name: str, location: str, record: Mapping[str, Any]) -> Problem:
    """A GPQA-format record as a multiple-choice problem whose gold answer is a letter."""
    where = f"benchmark {name} {location}"
    if not is_choice_record(record):
        raise DataError(
            f"{where}: expected GPQA's fields 'Question', 'Correct Answer', 'Incorrect Answer 1'..'3' "
            f"(fields: {', '.join(map(str, record))})"
        )
    question = str(_field(record, "question")).strip()
    correct = str(_field(record, "correct answer")).strip()
    incorrect = [str(_field(record, f"incorrect answer {i}")).strip() for i in (1, 2, 3)]
    record_id = _field(record, "record id", "id")
    question_id = str(record_id) if record_id is not None else hashlib.sha256(question.encode()).hexdigest()[:16]
    options, gold = shuffled_options(question_id, correct, incorrect)
    prompt = GPQA_PROMPT.replace("{question}", question)
    for letter, option in zip(LETTERS, options):
        prompt = prompt.replace("{" + letter + "}", option)
    return Problem(uid=f"{name}:{question_id if record_id is not None else location.split()[-1]}", prompt=prompt, answer=gold)


def _read(source: str, name: str) -> list[Record]:
    key = f"data.benchmark_paths.{name}"
    if source.startswith("hub:"):
        _, dataset, split = source.split(":", 2)
        return hf_records(dataset, split, key)
    path = Path(source)
    if path.is_dir() and not any(path.glob("*.parquet")):
        return _local_dataset_records(path, name, key)
    return read_records(source, key)


def _local_dataset_records(path: Path, name: str, key: str) -> list[Record]:
    """Rows of a downloaded dataset directory (`hf download --repo-type dataset`):
    the benchmark's hub split when the directory has it, else its only split."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{key}={str(path)!r} is a dataset directory, which needs the `datasets` package: pip install datasets") from None
    try:
        splits = datasets.load_dataset(str(path))
    except Exception as e:
        raise DataError(f"{key}={str(path)!r}: not a readable dataset directory ({e}); point it at the benchmark's file instead") from e
    spec = BENCHMARKS.get(name)
    preferred = spec.hub[1] if spec is not None and spec.hub is not None else None
    if preferred in splits:
        rows = splits[preferred]
    elif len(splits) == 1:
        rows = next(iter(splits.values()))
    else:
        raise DataError(f"{key}={str(path)!r} has splits {', '.join(splits)}; point it at the file of the benchmark's split")
    return [(f"row {i}", row) for i, row in enumerate(rows)]


def load_benchmark(name: str, data: DataConfig, limit: Optional[int] = None) -> Benchmark:
    """Benchmark `name` (see the module docstring), its first `limit` problems when set."""
    source = benchmark_source(name, data)
    records = _read(source, name)
    spec = BENCHMARKS.get(name)
    kind = spec.kind if spec is not None else (CHOICE if is_choice_record(records[0][1]) else MATH)
    if kind == CHOICE:
        problems = [choice_problem(name, loc, rec) for loc, rec in records]
    else:
        template = data.prompt_template if data.prompt_template is not None else MATH_PROMPT
        problems = [math_problem(name, loc, rec, template) for loc, rec in records]
    return Benchmark(
        name=name,
        kind=kind,
        source=source,
        problems=problems[:limit] if limit else problems,
        size=len(problems),
        default_samples=spec.samples if spec is not None else 1,
    )


# ---- letters from responses -------------------------------------------------------------------

_LETTER = r"\(?\s*([A-D])\s*\)?"
_BOXED_LETTER = re.compile(r"^\s*(?:\\text(?:bf)?\{\s*)?\(?\s*([A-D])\s*\)?(?:\s*\})?(?:[\s.:)]|$)")
_ANSWER_PHRASE = re.compile(
    r"answer(?:\s+choice)?(?:\s+is|\s*:|\s+would\s+be|\s+should\s+be)?\s*[:\-]?\s*(?:\*\*|\$)?\s*(?:option\s+)?" + _LETTER + r"(?![A-Za-z])",
    re.IGNORECASE,
)
_LAST_LINE = re.compile(r"^[\s*_#>]*(?:option\s+)?\(?([A-D])\)?[\s.*_]*$", re.IGNORECASE)


def extract_choice(text: str) -> Optional[str]:
    """The option letter (A-D) a response settles on, or None.

    The latest of: the content of the last \\boxed{} ('\\boxed{C}', '\\boxed{(C)}',
    '\\boxed{\\text{C}}', '\\boxed{C) 42}'), or an answer phrase ('Answer: C', 'The answer is (B).',
    '**Answer:** D', 'the correct answer is option A'). When neither occurs, a last line that is
    only a letter ('C', '(C)', '**C**'). Letters must be capitals inside phrases, so 'the answer
    is a number' yields nothing.
    """
    candidates: list[tuple[int, str]] = []
    box = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if box != -1:
        content = extract_answer(text[box:])
        if content is not None:
            match = _BOXED_LETTER.match(content)
            if match:
                candidates.append((box, match.group(1)))
    for match in _ANSWER_PHRASE.finditer(text):
        letter = match.group(1)
        if letter in LETTERS:
            candidates.append((match.start(), letter))
    if candidates:
        return max(candidates)[1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        match = _LAST_LINE.match(lines[-1])
        if match and match.group(1) in LETTERS:
            return match.group(1)
    return None
