"""mgrpo-train itself through cluster=slurm, on the tiny model: a 2 x 2 sweep whose last job is
preempted after its first checkpoint and resumes on requeue, continuing the same MLflow run.

The last job, because SLURM 22.05 refuses to signal one task of a job array while other tasks of
it are still pending ("Job can not be altered now"), and the 2-core test cluster runs two at once.

This is the test that allows `max_num_timeout` above 0 in conf/cluster/slurm.yaml: a requeued
trainer job picks up its checkpoint and its MLflow run, with every step logged exactly once.
And a job that SLURM warns of its time limit checkpoints the step it is in before it requeues
(mgrpo/requeue.py). Skips or fails like test_slurm.py when SLURM is not up.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mgrpo import metric_names as names
from mgrpo.sweeps import SWEEP_INFO_FILE
from tests.apps.harness import read_json, require_slurm, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


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
    for key in (names.LOSS, names.SELECTION_ACCURACY):
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
    steps = [m.step for m in client.get_metric_history(run.info.run_id, names.LOSS)]
    assert sorted(steps) == list(range(1, 7)) and len(steps) == len(set(steps))


def run_seconds(job_id: str) -> int:
    """How long a SLURM job has been running (squeue's [[D-]H:]M:S)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%M"], capture_output=True, text=True, check=True).stdout.strip()
    days, _, clock = out.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds + 86400 * int(days or 0)


def slurm(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


@pytest.mark.timeout(300)
def test_a_job_warned_of_its_time_limit_checkpoints_its_step_then_requeues(tiny_cache: Path, tmp_path: Path) -> None:
    """Two tasks get SLURM's real time-limit warning mid-run: both stop after the same step and
    the job checkpoints it (past its only periodic checkpoint, step 0), requeues, resumes there
    and finishes, every step logged exactly once.

    SLURM sends the warning from a check it runs every 30 s, so when it lands is known only to
    within 30 s of steps. To know the step it lands in, the test freezes both tasks (SIGSTOP) once
    the run has logged two steps and cuts the time limit to 1 to 2 minutes from now, so that the
    next check sends USR2 (due once at most signal_delay_s + 30 s are left). SLURM sends SIGCONT
    with it, so the tasks go on with the signal delivered in the step they were frozen in. The
    requeued job is given 10 minutes again."""
    require_slurm()
    from mlflow.tracking import MlflowClient

    from mgrpo.models.loading import resolve_model_path
    from mgrpo.train import compose_config

    total, warning_s = 20, 90
    overrides = [o for o in tiny_overrides(tiny_cache) if not o.startswith("trainer.eval_every")]
    cfg = compose_config(overrides)
    resolve_model_path(cfg.model, cfg.data)  # built here, so the job starts sooner

    sweep = tmp_path / "sweep"
    args = [
        "-m", "cluster=slurm", "resources.tasks_per_node=2", "trainer.device=cpu", "resources.timeout_min=10",
        f"hydra.launcher.signal_delay_s={warning_s}", f"trainer.total_steps={total}", "trainer.checkpoint_every=1000",
        "trainer.eval_every=1000", "trainer.heartbeat_timeout_s=600", "tracking.uri=sqlite:///mlflow.db",
        "tracking.experiment=slurm_warned", "hydra.sweep.dir=sweep", *overrides,
    ]
    proc = subprocess.Popen([sys.executable, "-m", "mgrpo.train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    job_dir, checkpoints = sweep / "0", sweep / "0" / "checkpoints"

    def running() -> bool:
        assert proc.poll() is None, proc.communicate()[0]
        return True

    def logged_steps() -> int:
        if not running() or not (job_dir / "mlflow_run_id").exists():
            return 0
        return len(client.get_metric_history((job_dir / "mlflow_run_id").read_text().strip(), names.LOSS))

    def warned_steps() -> list[int]:
        running()
        return [int(p.name[5:]) for p in checkpoints.glob("step_*") if (p / "COMPLETE").exists() and p.name != "step_000000"]

    try:
        wait_for(lambda: logged_steps() >= 2, 150, "two training steps")
        job_id = next(p for p in (sweep / ".submitit").iterdir() if p.is_dir()).name
        slurm("scancel", "--signal=STOP", job_id)
        # Due at the next check: between 60 and 120 s left now, so 30 to 120 s then (<= warning_s + 30).
        slurm("scontrol", "update", f"JobId={job_id}", f"TimeLimit={math.ceil(run_seconds(job_id) / 60) + 1}")
        wait_for(lambda: bool(warned_steps()), 90, "the checkpoint written on SLURM's warning")
        warned = min(warned_steps())
        slurm("scontrol", "update", f"JobId={job_id}", "TimeLimit=10")
        output, _ = proc.communicate(timeout=200)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert 2 <= warned < total
    logs = sweep / ".submitit" / job_id
    rank0, rank1 = ((logs / f"{job_id}_{task}_log.err").read_text() for task in (0, 1))
    assert "Bypassing signal SIGCONT" in rank0, "SLURM woke the frozen tasks"
    assert "Caught signal SIGUSR2" in rank0 and "this job is timed-out" in rank0
    stopped = [re.findall(r"stopped after step (\d+) on SLURM's warning", log) for log in (rank0, rank1)]
    assert stopped == [[str(warned)], [str(warned)]], "both ranks stop after the same step, once"
    assert f"Requeued job {job_id}" in (logs / f"{job_id}_0_log.out").read_text()
    assert f"resumed from {checkpoints / f'step_{warned:06d}'} at step {warned}" in (job_dir / "train.log").read_text()
    assert sorted(p.name for p in checkpoints.glob("step_*")) == [f"step_{warned:06d}", f"step_{total:06d}"]

    (run,) = client.search_runs([client.get_experiment_by_name("slurm_warned").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mgrpo.world_size"] == "2" and run.data.tags["mgrpo.restarts"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, names.LOSS)]
    assert sorted(steps) == list(range(1, total + 1)), "every step exactly once"
