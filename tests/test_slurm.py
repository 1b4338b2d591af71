"""Sweeps through a real SLURM cluster (cluster=slurm: Hydra's submitit launcher, mgrpo's result
collection), with the dummy app standing in for the trainer.

Needs a SLURM cluster with accounting: `bash .ci/slurm_single_node.sh` starts one on this machine.
Without one these tests skip, saying so, except in CI (CI=true) or when MGRPO_SLURM=1, where they
fail. Each test has its own sweep dir, so its own submitit folder: a reused folder returns stale
result pickles once a fresh cluster restarts job ids.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mgrpo.sweeps import SWEEP_INFO_FILE
from tests.apps.harness import read_json, require_slurm, run_app, start_app, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


@pytest.fixture(autouse=True)
def _slurm() -> None:
    require_slurm()


@pytest.mark.timeout(150)
def test_grid_multirun_on_slurm(tmp_path: Path) -> None:
    """2 x 2 as one SLURM job array: every job's output lands in the sweep dir and every job reads
    the sweep's identity. (MLflow from parallel SLURM jobs: test_slurm_trainer.py.)"""
    out = run_app(["-m", "x=0,1", "y=0,1", "cluster=slurm", "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    sweep = tmp_path / "sweep"
    info = read_json(sweep / SWEEP_INFO_FILE)
    assert info["launcher"] == "submitit_slurm" and info["swept_params"] == ["x", "y"]
    job_ids = set()
    for num in range(4):
        job = read_json(sweep / str(num) / "job.json")
        assert job["sweep"]["sweep_id"] == info["sweep_id"] and job["job_num"] == num
        job_ids.add(job["job_id"])
        assert (sweep / str(num) / "result.json").exists()
    array = {j.split("_")[0] for j in job_ids}
    assert len(job_ids) == 4 and len(array) == 1  # one array job, four tasks
    assert (sweep / ".submitit" / f"{array.pop()}_0").is_dir()


STEPS = 20  # of 0.5 s each


@pytest.mark.timeout(150)
def test_interrupted_jobs_are_requeued_and_resume(tmp_path: Path) -> None:
    """One job hits its time limit: submitit's `_interrupt(timeout=True)` sends USR2 as SLURM does
    before the limit, and with a 1-minute limit submitit counts it as a timeout. The launcher's
    checkpoint() resubmits the same job, which the slurm preset allows (max_num_timeout > 0).
    Another is requeued by SLURM itself (`scontrol requeue`). Both restart in the same output dir
    and continue from their state: every step is done exactly once. (Preemption:
    test_slurm_trainer.py.) Two one-job sweeps, because SLURM refuses to signal a task of an array
    whose other tasks are pending."""
    import submitit

    sweeps = {"timeout": tmp_path / "timeout", "requeue": tmp_path / "requeue"}
    procs = {
        name: start_app(["-m", f"steps={STEPS}", "step_seconds=0.5", "cluster=slurm", f"hydra.sweep.dir={sweep}",
                         "resources.timeout_min=1", "hydra.launcher.signal_delay_s=15"], tmp_path)
        for name, sweep in sweeps.items()
    }

    def running_job(sweep: Path) -> str:
        """The SLURM id of the sweep's job once it has done a step, checking it has seconds of work
        left, so the interrupt lands while it runs even on a loaded machine."""
        wait_for(lambda: (sweep / "0" / "state.json").exists(), 90, f"the job of {sweep.name} to start")
        done = len(read_json(sweep / "0" / "state.json")["done"])
        assert done < STEPS // 2, f"{sweep.name}: {done} of {STEPS} steps done before the interrupt"
        return read_json(sweep / "0" / "job.json")["job_id"]

    try:
        jobs = {"timeout": running_job(sweeps["timeout"])}
        submitit.SlurmJob(str(sweeps["timeout"] / ".submitit" / "%j"), jobs["timeout"])._interrupt(timeout=True)
        jobs["requeue"] = running_job(sweeps["requeue"])
        subprocess.run(["scontrol", "requeue", jobs["requeue"]], check=True)
        outputs = {name: proc.communicate(timeout=120)[0] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]
    job = jobs["timeout"]
    assert "this job is timed-out" in (sweeps["timeout"] / ".submitit" / job / f"{job}_0_log.err").read_text()
    for name, sweep in sweeps.items():
        attempts = [json.loads(line) for line in (sweep / "0" / "attempts.jsonl").read_text().splitlines() if line]
        assert [a["restart"] for a in attempts] == ["0", "1"], (name, attempts)
        assert {a["job_id"] for a in attempts} == {jobs[name]}
        assert read_json(sweep / "0" / "state.json")["done"] == list(range(STEPS))
        assert (sweep / "0" / "result.json").exists()


@pytest.mark.timeout(150)
def test_optuna_study_on_slurm_resumes(tmp_path: Path) -> None:
    """Batches of 2 trials as SLURM job arrays; a failed trial is marked FAIL with its logs and the
    study goes on; a rerun with a larger n_trials continues the same study from its SQLite file."""

    def args(n_trials: int) -> list[str]:
        return ["-m", "cluster=slurm", "hydra/sweeper=mgrpo_optuna", "hydra.sweeper.storage=sqlite:///optuna.db",
                "hydra.sweeper.study_name=slurm", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=2",
                "hydra.sweeper.sampler=tpe", "x=interval(-2, 2)", "y=-1,-0.5,0,0.5", "fail_jobs=[1]",
                "hydra.sweep.dir=sweep"]

    out = run_app(args(4), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    out = run_app(args(6), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    trials = optuna.load_study(study_name="slurm", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 4
    logs = trials[1].user_attrs["logs"]
    assert logs[0] == str(tmp_path / "sweep" / "1" / "app.log")
    assert any(p.endswith("_log.err") and "/.submitit/" in p for p in logs)
    assert all((tmp_path / "sweep" / str(n) / "job.json").exists() for n in range(6))


@pytest.mark.timeout(150)
def test_failed_slurm_jobs_are_reported_and_the_others_complete(tmp_path: Path) -> None:
    """Job 1 raises in Python; job 2 dies without a result (as when SLURM kills it). Both are
    reported with their log paths, jobs 0 and 3 complete, and the sweep exits non-zero."""
    sweep = tmp_path / "sweep"
    crashing = start_app(["-m", "x=0,1,2,3", "cluster=slurm", "fail=crash", "fail_jobs=[2]", "hydra.sweep.dir=sweep2"],
                         cwd=tmp_path)
    try:
        raised = run_app(["-m", "x=0,1", "cluster=slurm", "fail_jobs=[1]", "hydra.sweep.dir=sweep"], cwd=tmp_path)
        crashed_output, _ = crashing.communicate(timeout=120)
    finally:
        crashing.kill()

    assert raised.returncode == 1
    job1 = read_json(sweep / "1" / "job.json")["job_id"]
    assert (
        f"job #1 (x=1 cluster=slurm fail_jobs=[1]) failed: ValueError: dummy failure in job 1; "
        f"log: {sweep / '1' / 'app.log'}, {sweep / '.submitit' / job1 / f'{job1}_0_log.err'}"
    ) in raised.stdout
    assert "dummy failure in job 1" in (sweep / "1" / "app.log").read_text()
    assert (sweep / "0" / "result.json").exists()

    assert crashing.returncode == 1
    sweep2 = tmp_path / "sweep2"
    job2 = read_json(sweep2 / "2" / "job.json")["job_id"]
    assert f"failed: JobFailedError: SLURM job {job2} ended without a result (state FAILED)" in crashed_output
    assert str(sweep2 / ".submitit" / job2 / f"{job2}_0_log.err") in crashed_output
    assert "1 of 4 jobs failed" in crashed_output
    assert all((sweep2 / n / "result.json").exists() for n in ("0", "1", "3"))
