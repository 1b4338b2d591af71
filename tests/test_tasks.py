"""Tasks: the arithmetic chain and split, JSONL/HF record mapping, and their error messages."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mgrpo.algos.answers import extract_answer
from mgrpo.config import DataConfig
from mgrpo.tasks import DataError, Problem, load_task
from mgrpo.tasks.arithmetic import (
    HELDOUT_REGION,
    arithmetic_operands,
    arithmetic_problem,
    arithmetic_solution,
    in_heldout_region,
    max_response_chars,
)
from mgrpo.tasks.base import format_prompt
from mgrpo.tasks.datasets import HELDOUT_MAX_FRACTION, problems_from_records

# ---- arithmetic ---------------------------------------------------------------------------


def test_solution_of_the_documented_example():
    assert arithmetic_solution([63, 46, 94]) == "63+46=109,109+94=203####203"
    assert arithmetic_solution([5, 7]) == "5+7=12####12"
    p = arithmetic_problem([63, 46, 94])
    assert (p.prompt, p.answer, p.uid) == ("63+46+94=", "203", "arith:63+46+94")


@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=8))
def test_solution_chain_is_correct_for_any_operands(operands):
    solution = arithmetic_solution(operands)
    chain, answer = solution.split("####")
    steps = chain.split(",")
    assert len(steps) == len(operands) - 1
    running = operands[0]
    for step, x in zip(steps, operands[1:]):
        lhs, rhs = step.split("=")
        a, b = map(int, lhs.split("+"))
        assert (a, b) == (running, x), "each step adds the next operand to the running sum"
        running += x
        assert int(rhs) == running
    assert int(answer) == sum(operands)
    assert extract_answer(solution) == str(sum(operands))
    assert len(solution) <= max_response_chars(len(operands), len(str(max(operands))))


def test_solution_needs_two_operands():
    with pytest.raises(ValueError, match="at least 2"):
        arithmetic_solution([5])


def test_default_arithmetic_sizes_digits_and_answers():
    data = load_task(DataConfig())
    assert len(data.train) == 50_000 and len(data.heldout) == 1000
    for p in data.train[:500] + data.heldout:
        operands = [int(x) for x in p.prompt.rstrip("=").split("+")]
        assert len(operands) == 3 and all(10 <= x <= 99 for x in operands)
        assert p.answer == str(sum(operands))
    assert len({p.uid for p in data.train}) == len(data.train), "training problems are distinct"
    assert len({p.uid for p in data.heldout}) == len(data.heldout)


def test_heldout_is_disjoint_from_train_and_deterministic():
    cfg = DataConfig(seed=5)
    a, b = load_task(cfg), load_task(DataConfig(seed=5))
    assert a == b
    assert not {p.uid for p in a.train} & {p.uid for p in a.heldout}
    assert load_task(DataConfig(seed=6)).heldout != a.heldout, "the seed changes the held-out set"


def test_sizes_change_prefixes_not_contents():
    full_train, full_heldout = arithmetic_operands(DataConfig())
    small_train, small_heldout = arithmetic_operands(DataConfig(heldout_size=48, max_train_problems=300))
    assert small_heldout == full_heldout[:48]
    assert small_train == full_train[:300]


def test_heldout_region_is_about_one_in_eight_and_separates_the_sets():
    train, heldout = arithmetic_operands(DataConfig(max_train_problems=2000))
    assert all(in_heldout_region(ops, 0) for ops in heldout)
    assert not any(in_heldout_region(ops, 0) for ops in train)
    # 4,000 fresh operand triples: the region's share is near 1/8 (binomial sd ~0.005).
    grid = [(a, b, c) for a in range(10, 30) for b in range(10, 30) for c in range(10, 20)]
    share = sum(in_heldout_region(ops, 0) for ops in grid) / len(grid)
    assert abs(share - 1 / HELDOUT_REGION) < 0.03


def test_small_space_is_enumerated_and_capped():
    data = load_task(DataConfig(num_operands=2, num_digits=1, heldout_size=5))
    assert len(data.heldout) == 5
    assert 60 < len(data.train) < 81, "the whole training region of the 81 one-digit pairs"
    assert not {p.uid for p in data.train} & {p.uid for p in data.heldout}
    with pytest.raises(DataError, match="data.heldout_size=1000"):
        load_task(DataConfig(num_operands=2, num_digits=1))


def test_prompt_template_is_applied_and_keeps_literal_braces():
    template = "Q: {problem} Put the answer in \\boxed{}."
    data = load_task(DataConfig(prompt_template=template, heldout_size=3, max_train_problems=3))
    prompt = data.heldout[0].prompt
    assert prompt.startswith("Q: ") and prompt.endswith("= Put the answer in \\boxed{}.")
    assert format_prompt("{problem}", "1+2=") == "1+2="


# ---- jsonl ------------------------------------------------------------------------------


def jsonl_cfg(train: Path, **kw) -> DataConfig:
    return DataConfig(task="jsonl", train_path=str(train), **kw)


def test_math500_with_answers_and_a_seeded_split(shared_data_dir):
    cfg = jsonl_cfg(shared_data_dir / "math500.jsonl")
    data = load_task(cfg)
    assert len(data.heldout) == int(500 * HELDOUT_MAX_FRACTION) and len(data.train) == 400
    assert load_task(cfg) == data
    assert not {p.uid for p in data.train} & {p.uid for p in data.heldout}
    by_uid = {p.uid: p for p in data.train + data.heldout}
    first = by_uid["math500.jsonl:1"]
    assert first.prompt.startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert by_uid["math500.jsonl:2"].answer == "p - q"
    assert by_uid["math500.jsonl:3"].answer == "\\frac{14}{3}"


def test_math500_boxed_solution_agrees_with_its_answer_field(shared_data_dir):
    path = shared_data_dir / "math500.jsonl"
    labelled = load_task(jsonl_cfg(path, eval_path=str(path)))
    boxed = load_task(jsonl_cfg(path, eval_path=str(path), answer_key=None))
    agree = sum(a.answer == b.answer for a, b in zip(labelled.heldout, boxed.heldout))
    assert agree / 500 > 0.9, "the last \\boxed{} of a MATH solution is its answer"


def test_math4500_gold_is_the_last_boxed_of_the_solution(shared_data_dir):
    cfg = jsonl_cfg(shared_data_dir / "math4500.jsonl", eval_path=str(shared_data_dir / "math500.jsonl"))
    data = load_task(cfg)
    assert len(data.train) == 4500 and len(data.heldout) == 500
    by_uid = {p.uid: p for p in data.train}
    assert by_uid["math4500.jsonl:1"].answer == "2"
    assert by_uid["math4500.jsonl:3"].answer == "\\dfrac{9}{7}"  # nested braces
    assert by_uid["math4500.jsonl:9"].answer == "\\frac{x+2}{7}"
    assert by_uid["math4500.jsonl:11"].answer == "10"  # two boxes: the last one
    assert by_uid["math4500.jsonl:2001"].answer == "-1,2"
    assert sum(p.answer is None for p in data.train) < 10


def test_eval_file_and_train_cap_are_seeded_subsets(shared_data_dir):
    cfg = jsonl_cfg(
        shared_data_dir / "math4500.jsonl",
        eval_path=str(shared_data_dir / "math500.jsonl"),
        heldout_size=50,
        max_train_problems=100,
    )
    data = load_task(cfg)
    assert len(data.heldout) == 50 and len(data.train) == 100
    assert data == load_task(cfg)
    numbers = [int(p.uid.split(":")[1]) for p in data.heldout]
    assert numbers == sorted(numbers) and numbers[-1] > 100, "a spread-out subset in file order"


def test_amc_float_answers_become_integers(shared_data_dir):
    data = load_task(jsonl_cfg(shared_data_dir / "amc23.jsonl"))
    answers = {p.uid: p.answer for p in data.train + data.heldout}
    assert answers["amc23.jsonl:1"] == "27"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_file_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.train_path=.*nope.jsonl.*no such file"):
        load_task(jsonl_cfg(tmp_path / "nope.jsonl"))
    good = write_lines(tmp_path / "good.jsonl", [json.dumps({"problem": "x"})] * 3)
    with pytest.raises(FileNotFoundError, match="data.eval_path"):
        load_task(jsonl_cfg(good, eval_path=str(tmp_path / "missing.jsonl")))


def test_bad_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"problem": "a"}), "", '{"problem": "b",'])
    with pytest.raises(DataError, match=r"bad.jsonl line 3: invalid JSON"):
        load_task(jsonl_cfg(path))


def test_missing_problem_field_names_line_key_and_setting(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question": "a", "answer": 1})] * 2)
    with pytest.raises(DataError) as info:
        load_task(jsonl_cfg(path))
    message = str(info.value)
    assert "q.jsonl line 1" in message and "'problem'" in message and "question" in message
    assert "data.problem_key" in message
    data = load_task(jsonl_cfg(path, problem_key="question", prompt_template="{problem}"))
    assert data.train[0].prompt == "a" and data.train[0].answer == "1"


def test_non_object_line_and_empty_file_are_errors(tmp_path):
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        load_task(jsonl_cfg(write_lines(tmp_path / "list.jsonl", ["[1, 2]"])))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        load_task(jsonl_cfg(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="too few"):
        load_task(jsonl_cfg(write_lines(tmp_path / "one.jsonl", [json.dumps({"problem": "a"})])))


# ---- the record mapping shared by jsonl and hf ---------------------------------------------


def test_record_mapping_fallbacks():
    cfg = DataConfig(prompt_template="Solve: {problem}")
    records = [
        ("row 0", {"problem": "p0", "answer": "7", "solution": "\\boxed{8}"}),
        ("row 1", {"problem": "p1", "answer": None, "solution": "so \\boxed{\\frac{1}{2}}."}),
        ("row 2", {"problem": "p2", "solution": "Total 72.\n#### 72"}),
        ("row 3", {"problem": "p3"}),
        ("row 4", {"problem": "p4", "answer": 27.0}),
        ("row 5", {"problem": "p5", "answer": 2.5}),
    ]
    problems = problems_from_records(records, "ds/train", cfg)
    assert problems[0] == Problem(uid="ds/train:0", prompt="Solve: p0", answer="7")
    assert [p.answer for p in problems] == ["7", "\\frac{1}{2}", "72", None, "27", "2.5"]
    assert problems_from_records(records[:1], "ds", DataConfig(answer_key=None))[0].answer == "8"


def test_record_mapping_rejects_unusable_fields():
    with pytest.raises(DataError, match="ds row 0: field 'problem'"):
        problems_from_records([("row 0", {"problem": ""})], "ds", DataConfig())
    with pytest.raises(DataError, match="field 'answer' is a list"):
        problems_from_records([("row 0", {"problem": "a", "answer": [1]})], "ds", DataConfig())


def test_hf_task_maps_rows_like_jsonl(monkeypatch):
    """`datasets.load_dataset` replaced by an in-memory table (no hub access in tests)."""
    tables = {
        ("toy", "train"): [{"question": f"q{i}", "solution": f"\\boxed{{{i}}}"} for i in range(10)],
        ("toy", "test"): [{"question": "t0", "solution": "#### 5"}],
    }
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return tables[(name, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = DataConfig(task="hf", train_path="toy", eval_path="toy", problem_key="question", prompt_template="{problem}")
    data = load_task(cfg)
    assert calls == [("toy", "train"), ("toy", "test")]
    assert [p.prompt for p in data.train] == [f"q{i}" for i in range(10)]
    assert data.train[3] == Problem(uid="toy/train:3", prompt="q3", answer="3")
    assert data.heldout == [Problem(uid="toy/test:0", prompt="t0", answer="5")]
    split = load_task(DataConfig(task="hf", train_path="toy", problem_key="question"))
    assert len(split.heldout) == 2 and len(split.train) == 8


def test_hf_task_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        load_task(DataConfig(task="hf", train_path="toy"))


def test_unknown_task_is_an_error():
    with pytest.raises(DataError, match="data.task='csv'"):
        load_task(DataConfig(task="csv"))
