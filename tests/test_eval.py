"""Benchmark evaluation: pass@k, mean@n and maj@n against hand-computed values, GPQA's shuffle
and letter extraction, benchmark sources and their errors, and `mgrpo-eval` end to end."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest
import torch

from mgrpo import metric_names as names
from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.algos.metrics import benchmark_metrics, mean_and_standard_error, pass_at_k, pass_ks
from mgrpo.config import ConfigError, DataConfig
from mgrpo.config_checks import validate_benchmarks
from mgrpo.eval_cli import main
from mgrpo.eval_inputs import EvalError, locate_checkpoint
from mgrpo.evaluation import EvalSamples, eval_seeds, score_benchmark
from mgrpo.tasks.base import DataError, Problem
from mgrpo.tasks.benchmarks import (
    BENCHMARKS,
    Benchmark,
    benchmark_source,
    check_benchmark_names,
    extract_choice,
    load_benchmark,
    samples_for,
    shuffled_options,
)
from tests.trainer_helpers import compose_config

torch.set_num_threads(1)


# ---- pass@k --------------------------------------------------------------------------------------


def test_pass_at_k_hand_computed_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - 35 / 210)  # C(7,4) = 35, C(10,4) = 210
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8), "pass@1 is the fraction correct"


def test_pass_at_k_edges_c0_cn_kn():
    for n in (1, 2, 5, 8):
        for k in range(1, n + 1):
            assert pass_at_k(n, 0, k) == 0.0, "no correct sample: 0 for every k"
            assert pass_at_k(n, n, k) == 1.0, "all correct: 1 for every k"
        for c in range(1, n + 1):
            assert pass_at_k(n, c, n) == 1.0, "k = n draws every sample: 1 as soon as one is correct"


def test_one_correct_of_four_is_pass_at_4_one_not_verls_0684():
    """verl's best@k resamples with replacement: 1 - (3/4)^4 = 0.684 (verl PR #7240)."""
    assert pass_at_k(4, 1, 4) == 1.0
    with_replacement = 1 - (3 / 4) ** 4
    assert with_replacement == pytest.approx(0.684, abs=1e-3) and with_replacement < pass_at_k(4, 1, 4)


def test_pass_at_k_stable_product_matches_exact_binomials():
    for n, c, k in [(200, 3, 100), (64, 10, 32), (1000, 1, 500), (50, 49, 1), (30, 7, 23)]:
        exact = 1 - Fraction(comb(n - c, k), comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 0)


def test_reported_ks_are_powers_of_two_and_n():
    assert pass_ks(1) == [1]
    assert pass_ks(2) == [1, 2]
    assert pass_ks(6) == [1, 2, 4, 6]
    assert pass_ks(8) == [1, 2, 4, 8]


# ---- mean@n and its standard error ------------------------------------------------------------------


def test_standard_error_uses_the_sample_std_over_problems():
    mean, se = mean_and_standard_error([1.0, 0.0, 0.5, 0.5])
    assert mean == 0.5
    assert se == pytest.approx(math.sqrt((0.25 + 0.25) / 3 / 4))  # var = 0.5 / (4 - 1); se = sqrt(var / 4)
    assert math.isnan(mean_and_standard_error([0.3])[1]), "one problem: no error estimate"
    assert mean_and_standard_error([0.2, 0.2, 0.2]) == (pytest.approx(0.2), 0.0)


def test_benchmark_metrics_hand_computed():
    correct = [[True, False, False, False], [True, True, True, True], [False, False, False, False]]
    m = benchmark_metrics(correct, [False, True, False])
    assert set(m) == {"mean@4", "mean@4_se", "maj@4", "pass@1", "pass@2", "pass@4"}
    assert m["mean@4"] == pytest.approx(5 / 12)  # (1/4 + 1 + 0) / 3
    per_problem = [0.25, 1.0, 0.0]
    var = sum((x - 5 / 12) ** 2 for x in per_problem) / 2
    assert m["mean@4_se"] == pytest.approx(math.sqrt(var / 3))
    assert m["maj@4"] == pytest.approx(1 / 3)
    assert m["pass@1"] == pytest.approx(5 / 12), "pass@1 equals mean@n"
    assert m["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)


def test_benchmark_metrics_needs_equal_n():
    with pytest.raises(ValueError, match="same number"):
        benchmark_metrics([[True], [True, False]], [True, False])


# ---- scoring a benchmark's samples --------------------------------------------------------------


@pytest.fixture(scope="module")
def equivalence():
    eq = AnswerEquivalence()
    yield eq
    eq.close()


def samples(answers_by_problem: list[list]) -> EvalSamples:
    """EvalSamples laid out problem-major, with shuffled rows to show order does not matter."""
    rows = [(i, a) for i, group in enumerate(answers_by_problem) for a in group]
    rows = rows[1::2] + rows[::2]
    return EvalSamples([i for i, _ in rows], [f"... \\boxed{{{a}}}" if a else "no answer" for _, a in rows], [a for _, a in rows], [10] * len(rows))


def test_maj_at_n_counts_equivalent_forms_as_one_answer(equivalence):
    problems = [Problem("b:1", "p1", "\\frac{1}{2}"), Problem("b:2", "p2", "2"), Problem("b:3", "p3", "7")]
    result = score_benchmark(
        "b",
        samples([["1/2", "0.5", "\\frac{1}{2}", "3"], ["2", "3", "3", None], [None, None, None, None]]),
        problems,
        4,
        equivalence,
    )
    m = result.metrics
    assert m["maj@4"] == pytest.approx(1 / 3), "1/2, 0.5 and \\frac{1}{2} are one class that outvotes 3; 3 outvotes 2"
    assert m["mean@4"] == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["no_answer_frac"] == pytest.approx(5 / 12)
    assert result.num_problems == 3 and len(result.completions) == 12
    first = [c for c in result.completions if c["uid"] == "b:1"]
    assert [c["sample"] for c in first] == [0, 1, 2, 3] and "prompt" in first[0] and "prompt" not in first[1]
    assert sum(c["correct"] for c in first) == 3
    assert {c["answer"]: c["agrees_with_majority"] for c in first} == {"1/2": True, "0.5": True, "\\frac{1}{2}": True, "3": False}
    assert result.tracking_metrics()[names.benchmark_metric("b", "mean@4_se")] == m["mean@4_se"]


def test_every_problem_needs_n_samples(equivalence):
    with pytest.raises(ValueError, match="needs 2 samples"):
        score_benchmark("b", samples([["1", "2"], ["1"]]), [Problem("a", "", "1"), Problem("b", "", "1")], 2, equivalence)


def test_metric_names_are_mlflow_safe():
    from mlflow.utils.validation import _validate_metric_name

    for key in ("mean@8", "mean@8_se", "maj@8", "pass@4"):
        name = names.benchmark_metric("aime24", key)
        _validate_metric_name(name)
        assert "@" not in name
    assert names.benchmark_metric("aime24", "mean@8") == "eval/aime24/mean_at_8"


def test_benchmark_seeds_differ_between_benchmarks_and_from_the_selection_set():
    selection = eval_seeds(0, 5, range(4))
    assert eval_seeds(0, 5, range(4)) == selection
    assert not set(selection) & set(eval_seeds(0, 5, range(4), "math500"))
    assert not set(eval_seeds(0, 5, range(4), "aime24")) & set(eval_seeds(0, 5, range(4), "aime25"))
    assert eval_seeds(0, 5, [2], "aime24") == eval_seeds(0, 5, range(4), "aime24")[2:3], "a problem's seed is its own"


# ---- GPQA ---------------------------------------------------------------------------------------


GPQA_FIELDS = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3", "Subdomain"]


def write_gpqa(path: Path, rows: int = 12) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GPQA_FIELDS)
        writer.writeheader()
        for i in range(rows):
            writer.writerow(
                {
                    "Record ID": f"rec{i:03d}",
                    "Question": f"Which value does quantity {i} take, with braces {{x}}?",
                    "Correct Answer": f"right {i}",
                    "Incorrect Answer 1": f"wrong a{i}",
                    "Incorrect Answer 2": f"wrong b{i}",
                    "Incorrect Answer 3": f" wrong c{i} ",
                    "Subdomain": "Physics",
                }
            )
    return path


def test_gpqa_shuffle_is_deterministic_per_question_and_tracks_the_gold_letter(tmp_path):
    path = write_gpqa(tmp_path / "gpqa_diamond.csv")
    data = DataConfig(benchmarks_dir=str(tmp_path))
    bench = load_benchmark("gpqa_diamond", data)
    assert bench.kind == "choice" and bench.size == 12 and bench.default_samples == 8
    again = load_benchmark("gpqa_diamond", DataConfig(benchmark_paths={"gpqa_diamond": str(path)}, seed=7))
    assert [p.prompt for p in again.problems] == [p.prompt for p in bench.problems], "no dependence on data.seed or the source setting"
    for i, problem in enumerate(bench.problems):
        assert problem.uid == f"gpqa_diamond:rec{i:03d}"
        lines = dict(line.split(") ", 1) for line in problem.prompt.splitlines() if line[:2] in ("A)", "B)", "C)", "D)"))
        assert lines[problem.answer] == f"right {i}", "the gold letter points at the correct answer"
        assert sorted(lines.values()) == sorted([f"right {i}", f"wrong a{i}", f"wrong b{i}", f"wrong c{i}"])
        assert "{x}" in problem.prompt, "braces in a question are kept"
    assert len({p.answer for p in bench.problems}) >= 3, "the correct answer is not always in one place"
    options, gold = shuffled_options("rec001", "r", ["w1", "w2", "w3"])
    assert shuffled_options("rec001", "r", ["w1", "w2", "w3"]) == (options, gold) and options["ABCD".index(gold)] == "r"


def test_gpqa_records_found_by_their_fields_under_another_name(tmp_path):
    path = write_gpqa(tmp_path / "my_gpqa.csv", rows=3)
    bench = load_benchmark("gpqa_main_subset", DataConfig(benchmark_paths={"gpqa_main_subset": str(path)}))
    assert bench.kind == "choice" and bench.default_samples == 1


@pytest.mark.parametrize(
    "text,letter",
    [
        ("Let me think... so the final answer is \\boxed{C}.", "C"),
        ("\\boxed{\\text{B}}", "B"),
        ("Thus \\boxed{(D)}", "D"),
        ("\\boxed{A) 42 eV}", "A"),
        ("The answer is (B).", "B"),
        ("Reasoning...\nAnswer: C", "C"),
        ("**Answer:** D", "D"),
        ("Therefore, the correct answer is option A.", "A"),
        ("I first thought \\boxed{A}, but the answer is B", "B"),
        ("The answer is B. On reflection, \\boxed{D}", "D"),
        ("lots of reasoning\n\n(C)", "C"),
        ("lots of reasoning\n**B**", "B"),
        ("The answer is a number we cannot find.", None),
        ("Options A) and B) look wrong to me", None),
        ("", None),
    ],
)
def test_letters_are_extracted_from_typical_phrasings(text, letter):
    assert extract_choice(text) == letter


# ---- sources and errors ---------------------------------------------------------------------------


def test_benchmarks_are_found_in_the_directory_by_name(shared_data_dir):
    data = DataConfig(benchmarks_dir=str(shared_data_dir))
    for name in ("math500", "aime24", "aime25", "amc23"):
        assert benchmark_source(name, data) == str(shared_data_dir / f"{name}.jsonl")
    math500 = load_benchmark("math500", data, limit=3)
    assert math500.size == 500 and len(math500.problems) == 3 and math500.kind == "math"
    assert math500.problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math500.problems[0].prompt.endswith("output the final answer within \\boxed{}."), "the MATH prompt"
    amc = load_benchmark("amc23", data)
    assert amc.problems[0].answer == "27" and amc.size == 40, "AMC's float answers become integers"
    aime25 = load_benchmark("aime25", data)
    assert aime25.size == 30 and aime25.problems[0].answer == "70"
    custom = DataConfig(task="arithmetic", prompt_template="Q: {problem}", benchmarks_dir=str(shared_data_dir))
    assert load_benchmark("math500", custom, 1).problems[0].prompt.startswith("Q: Convert"), "the run's own template when set"


def test_paper_sample_counts_and_greedy_override():
    bench = Benchmark("aime24", "math", "x", [], 30, BENCHMARKS["aime24"].samples)
    assert samples_for(bench, None, 0.8) == 8 and samples_for(bench, None, 0.0) == 1 and samples_for(bench, 4, 0.8) == 4
    assert BENCHMARKS["math500"].samples == 1 and BENCHMARKS["gpqa_diamond"].samples == 8


def test_unknown_and_missing_benchmarks_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark 'math5000'.*math500, aime24.*benchmark_paths\.math5000"):
        check_benchmark_names(["math5000"], DataConfig())
    with pytest.raises(FileNotFoundError, match=r"benchmark gpqa_diamond needs a file.*data.benchmarks_dir is not set"):
        benchmark_source("gpqa_diamond", DataConfig())
    with pytest.raises(FileNotFoundError, match=r"no gpqa_diamond.jsonl/.parquet/.json/.csv in data.benchmarks_dir"):
        benchmark_source("gpqa_diamond", DataConfig(benchmarks_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"data.benchmark_paths.aime24='/nope/aime.jsonl': no such file"):
        benchmark_source("aime24", DataConfig(benchmark_paths={"aime24": "/nope/aime.jsonl"}))
    assert benchmark_source("aime24", DataConfig()) == "hub:HuggingFaceH4/aime_2024:train", "the hub when nothing local"
    assert benchmark_source("x", DataConfig(benchmark_paths={"x": "org/set:validation"})) == "hub:org/set:validation"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "no answer here"}) + "\n")
    with pytest.raises(DataError, match="benchmark bad line 1: no gold answer"):
        load_benchmark("bad", DataConfig(benchmark_paths={"bad": str(bad)}))


def test_config_rejects_unknown_benchmarks_and_a_benchmark_as_selection_set(shared_data_dir):
    cfg = compose_config(["trainer.eval_benchmarks=[math500,mystery]"])
    with pytest.raises(ConfigError, match="trainer.eval_benchmarks.*unknown benchmark 'mystery'"):
        validate_benchmarks(cfg)
    cfg = compose_config(
        ["data.task=jsonl", f"data.train_path={shared_data_dir / 'math4500.jsonl'}", f"data.eval_path={shared_data_dir / 'math500.jsonl'}",
         f"data.benchmarks_dir={shared_data_dir}", "trainer.eval_benchmarks=[math500]"]
    )
    with pytest.raises(ConfigError, match="data.eval_path=.*math500.jsonl.*is the benchmark math500 that the run reports"):
        validate_benchmarks(cfg)
    paper = compose_config(["experiment=paper"])
    assert paper.data.eval_path is None and "math500" in paper.trainer.eval_benchmarks
    with pytest.raises(ConfigError, match="data.eval_path='HuggingFaceH4/MATH-500'"):
        validate_benchmarks(compose_config(["experiment=paper", "data.eval_path=HuggingFaceH4/MATH-500"]))
    with pytest.raises(ConfigError, match="trainer.eval_benchmark_samples=8.*greedy"):
        validate_benchmarks(compose_config(["trainer.eval_benchmark_samples=8", "rollout.eval_temperature=0"]))
    with pytest.raises(ConfigError, match="trainer.eval_benchmarks: benchmark gpqa_diamond needs a file.*data.benchmarks_dir"):
        validate_benchmarks(compose_config(["trainer.eval_benchmarks=[gpqa_diamond]"]))


def test_mgrpo_eval_errors_name_the_problem(tmp_path, capsys, shared_data_dir):
    assert main([str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "neither a run's output directory" in capsys.readouterr().err
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert main([str(model), "--benchmarks", "math500,nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main([str(model), "--benchmarks", "gpqa_diamond"]) == 2
    assert "benchmark gpqa_diamond needs a file" in capsys.readouterr().err
    with pytest.raises(EvalError, match="no checkpoint yet"):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        locate_checkpoint(str(tmp_path / "run"))


# ---- end to end: training's benchmark evaluation, mgrpo-eval, selection apart from test ----------------


def run_series(uri: str, experiment: str) -> dict[str, list[tuple[int, float]]]:
    from tests.trainer_helpers import metric_series

    runs = metric_series(uri, experiment)
    assert len(runs) == 1, f"expected one run in {experiment}, got {len(runs)}"
    return next(iter(runs.values()))


@pytest.mark.slow
def test_math_run_with_tiny_bpe_logs_benchmarks_and_mgrpo_eval_reproduces_them(tmp_path, shared_data_dir):
    """Two steps of M-GRPO on MATH with the real-tokenizer model (chat template, BPE prompts),
    MATH500 and AIME24 (2 problems, n = 2) evaluated in training; then `mgrpo-eval` on the run:
    on the step-2 checkpoint it draws the same samples (same numbers), on the step-1 checkpoint
    its metrics land in the run's MLflow record at step 1. Near 0 (random weights), but real."""
    from mlflow import MlflowClient

    from tests.trainer_helpers import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    train(
        [
            "model.name_or_path=tiny_bpe",
            f"model.tiny_bpe.cache_dir={tmp_path / 'models'}",
            "data.task=jsonl",
            f"data.train_path={shared_data_dir / 'math4500.jsonl'}",
            "data.heldout_size=4",
            "data.max_train_problems=40",
            f"data.benchmarks_dir={shared_data_dir}",
            "rollout.max_prompt_tokens=600",
            "rollout.max_new_tokens=8",
            "rollout.eval_temperature=0.8",
            "rollout.eval_samples=2",
            "trainer.eval_benchmarks=[math500,aime24]",
            "trainer.eval_benchmark_limit=2",
            "trainer.eval_benchmark_samples=2",
            "trainer.total_steps=2",
            "trainer.prompts_per_step=2",
            "trainer.eval_every=2",
            "trainer.checkpoint_every=1",
            "trainer.keep_last=3",
            "trainer.keep_finished_state=true",  # step 1 has no export: mgrpo-eval converts its DCP state
            "trainer.progress=false",
            "algo.num_rollouts=4",
            f"tracking.uri={uri}",
            "tracking.experiment=math_bpe",
        ],
        out,
    )
    series = run_series(uri, "math_bpe")
    for bench in ("math500", "aime24"):
        for key in ("mean_at_2", "mean_at_2_se", "maj_at_2", "pass_at_1", "pass_at_2", "no_answer_frac", "response_length"):
            assert [s for s, _ in series[names.benchmark_metric(bench, key)]] == [0, 2], f"{bench} {key} at every evaluation"
        assert all(0.0 <= v <= 1.0 for _, v in series[names.benchmark_metric(bench, "mean@2")])
    from tests.test_run_datasets import run_inputs

    run_id = (out / "mlflow_run_id").read_text().strip()
    inputs = {(name, context): profile for name, context, profile in run_inputs(MlflowClient(uri), run_id)}
    assert set(inputs) == {("math4500.jsonl", "training"), ("math4500.jsonl:heldout", "selection"), ("math500", "benchmark"), ("aime24", "benchmark")}
    assert inputs[("math500", "benchmark")] == {"problems": 2, "source_problems": 500}
    assert inputs[("math4500.jsonl", "training")]["problems"] + inputs[("math4500.jsonl", "training")]["dropped_for_length"] == 40
    completions = [json.loads(line) for line in (out / "completions" / "step_000002_math500.jsonl").read_text().splitlines()]
    assert len(completions) == 4 and completions[0]["prompt"].startswith("<|im_start|>user\n")

    assert main([str(out), "--out", str(tmp_path / "eval2"), "--tracking-uri", uri, "--no-progress"]) == 0
    results = json.loads((tmp_path / "eval2" / "results.json").read_text())
    assert results["step"] == 2 and results["run_id"] == run_id
    assert results["settings"]["eval_temperature"] == 0.8, "the run's own config is reused"
    for bench in ("math500", "aime24"):
        logged = {k.split("/")[-1]: v[-1][1] for k, v in series.items() if k.startswith(f"{names.EVAL}/{bench}/")}
        assert results["benchmarks"][bench]["n"] == 2 and results["benchmarks"][bench]["problems"] == 2
        for key, value in results["benchmarks"][bench]["metrics"].items():
            if not math.isnan(value):
                assert logged[key.replace("@", "_at_")] == pytest.approx(value), f"{bench} {key}: mgrpo-eval == training's evaluation"

    step1 = out / "checkpoints" / "step_000001"
    assert main([str(step1), "--out", str(tmp_path / "eval1"), "--tracking-uri", uri, "--no-progress", "--benchmarks", "aime24"]) == 0
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", "the training run's status is left as it was"
    history = client.get_metric_history(run_id, names.benchmark_metric("aime24", "mean@2"))
    assert sorted(p.step for p in history) == [0, 1, 2]
    artifacts = [a.path for a in client.list_artifacts(run_id, "eval/step_000001")]
    assert {"eval/step_000001/completions.jsonl", "eval/step_000001/results.json", "eval/step_000001/results.csv"} <= set(artifacts)
    rows = list(csv.DictReader((tmp_path / "eval1" / "results.csv").open()))
    assert [r["benchmark"] for r in rows] == ["aime24"] and rows[0]["n"] == "2"


@pytest.mark.slow
def test_benchmark_labels_change_no_training_decision(tiny_cache, tmp_path):
    """Corrupting a benchmark's gold answers changes its reported numbers and nothing else: every
    training curve, the selection set's accuracy, the monitor's verdicts and the objective are
    identical. Benchmark metrics land at every evaluation step."""
    from mgrpo.tasks.arithmetic import arithmetic_problem
    from tests.trainer_helpers import train

    def write_benchmark(path: Path, corrupt: bool) -> Path:
        rows = []
        for ops in [(12, 34, 56), (21, 43, 65), (10, 20, 30), (55, 44, 33), (19, 28, 37), (71, 12, 15), (40, 41, 42), (90, 80, 70)]:
            problem = arithmetic_problem(ops)
            rows.append(json.dumps({"problem": problem.prompt, "answer": "99999" if corrupt else problem.answer}))
        path.write_text("\n".join(rows) + "\n")
        return path

    results = {}
    for labels in ("clean", "corrupt"):
        uri = f"sqlite:///{tmp_path}/{labels}.db"
        bench = write_benchmark(tmp_path / f"{labels}.jsonl", labels == "corrupt")
        objective = train(
            [
                f"model.tiny.cache_dir={tiny_cache}",
                f"tracking.uri={uri}",
                "tracking.experiment=selection",
                "data.heldout_size=48",
                "data.prompt_template='{problem}'",
                f"+data.benchmark_paths.arith={bench}",
                "trainer.eval_benchmarks=[arith]",
                "trainer.total_steps=3",
                "trainer.prompts_per_step=4",
                "trainer.eval_every=2",
                "trainer.checkpoint_every=2",
                "trainer.progress=false",
                "trainer.objective=stable_accuracy",
                "monitor.every=1",
                "algo.num_rollouts=8",
            ],
            tmp_path / labels,
        )
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run = client.search_runs([client.get_experiment_by_name("selection").experiment_id])[0]
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("mgrpo.") and k not in ("mgrpo.output_dir",)}
        results[labels] = (objective, run_series(uri, "selection"), tags)

    (obj_a, clean, tags_a), (obj_b, corrupt, tags_b) = results["clean"], results["corrupt"]
    arith = names.benchmark_metric("arith", "mean@1")
    assert [s for s, _ in clean[arith]] == [0, 2, 3], "benchmarks at step 0, every eval_every, and the end"
    assert all(v == 0 for _, v in corrupt[arith]) and any(v > 0 for _, v in clean[arith]), (
        "the benchmark's labels were read, and reported"
    )
    for key in clean:
        if key.startswith((f"{names.EVAL}/arith/", names.TIME + "/")):
            continue
        assert clean[key] == corrupt[key], f"{key} changed when only a benchmark's labels changed"
    assert obj_a == obj_b and tags_a == tags_b, "objective and monitor verdicts are the selection set's alone"
