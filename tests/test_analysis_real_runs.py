"""`mgrpo-analyze` on a SQLite MLflow store filled by real training runs of the tiny model."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from mgrpo import metric_names as names
from mgrpo_analysis.store import Selection, Store
from tests.test_trainer import fast_overrides
from tests.trainer_helpers import train


@pytest.fixture(scope="module")
def real_store(tiny_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_runs")
    uri = f"sqlite:///{root}/mlflow.db"
    for algo in ("mgrpo", "srt"):
        for seed in (0, 1):
            train(
                fast_overrides(tiny_cache, uri, "real", f"algo={algo}", f"trainer.seed={seed}", "trainer.total_steps=4"),
                root / f"{algo}-{seed}",
            )
    return root, uri


def test_loader_reads_what_the_trainer_logged(real_store):
    root, uri = real_store
    store = Store.open(uri)
    runset = store.select(Selection(experiments=("real",)))
    runs = runset.runs
    assert len(runs) == 4
    assert sorted(zip(runs["method"], runs["seed"])) == [("mgrpo", 0), ("mgrpo", 1), ("srt", 0), ("srt", 1)]
    assert set(runs["status"]) == {"FINISHED"}

    curves = store.curves(runs, cache_dir=root / "cache")
    client = MlflowClient(uri)
    for run_id in runs["run_id"]:
        for key in (names.SELECTION_ACCURACY, names.PSEUDO_REWARD, names.ENTROPY):
            expected = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            got = curves[(curves.run_id == run_id) & (curves.metric == key)].sort_values("step")
            assert list(got.step) == [s for s, _ in expected]
            assert list(got.value) == pytest.approx([v for _, v in expected])
    momentum_runs = set(curves[curves.metric == names.ENTROPY_MOMENTUM].run_id)
    assert momentum_runs == set(runs[runs.method == "mgrpo"].run_id)

    again = store.curves(runs, cache_dir=root / "cache")
    assert again.sort_values(["run_id", "metric", "step"]).reset_index(drop=True).equals(
        curves.sort_values(["run_id", "metric", "step"]).reset_index(drop=True)
    )


def test_cli_report_on_real_runs(real_store):
    root, uri = real_store
    out = root / "report"
    result = subprocess.run(
        [sys.executable, "-m", "mgrpo_analysis.cli", "--tracking-uri", uri, "--experiment", "real", "--out", str(out),
         "--cache-dir", str(root / "cache2")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "report.md").exists() and (out / "curves.png").stat().st_size > 10_000
    assert "mgrpo" in result.stdout and "srt" in result.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("real")
    assert not client.search_runs([exp.experiment_id], "tags.`mgrpo.report` = '1'")
    assert f"#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART" in result.stdout
    reports = client.search_runs([client.get_experiment_by_name("real-reports").experiment_id], "tags.`mgrpo.report` = '1'")
    assert len(reports) == 1

    # the label-free evaluation table, from the signals the trainer logged
    import pandas as pd

    from mgrpo_analysis.label_free import LABEL_FREE_DETECTORS

    table = pd.read_csv(out / "label_free_detectors.csv")
    assert list(table["detector"])[:-1] == list(LABEL_FREE_DETECTORS) and table["detector"].iloc[-1].startswith("rule")
    per_run = pd.read_csv(out / "label_free_runs.csv")
    assert len(per_run) == 4 and set(per_run["method"]) == {"mgrpo", "srt"}
    assert (per_run["lf_step"] == per_run["final_step"]).all(), "4-step runs raise no alarm: the choice is the final step"
    assert "Label-free detectors vs the labelled verdict" in result.stdout
    curves = Store.open(uri).curves(Store.open(uri).select(Selection(experiments=("real",))).runs, cache_dir=None)
    logged = set(curves["metric"])
    assert {names.LABEL_MODE_FRAC, names.ANSWER_LOG_MAGNITUDE, names.POLICY_MOMENTUM_DISAGREEMENT,
            names.MOMENTUM_AGREEMENT} <= logged
    artifacts = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert "report.md" in artifacts or any(p.endswith("report.md") for p in artifacts)
