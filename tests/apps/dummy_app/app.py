"""A small Hydra app that stands in for mgrpo-train in the launcher and sweeper tests.

It composes the project's real `cluster/` and `resources/` presets (from `conf/`), the real
`SweepCallback`, sweeper and launcher, and behaves like a trainer where that matters:

- it works in `steps` steps of `step_seconds`, saving its progress to `state.json` in its output
  directory after each step and resuming from it, so a requeued SLURM job continues where it was
  interrupted (every start is appended to `attempts.jsonl`);
- it returns an analytic objective, -(x - 1)^2 - (y + 0.5)^2 (best at x=1, y=-0.5);
- jobs whose number is in `fail_jobs` fail as `fail` says: raise (a Python exception), crash (the
  process dies without a result, as when SLURM kills it), or nan (a non-numeric objective);
- with `tracking.enabled=true` it logs one MLflow run tagged with the sweep id it reads through
  `read_sweep_info`, the way the trainer does.

    python tests/apps/dummy_app/app.py -m x=0,1 y=0,1 cluster=slurm hydra.sweep.dir=/tmp/s
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mgrpo.sweeps import ResourcesConfig, SlurmSiteConfig, read_sweep_info
from mgrpo.tracking import resolve_tracking_uri

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


@dataclass
class TrackingConfig:
    enabled: bool = False
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "dummy"


@dataclass
class DummyConfig:
    x: float = 0.0
    y: float = 0.0
    steps: int = 1
    step_seconds: float = 0.0
    fail: str = "raise"
    """How the jobs in fail_jobs fail: raise | crash | nan."""
    fail_jobs: list[int] = field(default_factory=list)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    slurm: SlurmSiteConfig = field(default_factory=SlurmSiteConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


cs = ConfigStore.instance()
cs.store(name="dummy_schema", node=DummyConfig)
cs.store(
    name="dummy_app",
    node={
        "defaults": ["dummy_schema", {"cluster": "local"}, {"resources": "cpu_small"}, "_self_"],
        "hydra": {
            "callbacks": {"mgrpo_sweep": {"_target_": "mgrpo.sweeps.SweepCallback"}},
            "sweep": {"subdir": "${hydra.job.num}"},
            "job": {"chdir": False},
        },
    },
)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _log_mlflow(cfg: DictConfig, launch_dir: Path, sweep: dict[str, Any] | None, value: float) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(cfg.tracking.uri, launch_dir))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    tags = {"mgrpo.sweep_id": sweep["sweep_id"], "mgrpo.swept_params": ",".join(sweep["swept_params"])} if sweep else {}
    run = client.create_run(experiment.experiment_id, tags=tags)
    client.log_metric(run.info.run_id, "objective", value)
    client.set_terminated(run.info.run_id)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="dummy_app")
def main(cfg: DictConfig) -> Any:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    launch_dir = Path(hc.runtime.cwd)
    sweep = read_sweep_info(launch_dir / hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    job_num = hc.job.num if hc.mode == RunMode.MULTIRUN else None
    job_id = OmegaConf.select(hc.job, "id", default=None, throw_on_missing=False)
    with open(out / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"restart": os.environ.get("SLURM_RESTART_COUNT", "0"), "job_id": job_id}) + "\n")
    _write_json(out / "job.json", {"job_num": job_num, "job_id": job_id, "sweep": sweep})

    state_file = out / "state.json"
    done: list[int] = json.loads(state_file.read_text())["done"] if state_file.exists() else []
    for step in range(len(done), cfg.steps):
        time.sleep(cfg.step_seconds)
        done.append(step)
        _write_json(state_file, {"done": done})

    if job_num in cfg.fail_jobs:
        if cfg.fail == "raise":
            raise ValueError(f"dummy failure in job {job_num}")
        if cfg.fail == "crash":
            os._exit(3)
        if cfg.fail == "nan":
            return float("nan")
    value = -((cfg.x - 1.0) ** 2) - (cfg.y + 0.5) ** 2
    _write_json(out / "result.json", {"value": value})
    if cfg.tracking.enabled:
        _log_mlflow(cfg, launch_dir, sweep, value)
    return value


if __name__ == "__main__":
    main()
