"""The data a run saw as MLflow dataset inputs: records, the tracker's once-per-run sending, and a
real run (training pool and selection set in the runs table, no step-0 count charts)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from mgrpo.config import DataConfig
from mgrpo.run_datasets import benchmark_dataset, digest, run_datasets, task_datasets
from mgrpo.tasks.base import Problem, TaskData
from mgrpo.tasks.benchmarks import Benchmark
from mgrpo.tasks.prompts import PreparedTask
from mgrpo.tracking import Tracker


def problems(prefix: str, n: int, labelled: int) -> list[Problem]:
    return [Problem(f"{prefix}:{i}", f"what is {i}+1?", str(i + 1) if i < labelled else None) for i in range(n)]


def prepared(train: int = 5, heldout: int = 3) -> PreparedTask:
    return PreparedTask(TaskData(problems("t", train, train - 1), problems("h", heldout, heldout)), dropped_train=2, dropped_selection=1)


def by_context(records: list[dict]) -> dict[str, dict]:
    return {r["context"]: r for r in records if r["context"] != "benchmark"}


def test_digest_follows_the_problems_exactly():
    base = problems("t", 4, 4)
    assert digest(base) == digest(list(base)) and len(digest(base)) == 8
    changed_prompt = [*base[:3], Problem(base[3].uid, base[3].prompt + " ", base[3].answer)]
    changed_label = [*base[:3], Problem(base[3].uid, base[3].prompt, "0")]
    assert len({digest(base), digest(changed_prompt), digest(changed_label), digest(base[::-1])}) == 4


def test_arithmetic_records_name_the_task_settings_and_count_what_was_used():
    task = prepared()
    data = DataConfig(num_operands=2, num_digits=3, seed=7)
    records = by_context(task_datasets(data, task, task.data.heldout[:2]))
    train, selection = records["training"], records["selection"]
    assert (train["name"], selection["name"]) == ("arithmetic", "arithmetic:heldout")
    assert train["source_type"] == "code"
    assert json.loads(train["source"]) == {"tags": {"task": "arithmetic", "num_operands": 2, "num_digits": 3, "seed": 7}}
    assert json.loads(train["profile"]) == {"problems": 5, "labelled": 4, "dropped_for_length": 2}
    # the evaluated part of the held-out set (trainer.eval_size), and what the length filter dropped
    assert json.loads(selection["profile"]) == {"problems": 2, "labelled": 2, "dropped_for_length": 1}
    assert selection["digest"] == digest(task.data.heldout[:2])


def test_file_and_hub_sources(tmp_path):
    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_file.write_text("{}\n")
    eval_file.write_text("{}\n")
    task = prepared()
    local = by_context(task_datasets(DataConfig(task="jsonl", train_path=str(train_file), eval_path=str(eval_file)), task, task.data.heldout))
    assert (local["training"]["name"], local["selection"]["name"]) == ("train.jsonl", "test.jsonl")
    assert local["training"]["source_type"] == local["selection"]["source_type"] == "local"
    assert json.loads(local["selection"]["source"]) == {"uri": str(eval_file.resolve())}

    hub = by_context(task_datasets(DataConfig(task="hf", train_path="org/math", split="train"), task, task.data.heldout))
    assert (hub["training"]["name"], hub["selection"]["name"]) == ("org/math:train", "org/math:train:heldout")
    assert hub["training"]["source_type"] == "hugging_face"
    source = json.loads(hub["training"]["source"])
    assert (source["path"], source["split"]) == ("org/math", "train")


def test_benchmark_records(tmp_path):
    on_hub = Benchmark("aime24", "math", "hub:HuggingFaceH4/aime_2024:train", problems("aime24", 2, 2), size=30, default_samples=8)
    record = benchmark_dataset(on_hub)
    assert (record["name"], record["context"], record["source_type"]) == ("aime24", "benchmark", "hugging_face")
    assert json.loads(record["source"])["path"] == "HuggingFaceH4/aime_2024"
    assert json.loads(record["profile"]) == {"problems": 2, "source_problems": 30}
    file = tmp_path / "math500.jsonl"
    file.write_text("{}\n")
    local = benchmark_dataset(Benchmark("math500", "math", str(file), problems("m", 3, 3), size=3, default_samples=1))
    assert (local["source_type"], json.loads(local["source"])) == ("local", {"uri": str(file.resolve())})
    everything = run_datasets(DataConfig(), prepared(), prepared().data.heldout, [on_hub])
    assert [r["context"] for r in everything] == ["training", "selection", "benchmark"]


def run_inputs(client: MlflowClient, run_id: str) -> list[tuple[str, str, dict]]:
    """(name, context, profile) of every dataset input of the run, sorted."""
    out = []
    for d in client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in d.tags}
        out.append((d.dataset.name, tags["mlflow.data.context"], json.loads(d.dataset.profile)))
    return sorted(out, key=lambda x: (x[0], x[1]))


def test_tracker_sends_each_input_once_per_run_across_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    task = prepared()
    records = run_datasets(DataConfig(), task, task.data.heldout, [])
    first = Tracker(uri, "inputs", "run")
    first.log_inputs(records + records)  # repeats within one start are dropped too
    state = {**first.state_dict(), "pending_inputs": records}  # as if the checkpoint still held them
    assert first.finish()
    client = MlflowClient(uri)
    once = run_inputs(client, first.run_id)
    assert [(n, c) for n, c, _ in once] == [("arithmetic", "training"), ("arithmetic:heldout", "selection")]
    assert once[0][2] == {"problems": 5, "labelled": 4, "dropped_for_length": 2}

    resumed = Tracker(uri, "inputs", "run")
    resumed.load_state_dict(state)
    resumed.log_inputs(records)
    assert resumed.finish() and resumed.run_id == first.run_id
    assert run_inputs(client, first.run_id) == once

    other = run_datasets(DataConfig(), prepared(train=6), task.data.heldout, [])  # another training pool
    later = Tracker(uri, "inputs", "run")
    later.load_state_dict({"run_id": first.run_id})
    later.log_inputs(other)
    assert later.finish()
    assert [c for _, c, _ in run_inputs(client, first.run_id)] == ["training", "training", "selection"]


@pytest.mark.slow
def test_a_run_lists_its_datasets_once_and_logs_no_count_charts(tiny_cache, tmp_path):
    """Two steps on the synthetic task, then the same command again (the run is finished, so it
    only resumes): the run has its training pool and selection set once each, with their counts
    in the dataset profile, and no step-0 `data/*` metric; no `system/*` either (off on CPU)."""
    from tests.test_trainer import fast_overrides
    from tests.trainer_helpers import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = fast_overrides(tiny_cache, uri, "datasets", "trainer.total_steps=2", "trainer.eval_size=16")
    for _ in range(2):
        train(overrides, tmp_path / "run")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("datasets").experiment_id])
    inputs = run_inputs(client, run.info.run_id)
    assert [(n, c) for n, c, _ in inputs] == [("arithmetic", "training"), ("arithmetic:heldout", "selection")]
    assert inputs[1][2] == {"problems": 16, "labelled": 16, "dropped_for_length": 0}
    assert inputs[0][2]["problems"] > 1000 and inputs[0][2]["dropped_for_length"] == 0
    assert not [k for k in run.data.metrics if k.startswith(("data/", "system/"))]  # system metrics: off on CPU by default
