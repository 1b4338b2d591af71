"""One run on several ranks, as 2 CPU processes on gloo: the real trainer under torchrun (and as
SLURM-style tasks started by hand), compared with the 1-rank run; the EMA without collectives;
float32 master weights under bf16 compute; a rank with nothing to train; kill and resume on
2 and on 1 rank; a dead rank that must not hang the other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mgrpo import metric_names as names
from tests.trainer_helpers import REPO, cli, metric_series, train
from tests.test_trainer import deterministic, fast_overrides

RANKS_APP = REPO / "tests" / "apps" / "ranks_app.py"
EXACT_TOLERANCE = {names.LOSS: 1e-5, names.PG_LOSS: 1e-5, names.KL: 1e-6}
"""Absolute tolerances of metrics that are sums of near-zero terms; every other metric must agree
to 1e-4 relative (the 2-rank run sums gradients in another order, and its engine is a copy)."""


def torchrun(args: list[str], cwd: Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 <args>` as a user would run it."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args: list[str], cwd: Path, world_size: int = 2) -> list[subprocess.Popen]:
    """The trainer as `world_size` separate processes with env:// rendezvous, as SLURM tasks run:
    no torchrun agent watches them, so a dead rank is the survivors' problem."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        }
        procs.append(
            subprocess.Popen([sys.executable, "-m", "mgrpo.train", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    return procs


def assert_close_runs(one: dict, two: dict) -> None:
    """Equal metrics within tolerance. The momentum's drift is logged only where its engine holds
    its own weights (every engine on 2 ranks; none on 1 with the HF engine), so it may be missing."""
    one, two = deterministic(one), deterministic(two)
    optional = {names.ROLLOUT_LOGPROB_DRIFT_MOMENTUM}
    assert set(one) - optional == set(two) - optional, set(one) ^ set(two)
    one = {k: v for k, v in one.items() if k in two}
    for key in one:
        assert [s for s, _ in one[key]] == [s for s, _ in two[key]], key
        for (step, a), (_, b) in zip(one[key], two[key]):
            tolerance = EXACT_TOLERANCE.get(key, 1e-4 * max(abs(a), abs(b)) + 1e-7)
            assert abs(a - b) <= tolerance, f"{key} at step {step}: 1 rank {a}, 2 ranks {b}"


def run_app(check: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{check}.json"
    result = torchrun([str(RANKS_APP), check, str(out), *extra], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_ema_step_issues_no_collective(tmp_path):
    result = run_app("ema", tmp_path)
    assert result["sharded"] and result["moved"] == result["params"]
    assert any("all_gather" in e for e in result["forward_events"]), "the profiler must see FSDP's collectives"
    assert result["ema_events"] == [], f"the EMA step communicated: {result['ema_events']}"


def test_bf16_compute_keeps_float32_masters_that_an_lr_1e6_step_moves(tmp_path):
    result = run_app("bf16", tmp_path)
    assert result["master_dtypes"] == ["torch.float32"]
    assert result["changed_fraction"] > 0.9


def test_bf16_autocast_on_one_rank_moves_float32_masters():
    """One rank: the same rule through autocast; a bf16 model stepped directly barely moves."""
    from mgrpo.config import TinyModelConfig
    from mgrpo.models.scorer import ResponseScorer
    from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    ids = torch.randint(3, 90, (4, 16), generator=torch.Generator().manual_seed(0))
    response = torch.ones(4, 8, dtype=torch.bool)

    def changed_fraction(model: torch.nn.Module, autocast: bool) -> float:
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logprobs, _ = ResponseScorer(model)(ids, torch.ones_like(ids), response, 1.0)
        (-logprobs.sum()).backward()
        optimizer.step()
        return sum(int((p != b).sum()) for p, b in zip(model.parameters(), before)) / sum(b.numel() for b in before)

    master = build_tiny_model(TinyModelConfig(), tokenizer)
    assert changed_fraction(master, autocast=True) > 0.9
    assert next(master.parameters()).dtype == torch.float32
    assert changed_fraction(build_tiny_model(TinyModelConfig(), tokenizer).to(torch.bfloat16), autocast=False) < 0.2


def test_watchdog_stop_waits_for_its_heartbeat_thread():
    """stop() returns once the heartbeat thread has ended, so no thread is inside a store call
    while the interpreter exits: that aborts a finished run ("terminate called without an active
    exception", pytorch/pytorch#38228; seen once at a 2-rank run's exit)."""
    from mgrpo.parallel import RankWatchdog

    class SlowStore:
        def add(self, key, amount):
            time.sleep(0.2)
            return 0

        def check(self, keys):
            return False

    watchdog = RankWatchdog(SlowStore(), rank=0, world_size=2, interval_s=0.01, timeout_s=60).start()
    time.sleep(0.05)  # the heartbeat thread is inside a slow store call now
    watchdog.stop()
    assert not watchdog._thread.is_alive()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["mgrpo", "srt"])
def test_two_ranks_match_one_rank(algo, tiny_cache, tmp_path):
    """The real trainer on 2 ranks gives the 1-rank run's per-step metrics (tolerance above);
    kl_coef > 0, so the sharded reference is exercised too, and the 2-rank run recomputes its
    activations (gradient checkpointing), which must change nothing."""
    uri_one, uri_two = f"sqlite:///{tmp_path}/one.db", f"sqlite:///{tmp_path}/two.db"
    train(fast_overrides(tiny_cache, uri_one, "ranks", f"algo={algo}", "algo.kl_coef=0.01"), tmp_path / "one")
    two = torchrun(
        ["-m", "mgrpo.train", *fast_overrides(tiny_cache, uri_two, "ranks", f"algo={algo}", "algo.kl_coef=0.01"),
         "trainer.device=cpu", "model.gradient_checkpointing=true", f"trainer.output_dir={tmp_path}/two"],
        cwd=tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    runs = metric_series(uri_two, "ranks")
    assert len(runs) == 1, "two ranks must make one MLflow run"
    assert_close_runs(next(iter(metric_series(uri_one, "ranks").values())), next(iter(runs.values())))


@pytest.mark.slow
def test_a_rank_with_nothing_to_train_does_not_hang(tiny_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # In bf16 compute (FSDP mixed precision over float32 shards), the paper's precision.
    args = [str(tmp_path / "run"), *fast_overrides(tiny_cache, uri, "empty", "trainer.total_steps=2", "trainer.device=cpu", "model.dtype=bfloat16")]
    result = run_app("train-empty-rank", tmp_path, *args)
    assert result["finished"]
    series = next(iter(metric_series(uri, "empty").values()))
    per_rank = 2 * 6  # 2 prompts per rank x 6 policy samples (G = 8, N = 2)
    trained = [v for _, v in series[names.TRAINED_SAMPLES]]
    assert all(0 < v <= per_rank for v in trained), trained  # rank 0's samples only
    assert [s for s, _ in series[names.LOSS]] == [1, 2]


@pytest.mark.slow
def test_kill_two_ranks_then_resume_on_two_and_on_one(tiny_cache, tmp_path):
    """SIGKILL a 2-rank run after a checkpoint; rerunning the same command resumes the same MLflow
    run with every step once, and the same checkpoint also resumes on one rank; both end where an
    uninterrupted run ends."""
    steps = ("trainer.total_steps=6", "trainer.checkpoint_every=2", "trainer.device=cpu")
    reference_uri = f"sqlite:///{tmp_path}/reference.db"
    train(fast_overrides(tiny_cache, reference_uri, "resume", *steps), tmp_path / "reference")

    uri_a, uri_b = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    args = ["-m", "mgrpo.train", *fast_overrides(tiny_cache, uri_a, "resume", *steps), f"trainer.output_dir={tmp_path}/a"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.time() + 300
    while not (tmp_path / "a" / "checkpoints" / "step_000002" / "COMPLETE").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copy(tmp_path / "a.db", tmp_path / "b.db")

    resumed = torchrun(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one_rank = cli([*fast_overrides(tiny_cache, uri_b, "resume", *steps), f"trainer.output_dir={tmp_path}/b"], cwd=tmp_path)
    assert one_rank.returncode == 0, one_rank.stderr[-3000:]

    reference = next(iter(metric_series(reference_uri, "resume").values()))
    for uri in (uri_a, uri_b):
        runs = metric_series(uri, "resume")
        assert len(runs) == 1, "a resumed job must continue the same MLflow run"
        series = next(iter(runs.values()))
        for key, points in series.items():
            logged = [s for s, _ in points]
            assert len(logged) == len(set(logged)), f"{key} has duplicated steps"
        assert_close_runs(reference, series)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_stops_the_other_with_its_name(victim, tiny_cache, tmp_path):
    """Ranks started as SLURM starts tasks (no torchrun agent): SIGKILL one, the other must exit
    within the heartbeat bound with an error naming the dead rank; rerunning resumes."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        *fast_overrides(tiny_cache, uri, "dead_rank", "trainer.total_steps=8", "trainer.checkpoint_every=2"),
        "trainer.device=cpu", "trainer.heartbeat_timeout_s=5", f"trainer.output_dir={tmp_path}/run",
    ]
    procs = start_ranks(args, tmp_path)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "run" / "checkpoints" / "step_000002" / "COMPLETE").exists():
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = procs[1 - victim]
        survivor.wait(timeout=60)
        waited = time.monotonic() - killed_at
        stderr = survivor.stderr.read()
    finally:
        for p in procs:
            p.kill()
    assert survivor.returncode != 0
    assert waited < 30, f"the surviving rank took {waited:.0f} s to stop"
    assert f"rank {victim} " in stderr and "Rerun the same command" in stderr, stderr[-3000:]
    if victim == 1:
        rerun = start_ranks(args, tmp_path)
        for p in rerun:
            p.wait(timeout=300)
        assert [p.returncode for p in rerun] == [0, 0], rerun[0].stderr.read()[-3000:]
        series = next(iter(metric_series(uri, "dead_rank").values()))
        assert [s for s, _ in series[names.LOSS]] == list(range(1, 9))


def test_prompts_per_step_must_split_evenly_over_ranks(tiny_cache, tmp_path):
    result = torchrun(
        ["-m", "mgrpo.train", *fast_overrides(tiny_cache, f"sqlite:///{tmp_path}/m.db", "split", "trainer.prompts_per_step=3"),
         "trainer.device=cpu", f"trainer.output_dir={tmp_path}/run"],
        cwd=tmp_path, timeout=300,
    )
    assert result.returncode != 0
    assert "trainer.prompts_per_step=3 cannot be split over 2 ranks" in result.stderr


def test_world_size_is_read_from_the_launcher_environment(monkeypatch):
    from mgrpo.parallel import Ranks, init_ranks, launched_ranks

    for key in ("WORLD_SIZE", "SLURM_NTASKS", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    assert not launched_ranks()
    single = init_ranks("cpu", 60, 60)
    assert (single.rank, single.world_size, single.device.type) == (0, 1, "cpu")
    assert single.all_reduce([1.0, 2.0]) == [1.0, 2.0] and single.shard(4) == slice(0, 4)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert launched_ranks()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_ranks()
    assert single.reduce_metrics({"a": (0.5, 2.0), "b": (1.0, 0.0)}, {"s": 3.0}, {"t": 1.0}) == {"a": 0.5, "s": 3.0, "t": 1.0}
    with pytest.raises(ValueError, match="cannot be split over 2 ranks"):
        Ranks(1, 2).shard(3)
    assert Ranks(1, 2).shard(4) == slice(2, 4)


def test_vllm_engine_without_vllm_stops_before_training_with_the_fix(tiny_cache, tmp_path):
    """The main venv has no vLLM: asking for it is an error before any step, naming what to do."""
    result = cli(["rollout.engine=vllm", *fast_overrides(tiny_cache, f"sqlite:///{tmp_path}/m.db", "novllm"), f"trainer.output_dir={tmp_path}/run"], cwd=tmp_path, timeout=600)
    if "vllm" in sys.modules or result.returncode == 0:
        pytest.skip("vLLM is installed here")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'mgrpo[vllm]'" in result.stderr and "rollout.engine=hf" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
