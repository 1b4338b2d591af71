"""The collapse lab end to end, shortened for CI: SRT collapses, M-GRPO holds, and the report
says so (experiments/collapse_lab/README.md has the full-length results)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from mlflow import MlflowClient

from mgrpo.tracking import get_or_create_experiment


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_collapse_lab_report_flags_srt_and_not_mgrpo(tiny_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # The store is created once before the two jobs start, as a sweep does: two processes
    # creating one new SQLite store at once race in MLflow's migrations.
    get_or_create_experiment(MlflowClient(uri), uri, "collapse_lab_ci")
    common = [
        "experiment=collapse_lab",
        "trainer.seed=0",
        "trainer.total_steps=200",
        "trainer.progress=false",
        f"model.tiny.cache_dir={tiny_cache}",
        f"tracking.uri={uri}",
        "tracking.experiment=collapse_lab_ci",
    ]
    jobs = {
        algo: subprocess.Popen(
            [sys.executable, "-m", "mgrpo.train", *common, f"algo={algo}", f"trainer.output_dir={tmp_path}/{algo}"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for algo in ("srt", "mgrpo")
    }
    for algo, job in jobs.items():
        _, stderr = job.communicate(timeout=1400)
        assert job.returncode == 0, f"{algo}: {stderr[-3000:]}"

    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "mgrpo_analysis.cli", "--tracking-uri", uri, "--experiment", "collapse_lab_ci",
         "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = pd.read_csv(out / "verdicts.csv").set_index("method")
    assert bool(verdicts.loc["srt", "collapsed"]), verdicts.to_string()
    assert not bool(verdicts.loc["mgrpo", "collapsed"]), verdicts.to_string()
    assert verdicts.loc["mgrpo", "final"] > verdicts.loc["srt", "final"] + 0.1

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("collapse_lab_ci").experiment_id], "tags.`mgrpo.algo` = 'srt'")
    assert runs[0].data.tags["mgrpo.collapsed"] == "true", "the online monitor should have tagged the SRT run"
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "entropy.png").exists()
