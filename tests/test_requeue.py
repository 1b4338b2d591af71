"""SLURM's warning as a flag (mgrpo/requeue.py), without SLURM: the process signals itself.

On the real cluster, with a real time limit: tests/test_slurm_trainer.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mgrpo import metric_names as names
from mgrpo.parallel import Ranks
from mgrpo.requeue import FALLBACK_FRACTION, JobStopped, StopRequest


@pytest.fixture
def previous():
    """A stand-in for submitit's handler: records the signals it is handed, by which thread, and
    whether SIGTERM was blocked there (so that the `scontrol requeue` it starts survives SLURM's
    SIGTERM)."""
    calls: list[tuple[int, str, bool]] = []

    def handler(signum, frame):
        calls.append((signum, threading.current_thread().name, signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    before = signal.signal(signal.SIGUSR2, handler)
    yield calls
    signal.signal(signal.SIGUSR2, before)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def signal_self() -> None:
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.01)  # Python runs the handler in the main thread at the next bytecode


def test_the_signal_only_raises_the_flag_and_requeue_hands_over_once(previous):
    stop = StopRequest(signal.SIGUSR2)
    assert not stop.requested and not stop.agreed(Ranks())
    signal_self()
    signal_self()
    assert stop.requested and stop.agreed(Ranks())
    assert previous == [], "the handler must not act: the loop does, between steps"
    with pytest.raises(SystemExit) as exited:
        stop.requeue()
    assert exited.value.code == -1  # no result: the requeued job writes it
    assert previous == [(signal.SIGUSR2, "MainThread", True)]
    with pytest.raises(SystemExit):
        stop.requeue()
    assert len(previous) == 1
    stop.close()
    signal_self()
    assert len(previous) == 2, "after close() the signal is the previous handler's again"


def test_the_watcher_requeues_when_no_step_ends_in_time(previous):
    stop = StopRequest(signal.SIGUSR2, deadline_s=0.3, poll_s=0.05)
    signal_self()
    start = time.monotonic()
    while not previous and time.monotonic() - start < 10:
        time.sleep(0.05)
    assert previous == [(signal.SIGUSR2, "mgrpo-stop-deadline", True)]
    assert time.monotonic() - start >= 0.25
    with pytest.raises(SystemExit):
        stop.requeue()  # the loop arrives late: exits, and does not requeue a second time
    assert len(previous) == 1
    stop.close()


def test_the_watcher_waits_for_a_signal_and_stops_with_the_run(previous):
    stop = StopRequest(signal.SIGUSR2, deadline_s=0.1, poll_s=0.02)
    time.sleep(0.3)
    assert previous == []
    stop.close()
    signal_self()  # now the previous handler's, called directly
    time.sleep(0.3)
    assert previous == [(signal.SIGUSR2, "MainThread", False)]


def test_only_a_submitit_slurm_task_gets_a_stop_request(previous, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert StopRequest.for_submitit_job(300) is None
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    stop = StopRequest.for_submitit_job(300)
    assert stop is not None and stop.signum == signal.SIGUSR2
    assert stop.deadline_s == pytest.approx(FALLBACK_FRACTION * 300)
    stop.close()
    default = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        assert StopRequest.for_submitit_job(300) is None, "no submitit handler to hand over to"
    finally:
        signal.signal(signal.SIGUSR2, default)


def _agree(rank: int, store: str, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    signal.signal(signal.SIGUSR2, lambda *_: None)
    stop = StopRequest(signal.SIGUSR2)
    ranks = Ranks(rank, 2)
    before = stop.agreed(ranks)
    if rank == 0:
        signal_self()
    out.put((rank, before, stop.agreed(ranks), stop.requested))
    dist.destroy_process_group()


def test_two_ranks_agree_when_only_one_was_signalled(tmp_path):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_agree, args=(rank, str(tmp_path / "store"), out)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert results == [(0, False, True, True), (1, False, True, False)]


@pytest.mark.slow
def test_a_warned_run_checkpoints_after_its_step_and_resumes_as_if_never_stopped(tiny_cache, tmp_path, monkeypatch, previous):
    """Warned during step 3 of 5, with no periodic checkpoint due: the run checkpoints step 3 and
    stops; the rerun resumes there and logs exactly what an uninterrupted run logs."""
    from mlflow import MlflowClient

    from mgrpo.train import run
    from mgrpo.trainer import Trainer
    from tests.test_trainer import deterministic, fast_overrides
    from tests.trainer_helpers import compose_config, metric_series, train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = fast_overrides(tiny_cache, uri, "warned", "trainer.total_steps=5", "trainer.checkpoint_every=100")
    train(fast_overrides(tiny_cache, uri, "uninterrupted", "trainer.total_steps=5"), tmp_path / "reference")

    step_of = Trainer.train_step

    def warned_in_step_3(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)
        return step_of(self, step)

    monkeypatch.setattr(Trainer, "train_step", warned_in_step_3)
    out = tmp_path / "warned"
    stop = StopRequest(signal.SIGUSR2)
    with pytest.raises(JobStopped) as stopped:
        run(compose_config(args), out, tmp_path, {}, stop)
    stop.close()
    assert stopped.value.step == 3 and stopped.value.checkpoint == out / "checkpoints" / "step_000003"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000", "step_000003"]
    assert previous == [], "requeueing is mgrpo-train's business, after the run is closed"

    client = MlflowClient(tracking_uri=uri)
    (paused,) = client.search_runs([client.get_experiment_by_name("warned").experiment_id])
    assert paused.info.status == "KILLED"

    monkeypatch.setattr(Trainer, "train_step", step_of)
    resumed = StopRequest(signal.SIGUSR2)
    run(compose_config(args), out, tmp_path, {}, resumed)
    resumed.close()
    runs = metric_series(uri, "warned")
    assert len(runs) == 1, "the resumed job continues the same MLflow run"
    warned = deterministic(next(iter(runs.values())))
    assert [s for s, _ in warned[names.LOSS]] == [1, 2, 3, 4, 5]
    assert warned == deterministic(next(iter(metric_series(uri, "uninterrupted").values())))
    assert client.get_run(paused.info.run_id).info.status == "FINISHED"
