"""mgrpo-train itself through cluster=slurm, on the tiny model: a 2 x 2 sweep whose last job is
preempted after its first checkpoint and resumes on requeue, continuing the same MLflow run.

The last job, because SLURM 22.05 refuses to signal one task of a job array while other tasks of
it are still pending ("Job can not be altered now"), and the 2-core test cluster runs two at once.

This is the test that allows `max_num_timeout` above 0 in conf/cluster/slurm.yaml: a requeued
trainer job picks up its checkpoint and its MLflow run, with every step logged exactly once.
Skips or fails like test_slurm.py when SLURM is not up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mgrpo.sweeps import SWEEP_INFO_FILE
from tests.apps.harness import read_json, require_slurm, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def tiny_overrides(tiny_cache: Path) -> list[str]:
    """The trainer tests' fast settings (same tiny model, so the session builds it once)."""
    return [
        f"model.tiny.cache_dir={tiny_cache}",
        "model.tiny.pretrain_steps=60",
        "model.tiny.target_accuracy=null",
        "data.heldout_size=48",
        "trainer.prompts_per_step=4",
        "trainer.eval_every=2",
        "trainer.progress=false",
        "algo.num_rollouts=8",
        "rollout.max_new_tokens=24",
    ]


@pytest.mark.timeout(300)
def test_trainer_sweep_on_slurm_with_a_preempted_job(tiny_cache: Path, tmp_path: Path) -> None:
    require_slurm()
    import submitit
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    args = [
        "-m", "cluster=slurm", "algo=mgrpo,srt", "trainer.seed=0,1", "trainer.total_steps=4",
        "trainer.checkpoint_every=2", "tracking.uri=sqlite:///mlflow.db", "tracking.experiment=slurm_e2e",
        "hydra.sweep.dir=sweep", *tiny_overrides(tiny_cache),
    ]
    proc = subprocess.Popen([sys.executable, "-m", "mgrpo.train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any((sweep / "3" / "checkpoints").glob("step_*")), 200, "job 3's first checkpoint")
        run_id_before = (sweep / "3" / "mlflow_run_id").read_text().strip()
        job_id = next((sweep / ".submitit").glob("*_3")).name
        submitit.SlurmJob(str(sweep / ".submitit" / "%j"), job_id)._interrupt()
        output, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.err").read_text()
    assert "this job is preempted" in log

    info = read_json(sweep / SWEEP_INFO_FILE)
    assert info["swept_params"] == ["algo", "trainer.seed"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("slurm_e2e").experiment_id])
    assert len(runs) == 4
    assert {r.data.tags["mgrpo.sweep_id"] for r in runs} == {info["sweep_id"]}
    assert {r.data.tags["mgrpo.output_dir"] for r in runs} == {str(sweep / str(n)) for n in range(4)}
    assert all(r.info.status == "FINISHED" for r in runs)

    resumed = next(r for r in runs if r.data.tags["mgrpo.output_dir"] == str(sweep / "3"))
    assert resumed.info.run_id == run_id_before  # the same MLflow run continued after the requeue
    assert resumed.data.tags["mgrpo.restarts"] == "1"
    uninterrupted = next(r for r in runs if r.data.tags["mgrpo.output_dir"] == str(sweep / "2"))
    for key in ("train/loss", "val/accuracy"):
        steps = [m.step for m in client.get_metric_history(resumed.info.run_id, key)]
        expected = [m.step for m in client.get_metric_history(uninterrupted.info.run_id, key)]
        assert sorted(steps) == sorted(expected) and len(steps) == len(set(steps)), (key, steps)


@pytest.mark.timeout(400)
def test_one_run_as_two_slurm_tasks_survives_preemption(tiny_cache: Path, tmp_path: Path) -> None:
    """`resources.tasks_per_node=2`: one SLURM job, two tasks, one rank each, one MLflow run. The
    job is preempted after its first checkpoint; submitit requeues it and both ranks resume."""
    require_slurm()
    import submitit
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    args = [
        "-m", "cluster=slurm", "resources.tasks_per_node=2", "trainer.device=cpu", "trainer.total_steps=6",
        "trainer.checkpoint_every=2", "tracking.uri=sqlite:///mlflow.db", "tracking.experiment=slurm_ranks",
        "hydra.sweep.dir=sweep", *tiny_overrides(tiny_cache),
    ]
    proc = subprocess.Popen([sys.executable, "-m", "mgrpo.train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any((sweep / "0" / "checkpoints").glob("step_000002")), 240, "the first checkpoint")
        job_id = next(p for p in (sweep / ".submitit").iterdir() if p.is_dir()).name
        submitit.SlurmJob(str(sweep / ".submitit" / "%j"), job_id)._interrupt()
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    logs = sweep / ".submitit" / job_id
    assert (logs / f"{job_id}_0_log.err").exists() and (logs / f"{job_id}_1_log.err").exists(), "two tasks"
    assert "this job is preempted" in (logs / f"{job_id}_0_log.err").read_text()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("slurm_ranks").experiment_id])
    assert len(runs) == 1, "two ranks make one MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mgrpo.world_size"] == "2" and run.data.tags["mgrpo.restarts"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 7)) and len(steps) == len(set(steps))
