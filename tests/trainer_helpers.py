"""Shared helpers for trainer tests: run a job like `mgrpo-train` does, read MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from mgrpo.train import compose_config, run

REPO = Path(__file__).resolve().parents[1]


def train(overrides: list[str], output_dir: Path, launch_dir: Optional[Path] = None) -> float:
    """Run one training job in-process, as `mgrpo-train` would (without Hydra's output dirs)."""
    cfg = compose_config(overrides)
    return run(cfg, output_dir, launch_dir or output_dir.parent, {})


def cli(args: list[str], cwd: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run `mgrpo-train` as a user would, in a subprocess."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "mgrpo.train", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def metric_series(uri: str, experiment: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run name -> metric -> [(step, value)] sorted by step, for every run of an experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} not found in {uri}"
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_info in client.search_runs([exp.experiment_id]):
        series = {}
        for key in run_info.data.metrics:
            history = client.get_metric_history(run_info.info.run_id, key)
            series[key] = sorted((m.step, m.value) for m in history)
        out[run_info.info.run_id] = series
    return out
