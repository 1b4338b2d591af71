"""The tracker against real MLflow stores: sanitising, resume dedup, and a server that is down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mgrpo.metric_names import SELECTION_ACCURACY
from mgrpo.tracking import Tracker, flatten, resolve_tracking_uri, sanitize_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback, startable and stoppable."""

    def __init__(self, store: Path, port: int) -> None:
        self.store, self.port, self.proc = store, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.store}",
             "--default-artifact-root", str(self.store.parent / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        deadline = time.time() + 90
        import urllib.request

        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)
            self.proc = None


def system_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))


def test_sanitize_and_flatten():
    assert sanitize_key("train/acc@k=1 (x)") == "train/acc_k_1 _x_"
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
    assert resolve_tracking_uri("sqlite:///mlflow.db", Path("/base")) == "sqlite:////base/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db", Path("/base")) == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://host:5000", Path("/base")) == "http://host:5000"


def test_resumed_run_skips_points_already_logged(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "exp", "r", run_id_file=tmp_path / "run_id")
    for step in range(1, 6):
        first.log_metrics({"train/loss": step * 1.0}, step)
    state = first.state_dict()

    again = Tracker(uri, "exp", "r", run_id_file=tmp_path / "run_id")
    again.load_state_dict(state)
    for step in range(3, 9):
        again.log_metrics({"train/loss": step * 1.0}, step)
    assert again.finish()
    history = MlflowClient(uri).get_metric_history(first.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    assert MlflowClient(uri).get_run(first.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_store_down_at_start_and_mid_run_loses_nothing(tmp_path, monkeypatch):
    """Also the system metrics (tracking.system_metrics): sampled once the run exists, and again
    after the outage, continuing their count."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    server = MlflowServer(tmp_path / "server.db", free_port())
    tracker = Tracker(server.uri, "outage", "r", retry_seconds=0.5, run_id_file=tmp_path / "run_id", system_metrics=True)
    tracker.log_params({"algo.momentum": 0.99})
    for step in range(1, 4):
        tracker.log_metrics({"train/loss": float(step)}, step)
    assert tracker.run_id is None and len(tracker.pending.metrics) == 3

    server.start()
    time.sleep(0.6)
    tracker.log_metrics({"train/loss": 4.0}, 4)
    assert tracker.run_id is not None and not tracker.pending.metrics
    time.sleep(1.0)
    before = system_steps(MlflowClient(server.uri), tracker.run_id)
    assert before

    server.stop()
    for step in range(5, 8):
        tracker.log_metrics({"train/loss": float(step)}, step)
    assert len(tracker.pending.metrics) == 3

    server.start()
    try:
        tracker.log_metrics({"train/loss": 8.0}, 8)
        time.sleep(1.0)
        assert tracker.finish(wait_seconds=30)
        client = MlflowClient(server.uri)
        after = system_steps(client, tracker.run_id)
        assert after[: len(before)] == before and len(after) > len(before) and len(set(after)) == len(after)
        history = client.get_metric_history(tracker.run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(1, 9)]
        assert client.get_run(tracker.run_id).data.params["algo.momentum"] == "0.99"
    finally:
        server.stop()


@pytest.mark.slow
def test_training_with_the_tracking_server_down_loses_nothing(tiny_cache, tmp_path):
    """Real runs: one whose server is down from the start, one whose server dies mid-run. Both
    train to the end; once the server is back, rerunning the same command sends what was kept in
    the checkpoint, into the same run, each step exactly once."""
    from tests.test_trainer import fast_overrides
    from tests.trainer_helpers import cli

    server = MlflowServer(tmp_path / "server.db", free_port())
    common = ["trainer.total_steps=6", "tracking.retry_seconds=1"]

    def command(name: str) -> list[str]:
        return [*fast_overrides(tiny_cache, server.uri, name, *common), f"trainer.output_dir={tmp_path}/{name}"]

    down_from_start = cli(command("down_at_start"), cwd=tmp_path)
    assert down_from_start.returncode == 0, down_from_start.stderr[-3000:]
    assert "unreachable" in down_from_start.stdout + down_from_start.stderr

    server.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mgrpo.train", *command("down_mid_run")], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not (tmp_path / "down_mid_run" / "checkpoints" / "step_000002").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        server.stop()
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]

        server.start()
        for name in ("down_at_start", "down_mid_run"):
            again = cli(command(name), cwd=tmp_path)
            assert again.returncode == 0 and "already finished" in again.stderr, again.stderr[-3000:]
            client = MlflowClient(server.uri)
            runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
            assert len(runs) == 1, name
            steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
            assert steps == [1, 2, 3, 4, 5, 6], name
            assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, SELECTION_ACCURACY)) == [0, 2, 4, 6]
            assert runs[0].info.status == "FINISHED"
    finally:
        server.stop()
