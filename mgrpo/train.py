"""`mgrpo-train`: the Hydra entry point.

    mgrpo-train                                   # M-GRPO, tiny model, synthetic task, CPU
    mgrpo-train algo=srt trainer.seed=1           # the SRT baseline
    mgrpo-train experiment=collapse_lab algo=srt  # the CPU collapse lab
    mgrpo-train -m experiment=momentum_sweep cluster=slurm resources=h200x8
    torchrun --standalone --nproc_per_node 2 -m mgrpo.train trainer.device=cpu   # one run, 2 ranks

One run is one job of W ranks (`mgrpo.parallel`): W processes started by torchrun, or the W
tasks of one SLURM job (`resources.tasks_per_node`). Only rank 0 talks to MLflow.

A job resumes from the newest checkpoint in its output directory (Hydra's job directory, or
`trainer.output_dir`), continuing the same MLflow run: rerunning a killed command, or a SLURM
requeue, picks up where it stopped. A SLURM job warned of its time limit (or preempted) first
finishes its step and checkpoints it, then requeues (`mgrpo.requeue`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mgrpo.checkpoint import CheckpointError
from mgrpo.config import Config, ConfigError, register_configs
from mgrpo.config_checks import validate
from mgrpo.parallel import RankFailure, Ranks, init_ranks
from mgrpo.models.loading import ModelLoadError
from mgrpo.requeue import JobStopped, StopRequest
from mgrpo.tasks.base import DataError
from mgrpo.run_datasets import run_datasets
from mgrpo.tracking import Tracker, flatten, resolve_tracking_uri
from mgrpo.rollout.handoff import StaleWeightsError
from mgrpo.rollout.vllm import VLLMUnavailableError

log = logging.getLogger("mgrpo")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


SLUG_MAX = 200
"""Longest run directory name: file systems refuse names over 255 bytes."""


def _chart_hint(uri: str, tracker: Tracker) -> str:
    """How to see the run's curves: the MLflow UI command and the chart-view link of its
    experiment (MLflow 3 opens an experiment on its GenAI overview, not on the runs' charts)."""
    from mgrpo_analysis.links import where_to_look

    try:
        from mlflow import MlflowClient

        experiment_id = MlflowClient(uri).get_run(tracker.run_id).info.experiment_id
    except Exception:  # the store is unreachable: the plain hint still helps
        return tracker.url_hint
    return where_to_look(uri, experiment_id)


def _slug(override_dirname: str) -> str:
    """A run directory name from the job's overrides ("default" when there are none); a long
    one is cut and ends in a hash of the whole, so distinct runs keep distinct directories."""
    slug = override_dirname.replace("/", "_") or "default"
    if len(slug.encode()) <= SLUG_MAX:
        return slug
    import hashlib

    digest = hashlib.sha256(slug.encode()).hexdigest()[:12]
    return slug.encode()[: SLUG_MAX - 13].decode(errors="ignore") + "-" + digest


OmegaConf.register_new_resolver("mgrpo_slug", _slug, replace=True)
register_configs()


def compose_config(overrides: list[str]) -> Config:
    """The validated-schema config `mgrpo-train` would build from these overrides (for notebooks,
    benchmarks and tests; Hydra's output-directory settings are not applied)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=overrides))


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_job_id() -> Optional[str]:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


def run(
    cfg: Config, output_dir: Path, launch_dir: Path, sweep_tags: dict[str, str], stop: Optional[StopRequest] = None
) -> float:
    """Train (or resume) one run on this rank; returns the objective. Usable without Hydra.

    With `stop`, a stop request ends the run after a step with its checkpoint: `JobStopped`."""
    validate(cfg)
    t = cfg.trainer
    ranks = init_ranks(t.device, t.collective_timeout_s, t.heartbeat_timeout_s)
    try:
        return _run_rank(cfg, output_dir, launch_dir, sweep_tags, ranks, stop)
    except Exception as err:
        if not ranks.distributed or isinstance(err, (ConfigError, CheckpointError, StaleWeightsError, JobStopped)):
            raise  # every rank raises these alike: nothing to tell the others
        raise ranks.fail(err) from err
    finally:
        ranks.close()


def _run_rank(
    cfg: Config, output_dir: Path, launch_dir: Path, sweep_tags: dict[str, str], ranks: Ranks, stop: Optional[StopRequest]
) -> float:
    from mgrpo.trainer import Trainer

    if cfg.model.reference_cpu_offload and not ranks.distributed and ranks.device.type == "cuda":
        raise ConfigError(
            "model.reference_cpu_offload=true offloads FSDP shards and needs several ranks; with one GPU "
            "set model.reference_cpu_offload=false"
        )
    if cfg.trainer.prompts_per_step % ranks.world_size:
        raise ConfigError(
            f"trainer.prompts_per_step={cfg.trainer.prompts_per_step} cannot be split over {ranks.world_size} ranks: "
            f"use a multiple of {ranks.world_size} (each prompt's samples stay on one rank)"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(cfg.tracking.uri, launch_dir)
    run_name = cfg.tracking.run_name or f"{cfg.algo.name}-seed{cfg.trainer.seed}-{output_dir.name}"
    tracker = Tracker(
        uri,
        cfg.tracking.experiment,
        run_name,
        cfg.tracking.retry_seconds,
        cfg.tracking.enabled and ranks.is_main,
        run_id_file=output_dir / "mlflow_run_id" if ranks.is_main else None,
        system_metrics=cfg.tracking.resolved_system_metrics(ranks.device.type),
        on_gpus=ranks.device.type == "cuda",
    )
    trainer = Trainer(cfg, output_dir, tracker, ranks, stop)
    resumed = trainer.resume()
    if not ranks.is_main:
        try:
            return trainer.fit()
        finally:
            trainer.close()
    if not resumed:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        tracker.log_params(flatten(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)))
        tracker.log_artifact(output_dir / "config.yaml")
    tracker.set_tags(
        {
            "mgrpo.algo": cfg.algo.name,
            "mgrpo.git_commit": git_commit(),
            "mgrpo.slurm_job_id": slurm_job_id(),
            "mgrpo.output_dir": str(output_dir.resolve()),
            "mgrpo.restarts": os.environ.get("SLURM_RESTART_COUNT"),
            "mgrpo.world_size": str(ranks.world_size),
            **sweep_tags,
        }
    )
    # Every start, resumed or not: the tracker skips the inputs the run already has.
    tracker.log_inputs(run_datasets(cfg.data, trainer.prepared, trainer.evaluator.selection, trainer.evaluator.benchmarks))
    if cfg.tracking.enabled:
        print(f"[mgrpo] tracking to {uri}; view with: {tracker.url_hint}", file=sys.stderr)
    status = "FAILED"
    try:
        objective = trainer.fit()
        status = "FINISHED"
    except JobStopped:
        status = "KILLED"  # until the requeued job resumes it (RUNNING again)
        raise
    finally:
        tracker.finish(status, wait_seconds=min(60.0, cfg.tracking.retry_seconds) if status == "FINISHED" else 0.0)
        trainer.close()
    print(f"[mgrpo] done: objective ({cfg.trainer.objective}) = {objective:.4f}; outputs in {output_dir}", file=sys.stderr)
    if cfg.tracking.enabled and tracker.pending_count:
        print(
            f"[mgrpo] {tracker.pending_count} tracking records could not reach {uri} and are kept in "
            f"{output_dir}; rerun this command once the store is reachable to send them",
            file=sys.stderr,
        )
    elif cfg.tracking.enabled:
        print(f"[mgrpo] MLflow run {tracker.run_id}: {_chart_hint(uri, tracker)}", file=sys.stderr)
    return objective


def sweep_tags() -> dict[str, str]:
    """Sweep id and swept keys written by the multirun callback, when this job is part of a sweep."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {}
    from mgrpo.sweeps import read_sweep_info

    info = read_sweep_info(Path(hydra_cfg.sweep.dir))
    if not info:
        return {}
    return {"mgrpo.sweep_id": info["sweep_id"], "mgrpo.swept_params": ",".join(info["swept_params"])}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(dict_cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    # First, so that a warning during start-up also waits for the first step's checkpoint.
    stop = StopRequest.for_submitit_job(hydra_cfg.launcher.get("signal_delay_s"))
    cfg: Config = OmegaConf.to_object(dict_cfg)
    output_dir = Path(cfg.trainer.output_dir or hydra_cfg.runtime.output_dir).expanduser()
    launch_dir = Path(hydra_cfg.runtime.cwd)
    try:
        return run(cfg, output_dir, launch_dir, sweep_tags(), stop)
    except JobStopped as stopped:
        assert stop is not None
        print(f"[mgrpo] {stopped}; requeueing", file=sys.stderr, flush=True)
        stop.requeue()
    except (ConfigError, CheckpointError, DataError, ModelLoadError, FileNotFoundError, VLLMUnavailableError, RankFailure, StaleWeightsError) as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1 if isinstance(err, (RankFailure, StaleWeightsError)) else 2)
    finally:
        if stop is not None:
            stop.close()


if __name__ == "__main__":
    main()
