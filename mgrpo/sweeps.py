"""Sweeps: what a multirun does before its first job, and how its jobs find their sweep.

`SweepCallback` is enabled from `hydra.callbacks` in `conf/config.yaml`. In the process that
launches a multirun (`mgrpo-train -m ...`) it, before any job is submitted:

1. checks the launcher: a SLURM launcher needs `sbatch` on PATH, and the job size
   (`resources.*`, mapped onto `hydra.launcher.*` by `conf/cluster/slurm.yaml`) must be valid.
   A bad setting stops the sweep at once, with a message that names the key;
2. writes `<sweep_dir>/mgrpo_sweep.json`: a readable, unique sweep id and the swept keys. Jobs
   read it with `read_sweep_info` to tag their MLflow runs, so a sweep is one filter in MLflow;
3. creates the MLflow store and experiment once. Several jobs creating the same new SQLite store
   at once corrupt it (see the recipes' MLflow notes), so the parent does it first.

In each job it logs a failed job's traceback into the job's own log (Hydra keeps the exception
in the job's result and writes it nowhere), naming the log files, so a failure is findable from
the sweep's console output and from the job directory alike.

Hydra 1.3 turns an exception raised in a callback into a warning and carries on, so the checks
raise `SweepSetupError`, a `SystemExit`: Hydra cannot swallow it and the CLI exits with its
message.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# Stores `hydra/sweeper: mgrpo_optuna` in Hydra's ConfigStore, so `hparams_search=...` composes
# even when Hydra's plugin scan cannot see the plugin (see register_hydra_plugins).
import hydra_plugins.mgrpo_optuna_sweeper.config  # noqa: F401
from mgrpo.tracking import get_or_create_experiment, resolve_tracking_uri

log = logging.getLogger(__name__)

SWEEP_INFO_FILE = "mgrpo_sweep.json"
NO_SLURM_MESSAGE = "cluster=slurm needs SLURM (sbatch not found); use cluster=local"


@dataclass
class ResourcesConfig:
    """How big one job is. `conf/resources/*.yaml` set these; `conf/cluster/slurm.yaml` maps them
    onto the submitit launcher. Under cluster=local they are not used (the job runs here)."""

    nodes: int = 1
    """Nodes per job."""
    tasks_per_node: int = 1
    """Ranks per node: one task per GPU (8 on an 8-GPU node). Every task runs the trainer as one
    rank of the same run (FSDP over all of the job's tasks), so a job is one run."""
    gpus_per_node: int = 0
    """GPUs per node (0 for CPU jobs)."""
    cpus_per_task: int = 1
    """CPU cores per task."""
    mem_gb: Optional[int] = None
    """Memory per node in GB; null leaves it to the site default."""
    timeout_min: int = 60
    """Wall-clock limit per job in minutes. A job that hits it is requeued and resumes from its
    checkpoint only while `hydra.launcher.max_num_timeout` allows."""


@dataclass
class SlurmSiteConfig:
    """Where on a SLURM site jobs go. Set these in the git-ignored `conf/local/default.yaml` or
    through MGRPO_SLURM_* environment variables, never in committed files."""

    partition: Optional[str] = "${oc.env:MGRPO_SLURM_PARTITION,null}"
    account: Optional[str] = "${oc.env:MGRPO_SLURM_ACCOUNT,null}"
    qos: Optional[str] = "${oc.env:MGRPO_SLURM_QOS,null}"
    constraint: Optional[str] = "${oc.env:MGRPO_SLURM_CONSTRAINT,null}"
    """e.g. a GPU type feature, such as h200."""
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    """Other sbatch options, e.g. {reservation: my-res}."""


class SweepSetupError(SystemExit):
    """A sweep cannot start: the launcher or the job size is misconfigured. A `SystemExit` so that
    Hydra 1.3's callback wrapper, which downgrades exceptions to warnings, lets it through."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class JobFailedError(RuntimeError):
    """A job ended without a result (killed, out of memory, over its time limit, crashed).
    `log_paths` are the files to read."""

    def __init__(self, message: str, log_paths: Iterable[str] = ()) -> None:
        self.log_paths = [str(p) for p in log_paths]
        super().__init__(message + (f"\n  logs: {', '.join(self.log_paths)}" if self.log_paths else ""))


# ---- launcher and resource checks --------------------------------------------------------------
_LAUNCHER_RESOURCE_KEYS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
_SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"


def _launcher_is(launcher: DictConfig, base: str) -> bool:
    """Whether the launcher's class derives from `base` (a dotted name). Compared by name: Hydra's
    plugin scan re-executes plugin modules, so a class imported earlier and the same class after
    the scan are different objects and `issubclass` would say no."""
    from hydra.utils import get_class

    target = OmegaConf.select(launcher, "_target_", default=None)
    if not target:
        return False
    return any(f"{k.__module__}.{k.__qualname__}" == base for k in get_class(str(target)).__mro__)


def _is_slurm_launcher(launcher: DictConfig) -> bool:
    return _launcher_is(launcher, f"{_SUBMITIT}.SlurmLauncher")


def _is_submitit_launcher(launcher: DictConfig) -> bool:
    return _launcher_is(launcher, f"{_SUBMITIT}.BaseSubmititLauncher")


def _source_key(launcher: DictConfig, key: str) -> str:
    """The key a user set: `resources.x` when the launcher field interpolates it, else the
    launcher field itself (someone overrode `hydra.launcher.x` directly)."""
    raw = OmegaConf.to_container(launcher, resolve=False).get(key)
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return match.group(1) if match else f"hydra.launcher.{key}"


def check_resources(launcher: DictConfig) -> None:
    """Reject job sizes SLURM would refuse or misread, naming the key to fix."""
    rules = {
        "nodes": (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
        "tasks_per_node": (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
        "gpus_per_node": (lambda v: v is None or (isinstance(v, int) and v >= 0), "must be an integer >= 0"),
        "cpus_per_task": (lambda v: v is None or (isinstance(v, int) and v >= 1), "must be an integer >= 1"),
        "mem_gb": (
            lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v > 0),
            "must be > 0 (GB), or null for the site default",
        ),
        "timeout_min": (lambda v: isinstance(v, (int, float)) and v > 0, "must be > 0 (minutes)"),
    }
    for key in _LAUNCHER_RESOURCE_KEYS:
        if key not in launcher:
            continue
        value = launcher[key]
        ok, allowed = rules[key]
        if isinstance(value, bool) or not ok(value):
            name = _source_key(launcher, key)
            raise SweepSetupError(f"{name}={value!r} is invalid: {allowed}. Fix it with `{name}=<value>`.")


def check_launcher(config: DictConfig) -> None:
    """Fail before submitting anything when the configured launcher cannot work here."""
    launcher = config.hydra.launcher
    if not _is_submitit_launcher(launcher):
        return
    check_resources(launcher)
    if _is_slurm_launcher(launcher) and shutil.which("sbatch") is None:
        raise SweepSetupError(NO_SLURM_MESSAGE)


# ---- the sweep's identity ----------------------------------------------------------------------
def swept_params(task_overrides: Iterable[str], sweeper_params: Optional[Mapping[str, Any]]) -> list[str]:
    """Keys that vary across the sweep's jobs, in the order they were given.

    `hydra.sweeper.params` come first and command-line overrides replace them key by key (as
    Hydra's basic sweeper does), so `experiment=rollout_sweep algo=mgrpo` does not list `algo`
    when the preset sweeps it. A value is swept when it is a sweep in Hydra's grammar: `a=1,2`,
    `choice(...)`, `range(...)`, `interval(...)`, `glob(...)`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    final: dict[str, bool] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        final[key] = override.is_sweep_override()
    return [key for key, swept in final.items() if swept]


def new_sweep_id(experiment: str, now: Optional[_dt.datetime] = None) -> str:
    """`<experiment>-<YYYYmmdd-HHMMSS>-<8 hex>`: sortable, readable in MLflow, and unique even for
    two sweeps started in the same second."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_") or "sweep"
    return f"{slug}-{stamp}-{secrets.token_hex(4)}"


def read_sweep_info(sweep_dir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
    """The sweep's `mgrpo_sweep.json` (keys: sweep_id, swept_params, ...), or None when the
    directory holds none (a run started without the callback). A damaged file raises."""
    path = Path(sweep_dir) / SWEEP_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it or rerun the sweep") from err
    if not isinstance(info, dict) or "sweep_id" not in info or "swept_params" not in info:
        raise ValueError(f"{path} lacks sweep_id/swept_params; delete it or rerun the sweep")
    return info


def write_sweep_info(config: DictConfig) -> dict[str, Any]:
    """Write (or, for a resumed sweep in the same directory, update) `mgrpo_sweep.json`.

    A rerun into an existing sweep directory (a resumed Optuna study, a rerun after a crash)
    keeps the sweep id, so all of its runs stay one group in MLflow; swept keys are merged.
    """
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(str(config.hydra.runtime.cwd)) / sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    task_overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    sweeper_params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    if sweeper_params is not None:
        sweeper_params = OmegaConf.to_container(sweeper_params, resolve=True)
    keys = swept_params(task_overrides, sweeper_params)
    experiment = str(OmegaConf.select(config, "tracking.experiment", default=None) or config.hydra.job.name)
    choices = config.hydra.runtime.choices
    previous = read_sweep_info(sweep_dir)
    info = {
        "sweep_id": previous["sweep_id"] if previous else new_sweep_id(experiment),
        "swept_params": (previous["swept_params"] if previous else [])
        + [k for k in keys if not previous or k not in previous["swept_params"]],
        "sweep_dir": str(sweep_dir),
        "started": (previous or {}).get("started") or _dt.datetime.now().isoformat(timespec="seconds"),
        "launcher": choices.get("hydra/launcher"),
        "sweeper": choices.get("hydra/sweeper"),
        "task_overrides": task_overrides,
        "sweeper_params": sweeper_params or {},
    }
    if previous:
        info["resumed"] = _dt.datetime.now().isoformat(timespec="seconds")
    tmp = sweep_dir / f".{SWEEP_INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(sweep_dir / SWEEP_INFO_FILE)
    return info


# ---- MLflow ------------------------------------------------------------------------------------
def ensure_mlflow_experiment(uri: str, experiment: str) -> str:
    """Create the MLflow store (schema migrations) and the experiment if missing, as the trainer
    would (same artifact location); return its id.

    For a SQLite store this runs under one machine-wide file lock (in the temp dir, not beside
    the database), so two sweeps started at once do not migrate one new file together.
    """
    import tempfile

    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    def create() -> str:
        return get_or_create_experiment(MlflowClient(tracking_uri=uri), uri, experiment)

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(Path(tempfile.gettempdir()) / "mgrpo-mlflow-store.lock")):
            return create()
    return create()


# ---- failures ----------------------------------------------------------------------------------
def job_log_paths(hydra_cfg: Optional[DictConfig]) -> list[str]:
    """A job's log files, from its Hydra config: Hydra's job log in its output dir and, when a
    submitit launcher ran it, submitit's stderr and stdout. Works in the job and in the parent."""
    if hydra_cfg is None:
        return []
    node = hydra_cfg.hydra if "hydra" in hydra_cfg else hydra_cfg
    paths: list[str] = []
    filename = OmegaConf.select(node, "job_logging.handlers.file.filename", default=None)
    if filename:
        paths.append(str(filename))
    folder = OmegaConf.select(node, "launcher.submitit_folder", default=None)
    job_id = OmegaConf.select(node, "job.id", default=None, throw_on_missing=False)
    if folder and job_id:
        from submitit.core.utils import JobPaths

        job_paths = JobPaths(str(folder), job_id=str(job_id), task_id=0)
        paths += [str(job_paths.stderr), str(job_paths.stdout)]
    return paths


def describe_failure(job_return: JobReturn, job_num: Optional[int] = None) -> tuple[str, list[str]]:
    """One line for a failed job (its number, overrides, error, and the logs to read), and the
    log paths."""
    error = job_return._return_value
    paths = list(error.log_paths) if isinstance(error, JobFailedError) else job_log_paths(job_return.hydra_cfg)
    if job_num is None and job_return.hydra_cfg is not None:
        job_num = OmegaConf.select(job_return.hydra_cfg, "hydra.job.num", default=None)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    where = f"; log: {', '.join(paths)}" if paths else ""
    overrides = " ".join(job_return.overrides or [])
    return f"job #{job_num} ({overrides}) failed: {type(error).__name__}: {first_line}{where}", paths


class SweepCallback(Callback):
    """Hydra callback; see the module docstring."""

    def __init__(self) -> None:
        # Hydra builds the callbacks after composing the config and before it instantiates the
        # sweeper and the launcher: the moment to make mgrpo's plugins known.
        register_hydra_plugins()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Without -m, Hydra runs the job here and ignores the launcher: refuse rather than train a
        SLURM-sized job on a login node."""
        if _is_slurm_launcher(config.hydra.launcher):
            raise SweepSetupError(
                "cluster=slurm submits jobs only in multirun mode: add -m to submit, or use cluster=local "
                "to run here"
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_launcher(config)
        info = write_sweep_info(config)
        params = ", ".join(info["swept_params"]) or "nothing"
        log.info(f"Sweep {info['sweep_id']} over {params}; info in {info['sweep_dir']}/{SWEEP_INFO_FILE}")
        if OmegaConf.select(config, "tracking.enabled", default=False):
            uri = resolve_tracking_uri(str(config.tracking.uri), Path(str(config.hydra.runtime.cwd)))
            experiment_id = ensure_mlflow_experiment(uri, str(config.tracking.experiment))
            log.info(f"MLflow experiment '{config.tracking.experiment}' (id {experiment_id}) ready at {uri}")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        message, _ = describe_failure(job_return)
        error = job_return._return_value
        log.error(message, exc_info=(type(error), error, error.__traceback__))


def register_hydra_plugins() -> None:
    """Make mgrpo's Hydra plugins (the `mgrpo_optuna` sweeper, the SLURM launcher) known to Hydra.

    Hydra finds plugins by walking the `hydra_plugins` namespace on disk. A default editable
    install (`pip install -e .`) maps packages through an import hook instead, which that walk
    cannot see, and Hydra then reports "Unknown plugin class". `SweepCallback` calls this, so
    any app with the callback in `hydra.callbacks` is covered; importing this module stores the
    sweeper's config. With a regular install it changes nothing.
    """
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scan first: the scan re-executes modules imported before it
    from hydra_plugins.mgrpo_optuna_sweeper.sweeper import MgrpoOptunaSweeper
    from hydra_plugins.mgrpo_submitit_launcher.launcher import MgrpoSlurmLauncher

    plugins.register(MgrpoOptunaSweeper)
    plugins.register(MgrpoSlurmLauncher)
