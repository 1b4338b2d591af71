"""The collapse lab end to end in CI: one (base, seed) pair of the lab's table, both methods for
the preset's 200 steps, and the report (experiments/collapse_lab/README.md has the table).

What is asserted is what held on every (base, seed) pair of the table, not what one pair shows:
SRT ends well below its own peak, M-GRPO is never flagged, and M-GRPO ends above SRT. The base is
the shipped one (`model.tiny.seed=1`), the same weights on every machine; the RL trajectory still
follows this CPU's float order, so the thresholds keep a margin below the smallest value the table
measured (SRT's fall: 0.06 at the least; M-GRPO - SRT at the final step: 0.015 at the least)."""

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
        "model.tiny.seed=1",
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
    srt, mgrpo = verdicts.loc["srt"], verdicts.loc["mgrpo"]
    assert srt["peak"] - srt["final"] >= 0.04, verdicts.to_string()
    assert not bool(mgrpo["collapsed"]), verdicts.to_string()
    assert mgrpo["final"] > srt["final"], verdicts.to_string()

    # The report says per run whether the vote could teach: first and last evaluation.
    checks = pd.read_csv(out / "vote_check.csv").set_index("method")
    assert set(checks.index) == {"srt", "mgrpo"} and (checks["first_step"] == 0).all() and (checks["last_step"] == 200).all()
    assert "Could the vote teach?" in (out / "report.md").read_text()

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("collapse_lab_ci").experiment_id], "tags.`mgrpo.algo` = 'srt'")
    if srt["collapsed"]:
        assert runs[0].data.tags["mgrpo.collapsed"] == "true", "the online monitor should have tagged the SRT run"
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "entropy.png").exists()
