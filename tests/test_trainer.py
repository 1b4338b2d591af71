"""End-to-end trainer tests on the tiny model (CPU, a few steps each)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mgrpo import checkpoint as ckpt
from mgrpo import metric_names as names
from mgrpo.exports import export_dir
from mgrpo.models import resolve_model_path
from mgrpo.tasks import TaskData
from tests.trainer_helpers import cli, compose_config, metric_series, train

REQUIRED_METRICS = {
    names.SELECTION_ACCURACY,
    names.PSEUDO_REWARD,
    names.LABEL_ACCURACY,
    names.TRUE_ACCURACY,
    names.ENTROPY,
    names.VOTE_SHARE,
    names.FILTERED_FRAC,
    names.ZERO_STD_FRAC,
    names.KL,
    names.LOSS,
    names.GRAD_NORM,
    names.RESPONSE_LENGTH,
    names.LR,
    *map(names.phase_time, ("rollout", "score", "entropy", "filter", "vote", "update", "ema", "signals")),
    names.PAD_RATIO,
}


def fast_overrides(tiny_cache: Path, uri: str, experiment: str, *extra: str) -> list[str]:
    return [
        f"model.tiny.cache_dir={tiny_cache}",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        "data.heldout_size=48",
        "trainer.total_steps=3",
        "trainer.prompts_per_step=4",
        "trainer.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.progress=false",
        "algo.num_rollouts=8",
        *extra,
    ]


def deterministic(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    return {k: v for k, v in series.items() if not k.startswith(names.TIME + "/")}


@pytest.mark.parametrize("algo", ["mgrpo", "srt", "gt_grpo"])
def test_each_algorithm_trains_and_logs_every_metric(algo, tiny_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    train(fast_overrides(tiny_cache, uri, "e2e", f"algo={algo}"), out)

    runs = metric_series(uri, "e2e")
    assert len(runs) == 1
    series = next(iter(runs.values()))
    missing = REQUIRED_METRICS - set(series) - ({names.ENTROPY_MOMENTUM} if algo != "mgrpo" else set())
    assert not missing, f"metrics not logged: {sorted(missing)}"
    if algo == "mgrpo":
        assert names.ENTROPY_MOMENTUM in series
    else:
        assert names.ENTROPY_MOMENTUM not in series
    assert [s for s, _ in series[names.LOSS]] == [1, 2, 3]
    assert all(ratio >= 1.0 for _, ratio in series[names.PAD_RATIO]), "a pass runs over every real token"
    assert [s for s, _ in series[names.SELECTION_ACCURACY]] == [0, 2, 3]
    assert series[names.SELECTION_ACCURACY][0][1] > 0.2, "the base model should answer some held-out problems"

    final = ckpt.latest_checkpoint(out).path
    assert not (final / "policy").exists() and not (final / "momentum").exists(), "a checkpoint holds only what resume needs"
    saved = ckpt.load_tensors(export_dir(out, 3) / "policy")
    cfg = compose_config(fast_overrides(tiny_cache, uri, "e2e", f"algo={algo}"))
    base = ckpt.load_tensors(Path(resolve_model_path(cfg.model, cfg.data)))
    changed = [k for k in base if not torch.equal(base[k], saved[k])]
    assert changed, "the policy's parameters did not change"
    assert not (export_dir(out, 3) / "momentum").exists(), "the momentum is exported only with trainer.export_momentum"


def test_label_free_runs_never_read_training_labels(tiny_cache, tmp_path, monkeypatch):
    """Corrupting the hidden training labels leaves a label-free run's trajectory identical."""
    import mgrpo.trainer as trainer_module

    def run_with(labels: str) -> dict:
        uri = f"sqlite:///{tmp_path}/{labels}.db"
        original = trainer_module.load_task

        def patched(cfg):
            data = original(cfg)
            if labels == "corrupt":
                data = TaskData(
                    train=[type(p)(uid=p.uid, prompt=p.prompt, answer="999999") for p in data.train],
                    heldout=data.heldout,
                )
            return data

        monkeypatch.setattr(trainer_module, "load_task", patched)
        train(fast_overrides(tiny_cache, uri, "leak", "algo=mgrpo"), tmp_path / labels)
        monkeypatch.setattr(trainer_module, "load_task", original)
        return next(iter(metric_series(uri, "leak").values()))

    clean, corrupt = run_with("clean"), run_with("corrupt")
    diagnostics = {names.LABEL_ACCURACY, names.TRUE_ACCURACY}
    for key in deterministic(clean):
        if key in diagnostics:
            continue
        assert clean[key] == corrupt[key], f"{key} changed when only the hidden labels changed"
    assert clean[names.TRUE_ACCURACY] != corrupt[names.TRUE_ACCURACY] or all(
        v == 0 for _, v in corrupt[names.TRUE_ACCURACY]
    ), "the diagnostics should see the corrupted labels"


def test_same_seed_same_metrics(tiny_cache, tmp_path):
    results = []
    for name in ("a", "b"):
        uri = f"sqlite:///{tmp_path}/{name}.db"
        train(fast_overrides(tiny_cache, uri, "det", "trainer.seed=3"), tmp_path / name)
        results.append(deterministic(next(iter(metric_series(uri, "det").values()))))
    assert results[0] == results[1]


@pytest.mark.slow
def test_kill_and_resume_continues_the_same_run(tiny_cache, tmp_path):
    """SIGKILL mid-run, rerun the same command: same MLflow run, every step once, same values."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = fast_overrides(tiny_cache, uri, "resume", "trainer.total_steps=8", "trainer.checkpoint_every=3")
    reference_args = fast_overrides(tiny_cache, uri, "uninterrupted", "trainer.total_steps=8", "trainer.checkpoint_every=3")

    reference = cli([*reference_args, f"trainer.output_dir={tmp_path}/ref"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    command = [sys.executable, "-m", "mgrpo.train", *args, f"trainer.output_dir={tmp_path}/killed"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "step_000003" / "COMPLETE").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]

    resumed = cli([*args, f"trainer.output_dir={tmp_path}/killed"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = metric_series(uri, "resume")
    assert len(runs) == 1, "the resumed job must continue the same MLflow run"
    killed = deterministic(next(iter(runs.values())))
    uninterrupted = deterministic(next(iter(metric_series(uri, "uninterrupted").values())))
    for key, points in killed.items():
        steps_logged = [s for s, _ in points]
        assert len(steps_logged) == len(set(steps_logged)), f"{key} has duplicated steps"
    assert killed == uninterrupted

    again = cli([*args, f"trainer.output_dir={tmp_path}/killed"], cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stderr


def test_bad_config_fails_before_work_with_the_key_named(tmp_path):
    from mgrpo.config import ConfigError
    from mgrpo.config_checks import validate

    cases = {
        "algo.momentum=1.0": "algo.momentum",
        "algo.iqr_k=-1": "algo.iqr_k",
        "algo.num_rollouts=1": "algo.num_rollouts",
        "algo.num_momentum_rollouts=10": "algo.num_momentum_rollouts",
        "rollout.temperature=0": "rollout.temperature",
        "optim.lr=0": "optim.lr",
        f"model.name_or_path={tmp_path}/missing_model": "model.name_or_path",
    }
    for override, key in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(compose_config([override]))

    # As a user sees it: exit status 2, the key named, no output written.
    result = cli(["algo.momentum=1.5", f"trainer.output_dir={tmp_path}/out"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "algo.momentum=1.5 is invalid" in result.stderr and "[0, 1)" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    unknown = cli(["algo=ppo_magic", "tracking.enabled=false"], cwd=tmp_path, timeout=120)
    assert unknown.returncode != 0
    assert "algo" in unknown.stderr and "mgrpo" in unknown.stderr


def test_corrupt_checkpoint_is_reported_and_kept(tiny_cache, tmp_path):
    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    keep = "trainer.keep_finished_state=true"  # the run finishes, and its resume state is what is corrupted
    train(fast_overrides(tiny_cache, uri, "corrupt", "trainer.total_steps=2", keep), out)
    newest = ckpt.latest_checkpoint(out).path
    (newest / "scheduler.pt").unlink()
    before = sorted(p.name for p in newest.iterdir())
    with pytest.raises(ckpt.CheckpointError, match="missing scheduler.pt"):
        train(fast_overrides(tiny_cache, uri, "corrupt", "trainer.total_steps=4", keep), out)
    assert sorted(p.name for p in newest.iterdir()) == before

    (newest / "scheduler.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="cannot be restored"):
        train(fast_overrides(tiny_cache, uri, "corrupt", "trainer.total_steps=2", keep), out)
    (newest / ckpt.MARKER).unlink()
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        train(fast_overrides(tiny_cache, uri, "corrupt", "trainer.total_steps=4"), out)


def test_resume_under_a_different_algorithm_is_refused(tiny_cache, tmp_path):
    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(fast_overrides(tiny_cache, uri, "x", "trainer.total_steps=2", "algo=srt"), out)
    with pytest.raises(ckpt.CheckpointError, match="algo.name"):
        train(fast_overrides(tiny_cache, uri, "x", "trainer.total_steps=2", "algo=mgrpo"), out)


def test_math500_prompts_of_varying_length(tiny_cache, tmp_path, shared_data_dir):
    """Two steps on real MATH-500 prompts with the tiny model: left padding, no crash, metrics logged.
    The MATH prompt template makes a base of its own (none is shipped for it); a short build
    serves this test, which checks shapes, not learning (a full build is 5 minutes of CPU)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(
        fast_overrides(
            tiny_cache,
            uri,
            "math",
            "model.tiny.pretrain_steps=60",
            "model.tiny.target_accuracy=null",
            "data.task=jsonl",
            f"data.train_path={shared_data_dir / 'math500.jsonl'}",
            "data.heldout_size=8",
            "trainer.total_steps=2",
            "rollout.max_new_tokens=8",
            "rollout.max_prompt_tokens=256",
        ),
        tmp_path / "run",
    )
    series = next(iter(metric_series(uri, "math").values()))
    assert [s for s, _ in series[names.LOSS]] == [1, 2]
    assert names.SELECTION_ACCURACY in series


def test_default_config_composes_and_validates():
    from mgrpo.config_checks import validate

    cfg = compose_config([])
    validate(cfg)
    assert cfg.algo.name == "mgrpo" and cfg.algo.resolved_num_momentum_rollouts() == cfg.algo.num_rollouts // 4
    srt = compose_config(["algo=srt"])
    assert srt.algo.resolved_num_momentum_rollouts() == 0 and srt.algo.iqr_k is None


@pytest.mark.slow
def test_local_multirun_over_momentum_and_iqr_k(tiny_cache, tmp_path):
    """`mgrpo-train -m` over (m, k) on the basic launcher: four finished runs in one MLflow
    experiment, each tagged with the sweep id and carrying its swept values as params."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [a for a in fast_overrides(tiny_cache, uri, "local_sweep", "trainer.total_steps=2") if not a.startswith("algo.num_rollouts")]
    result = cli(["-m", *args, "algo.momentum=0.9,0.99", "algo.iqr_k=0.5,null", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("local_sweep").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["mgrpo.sweep_id"] for r in runs}) == 1
    assert set(runs[0].data.tags["mgrpo.swept_params"].split(",")) == {"algo.momentum", "algo.iqr_k"}
    grid = sorted((r.data.params["algo.momentum"], r.data.params["algo.iqr_k"]) for r in runs)
    assert grid == [("0.9", "0.5"), ("0.9", "None"), ("0.99", "0.5"), ("0.99", "None")]


def test_run_directory_names_stay_short_and_distinct():
    from mgrpo.train import SLUG_MAX, _slug

    assert _slug("") == "default" and _slug("algo=srt,trainer.seed=1") == "algo=srt,trainer.seed=1"
    long_a = ",".join(f"trainer.key{i}={i}" for i in range(40))
    long_b = long_a + ",x=1"
    assert len(_slug(long_a).encode()) <= SLUG_MAX and _slug(long_a) != _slug(long_b)
    assert _slug("model.name_or_path=/a/b") == "model.name_or_path=_a_b"


def test_logged_lr_is_the_rate_each_step_used(tiny_cache, tmp_path):
    """With 2 warmup steps of 3, step 1 updates at lr/2 and logs lr/2 (not the next step's lr)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(fast_overrides(tiny_cache, uri, "lr", "algo=srt", "optim.lr=1e-5", "optim.warmup_ratio=0.67", "trainer.eval_every=3"), tmp_path / "run")
    series = next(iter(metric_series(uri, "lr").values()))
    assert [v for _, v in series[names.LR]] == pytest.approx([0.5e-5, 1e-5, 1e-5])
