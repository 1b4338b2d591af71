"""tracking.system_metrics: MLflow's own `system/*` metrics in the run, on when asked (and by
default on GPUs), off by default on CPU."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from mgrpo.config import TrackingConfig
from mgrpo.tracking import Tracker

CPU_METRIC = "system/cpu_utilization_percentage"


def test_default_is_on_for_gpus_only():
    assert TrackingConfig().resolved_system_metrics("cuda") is True
    assert TrackingConfig().resolved_system_metrics("cpu") is False
    assert TrackingConfig(system_metrics=True).resolved_system_metrics("cpu") is True
    assert TrackingConfig(system_metrics=False).resolved_system_metrics("cuda") is False


def system_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, CPU_METRIC))


def test_tracker_samples_while_the_run_lives_and_a_resume_continues_the_count(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "system", "run", system_metrics=True)
    first.log_metrics({"train/loss": 1.0}, step=1)
    time.sleep(1.5)
    assert first.finish()
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert {"system/system_memory_usage_megabytes", "system/disk_usage_percentage"} <= set(run.data.metrics)
    before = system_steps(client, first.run_id)
    assert len(before) >= 2 and before == list(range(len(before)))

    resumed = Tracker(uri, "system", "run", system_metrics=True)
    resumed.load_state_dict({"run_id": first.run_id})
    resumed.log_metrics({"train/loss": 0.5}, step=2)
    time.sleep(1.0)
    assert resumed.finish()
    after = system_steps(client, first.run_id)
    assert after[: len(before)] == before and len(after) > len(before) and after == list(range(len(after)))

    off = Tracker(uri, "system", "off")
    off.log_metrics({"train/loss": 1.0}, step=1)
    time.sleep(0.5)
    assert off.finish()
    assert not [k for k in client.get_run(off.run_id).data.metrics if k.startswith("system/")]


@pytest.mark.slow
def test_a_cpu_run_logs_system_metrics_when_asked(tiny_cache, tmp_path, monkeypatch):
    """Two steps with tracking.system_metrics=true on CPU: `system/*` points in the run (the
    default CPU run of tests/test_run_datasets.py has none)."""
    from tests.test_trainer import fast_overrides
    from tests.trainer_helpers import train

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(fast_overrides(tiny_cache, uri, "system", "trainer.total_steps=2", "tracking.system_metrics=true"), tmp_path / "run")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("system").experiment_id])
    assert CPU_METRIC in run.data.metrics and system_steps(client, run.info.run_id)
    assert "train/loss" in run.data.metrics


def test_a_gpu_run_without_nvidias_library_says_how_to_get_gpu_metrics(tmp_path, monkeypatch, caplog):
    import mlflow.system_metrics.system_metrics_monitor as monitor

    def missing():
        raise ImportError("`nvidia-ml-py` is not installed")

    monkeypatch.setattr(monitor, "GPUMonitor", missing)  # as on a node without nvidia-ml-py
    monkeypatch.setattr(monitor, "ROCMMonitor", missing)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "system", "gpu", system_metrics=True, on_gpus=True)
    with caplog.at_level("WARNING", logger="mgrpo.tracking"):
        tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert tracker.finish()
    assert "pip install 'mgrpo[gpu-metrics]'" in caplog.text
