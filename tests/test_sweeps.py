"""Sweep presets and the multirun callback (mgrpo/sweeps.py), with the local launcher.

Every preset under conf/{cluster,resources,experiment,hparams_search} is composed with the real
root config, and every point of every experiment's sweep passes `validate`, so a new preset is
tested as soon as it exists. The end-to-end tests run the dummy app (tests/apps/dummy_app) as a
user would; the SLURM versions are in test_slurm.py.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer
from omegaconf import OmegaConf

from mgrpo.sweeps import (
    NO_SLURM_MESSAGE,
    SWEEP_INFO_FILE,
    SweepSetupError,
    check_launcher,
    new_sweep_id,
    read_sweep_info,
    swept_params,
)
from tests.apps.harness import read_json, run_app

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_root(overrides: list[str], with_hydra: bool = True):
    import mgrpo.train  # noqa: F401  (registers the schema, the algo presets and the plugins)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=with_hydra)


def validated(overrides: list[str]) -> None:
    """Compose without Hydra's own node and run the schema's checks, as mgrpo-train does."""
    from mgrpo.config_checks import validate

    validate(OmegaConf.to_object(compose_root(overrides, with_hydra=False)))


# ---- presets -----------------------------------------------------------------------------------
def test_every_group_has_its_presets() -> None:
    assert presets("cluster") == ["local", "slurm"]
    assert {"cpu_small", "h200x8"} <= set(presets("resources"))
    assert {"rollout_sweep", "temperature_sweep", "momentum_sweep", "iqr_sweep", "paper"} <= set(presets("experiment"))
    assert "stability" in presets("hparams_search")


@pytest.mark.parametrize(
    "group,name",
    [(g, n) for g in ("cluster", "resources", "experiment", "hparams_search") for n in presets(g)],
)
def test_preset_composes_and_validates(group: str, name: str) -> None:
    compose_root([f"{group}={name}"])
    validated([f"{group}={name}"])


def test_root_config_enables_the_sweep_callback() -> None:
    cfg = compose_root([])
    targets = [c._target_ for c in cfg.hydra.callbacks.values()]
    assert "mgrpo.sweeps.SweepCallback" in targets


def _sweep_points(params: dict[str, str]) -> list[list[str]]:
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [value]
        axes.append([f"{key}={v}" for v in values])
    return [list(point) for point in itertools.product(*axes)]


@pytest.mark.parametrize("name", [n for n in presets("experiment")])
def test_every_point_of_an_experiment_sweep_validates(name: str) -> None:
    params = compose_root([f"experiment={name}"]).hydra.sweeper.params
    params = OmegaConf.to_container(params) if params else {}
    for point in _sweep_points(params):
        validated([f"experiment={name}", *point])


def test_paper_studies_sweep_what_the_issue_asks() -> None:
    def params(name: str) -> dict[str, str]:
        return dict(compose_root([f"experiment={name}"]).hydra.sweeper.params)

    assert params("rollout_sweep") == {"algo": "mgrpo,srt", "algo.num_rollouts": "8,16,32,64,128,256"}
    assert params("temperature_sweep") == {"algo": "mgrpo,srt", "rollout.temperature": "0.8,1.1,1.2"}
    assert params("momentum_sweep") == {"algo.momentum": "0.9,0.99,0.999"}
    assert params("iqr_sweep") == {"algo.iqr_k": "0.5,0.75,1.0,1.5,null"}
    cfg = compose_root(["experiment=paper"])
    assert (cfg.model.name_or_path, cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_ratio) == (
        "Qwen/Qwen3-4B-Base", 1e-6, "cosine", 0.1,
    )
    assert (cfg.algo.kl_coef, cfg.rollout.temperature, cfg.trainer.prompts_per_step, cfg.algo.num_rollouts) == (
        0.005, 1.1, 8, 32,
    )
    assert cfg.rollout.max_new_tokens == 3072


def test_hparams_search_uses_the_optuna_sweeper_and_a_valid_search_space() -> None:
    from hydra_plugins.mgrpo_optuna_sweeper.sweeper import search_space

    for name in presets("hparams_search"):
        cfg = compose_root([f"hparams_search={name}", "experiment=collapse_lab"])
        assert cfg.hydra.runtime.choices["hydra/sweeper"] == "mgrpo_optuna"
        distributions, _, fixed = search_space(OmegaConf.to_container(cfg.hydra.sweeper.params), [])
        assert set(distributions) == {"algo.momentum", "algo.iqr_k", "rollout.temperature"}
        assert sorted(fixed) == ["algo=mgrpo", "model.tiny.seed=1", "trainer.seed=0"]  # pins collapse_lab's sweep
    for key, dist in distributions.items():  # every end of every dimension is a valid setting
        for value in dist.choices if hasattr(dist, "choices") else (dist.low, dist.high):
            validated(["hparams_search=stability", "experiment=collapse_lab", f"{key}={Transformer.str(value)}"])
    assert compose_root(["hparams_search=stability"]).trainer.objective == "stable_accuracy"
    assert compose_root(["hparams_search=final_accuracy"]).trainer.objective == "final_accuracy"


def test_slurm_launcher_takes_its_size_from_resources_and_its_site_from_slurm() -> None:
    cfg = compose_root(["cluster=slurm", "resources=h200x8", "slurm.partition=gpu", "slurm.account=lab"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.mgrpo_submitit_launcher.launcher.MgrpoSlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 8, 8)  # a rank per GPU
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.timeout_min) == (8, 960, 1440)
    assert (launcher.partition, launcher.account, launcher.qos) == ("gpu", "lab", None)
    small = compose_root(["cluster=slurm"]).hydra.launcher
    assert (small.gpus_per_node, small.cpus_per_task, small.tasks_per_node) == (0, 1, 1)


def test_slurm_site_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MGRPO_SLURM_PARTITION", "envpart")
    monkeypatch.setenv("MGRPO_SLURM_QOS", "high")
    launcher = compose_root(["cluster=slurm"]).hydra.launcher
    assert (launcher.partition, launcher.qos, launcher.account) == ("envpart", "high", None)


@pytest.mark.parametrize(
    "override,key",
    [
        ("resources.gpus_per_node=-1", "resources.gpus_per_node"),
        ("resources.cpus_per_task=0", "resources.cpus_per_task"),
        ("resources.mem_gb=0", "resources.mem_gb"),
        ("resources.timeout_min=0", "resources.timeout_min"),
        ("resources.nodes=0", "resources.nodes"),
        ("hydra.launcher.timeout_min=-5", "hydra.launcher.timeout_min"),
    ],
)
def test_invalid_resources_are_rejected_naming_the_key(override: str, key: str) -> None:
    cfg = compose_root(["cluster=slurm", override])
    with pytest.raises(SweepSetupError, match=rf"^{key}=.* is invalid"):
        check_launcher(cfg)


def test_resources_do_not_matter_to_the_local_launcher() -> None:
    check_launcher(compose_root(["resources.cpus_per_task=0"]))


# ---- sweep identity ----------------------------------------------------------------------------
def test_swept_params_follow_hydras_rules() -> None:
    assert swept_params(["a=1,2", "b=3", "+c=range(1,4)", "d=choice(x,y)", "experiment=e"], None) == ["a", "c", "d"]
    assert swept_params([], {"x": "interval(0.1, 1)", "y": "0.5,null", "z": "1"}) == ["x", "y"]
    # a command-line value replaces the preset's sweep of the same key, as in the basic sweeper
    assert swept_params(["algo=mgrpo"], {"algo": "mgrpo,srt", "algo.num_rollouts": "8,16"}) == ["algo.num_rollouts"]
    assert swept_params(["algo=glob(*)"], None) == ["algo"]


def test_sweep_ids_are_readable_and_unique() -> None:
    ids = {new_sweep_id("rollout sweep/2") for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("rollout_sweep_2-") for i in ids)


def test_read_sweep_info(tmp_path: Path) -> None:
    assert read_sweep_info(tmp_path) is None
    (tmp_path / SWEEP_INFO_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_sweep_info(tmp_path)


# ---- end to end, local launcher ----------------------------------------------------------------
def test_local_grid_multirun(tmp_path: Path) -> None:
    """2 x 2 through Hydra's basic launcher: every job runs in its own directory of the sweep; the
    callback writes the sweep's identity and creates the MLflow store and experiment, a relative
    sqlite path being taken from the launch directory; each job tags its run with the sweep."""
    out = run_app(
        ["-m", "x=0,1", "y=0,1", "hydra.sweep.dir=sweep", "tracking.enabled=true", "tracking.uri=sqlite:///mlflow.db"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    sweep = tmp_path / "sweep"
    info = read_json(sweep / SWEEP_INFO_FILE)
    assert info["swept_params"] == ["x", "y"] and info["launcher"] == "basic"
    for job in range(4):
        assert read_json(sweep / str(job) / "job.json")["sweep"]["sweep_id"] == info["sweep_id"]
        assert (sweep / str(job) / "result.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dummy")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()  # as the trainer creates it
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    assert {r.data.tags["mgrpo.sweep_id"] for r in runs} == {info["sweep_id"]}
    assert {r.data.tags["mgrpo.swept_params"] for r in runs} == {"x,y"}


def test_a_failed_local_job_is_reported_with_its_log_and_the_sweep_goes_on(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    out = run_app(["-m", "x=0,1,2", "fail_jobs=[1]", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert out.returncode == 1
    log_file = sweep / "1" / "app.log"
    assert f"job #1 (x=1 fail_jobs=[1]) failed: ValueError: dummy failure in job 1; log: {log_file}" in out.stdout
    assert "Traceback" in log_file.read_text() and "dummy failure in job 1" in log_file.read_text()
    assert (sweep / "0" / "result.json").exists() and (sweep / "2" / "result.json").exists()


def test_rerun_into_the_same_sweep_dir_keeps_the_sweep_id(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    assert run_app(["-m", "x=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    first = read_json(sweep / SWEEP_INFO_FILE)["sweep_id"]
    assert run_app(["-m", "x=0,1", "y=2,3", f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    info = read_json(sweep / SWEEP_INFO_FILE)
    assert info["sweep_id"] == first and info["swept_params"] == ["x", "y"] and "resumed" in info


# ---- clear errors ------------------------------------------------------------------------------
def test_cluster_slurm_without_sbatch_fails_at_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    out = run_app(["-m", "x=0,1", "cluster=slurm", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                  env={"PATH": str(Path(sys.executable).parent)})
    assert out.returncode == 1
    assert out.stderr.strip().endswith(NO_SLURM_MESSAGE)
    assert not sweep.exists()


def test_invalid_resources_stop_the_sweep_before_submission(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    out = run_app(["-m", "x=0,1", "cluster=slurm", "resources.gpus_per_node=-1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert out.returncode == 1
    assert "resources.gpus_per_node=-1 is invalid: must be an integer >= 0" in out.stderr
    assert not sweep.exists()


def test_cluster_slurm_without_multirun_is_refused(tmp_path: Path) -> None:
    out = run_app(["x=0", "cluster=slurm"], cwd=tmp_path)
    assert out.returncode == 1
    assert "cluster=slurm submits jobs only in multirun mode: add -m" in out.stderr
    assert not (tmp_path / "outputs").exists()
