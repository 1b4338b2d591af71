"""The mgrpo_optuna sweeper: search-space syntax, and studies run, failed and resumed for real
(SQLite storage, the dummy app's analytic objective, Hydra's basic launcher). The SLURM version
is in test_slurm.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.mgrpo_optuna_sweeper.sweeper import (
    MgrpoOptunaSweeper,
    distribution_from_override,
    grid_values,
    search_space,
)
from tests.apps.harness import read_json, run_app, start_app, wait_for

optuna.logging.set_verbosity(optuna.logging.WARNING)


def dist(text: str):
    return distribution_from_override(OverridesParser.create().parse_override(f"p={text}"))


# ---- search space ------------------------------------------------------------------------------
def test_search_space_syntax_matches_hydras_optuna_sweeper() -> None:
    assert dist("interval(0.8, 1.2)") == FloatDistribution(0.8, 1.2)
    assert dist("tag(log, interval(1e-6, 1e-4))") == FloatDistribution(1e-6, 1e-4, log=True)
    assert dist("tag(int, interval(1, 8))") == IntDistribution(1, 8)
    assert dist("tag(int, log, interval(1, 64))") == IntDistribution(1, 64, log=True)
    assert dist("range(8, 65, 8)") == IntDistribution(8, 64, step=8)
    assert dist("range(10, 0, -3)") == IntDistribution(1, 10, step=3)
    assert dist("choice(mgrpo, srt)") == CategoricalDistribution(["mgrpo", "srt"])
    assert dist("0.5,0.75,null") == CategoricalDistribution([0.5, 0.75, None])
    assert dist("range(0.5, 1.0, 0.25)") == FloatDistribution(0.5, 0.75, step=0.25)
    with pytest.raises(ValueError, match="glob"):
        dist("glob(*)")


def test_command_line_sweeps_join_and_replace_params() -> None:
    distributions, keys, fixed = search_space(
        {"x": "interval(0, 1)", "algo": "mgrpo,srt", "trainer.seed": "0"},
        ["algo=mgrpo", "+y=choice(1,2)", "experiment=collapse_lab"],
    )
    assert distributions == {"x": FloatDistribution(0, 1), "y": CategoricalDistribution([1, 2])}
    assert keys == {"x": "x", "y": "+y"}
    assert fixed == ["algo=mgrpo", "trainer.seed=0", "experiment=collapse_lab"]


def test_grid_values() -> None:
    space = {"a": dist("0.9,0.99"), "b": dist("range(1, 4)"), "c": dist("range(0.5, 1.0, 0.25)")}
    assert grid_values(space) == {"a": [0.9, 0.99], "b": [1, 2, 3], "c": [0.5, 0.75]}
    with pytest.raises(ValueError, match="sampler=grid needs discrete values"):
        grid_values({"x": dist("interval(0, 1)")})


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("direction", "up", "hydra.sweeper.direction='up' is invalid"),
        ("sampler", "cmaes", "hydra.sweeper.sampler='cmaes' is invalid: use one of tpe, random, grid"),
        ("n_trials", 0, "hydra.sweeper.n_trials=0 is invalid"),
        ("n_jobs", 0, "hydra.sweeper.n_jobs=0 is invalid"),
    ],
)
def test_invalid_options_name_the_key(option: str, value: object, message: str) -> None:
    options = dict(storage=None, study_name="s", direction="maximize", n_trials=1, n_jobs=1, sampler="tpe",
                   seed=0, sampler_kwargs={}, params=None)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MgrpoOptunaSweeper(**{**options, option: value})


# ---- studies, end to end -----------------------------------------------------------------------
def study_args(tmp_path: Path, n_trials: int, *extra: str, sampler: str = "random") -> list[str]:
    return [
        "-m",
        "hydra/sweeper=mgrpo_optuna",
        "hydra.sweeper.storage=sqlite:///optuna.db",  # relative: resolved against the launch dir
        "hydra.sweeper.study_name=dummy",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.sampler={sampler}",
        "x=interval(-2, 2)",
        "y=-1,-0.5,0,0.5",
        "hydra.sweep.dir=sweep",
        *extra,
    ]


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="dummy", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def test_study_runs_marks_failures_and_resumes_with_more_trials(tmp_path: Path) -> None:
    out = run_app(study_args(tmp_path, 4, "fail_jobs=[1]"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    failed = trials[1]
    assert failed.user_attrs["error"] == "ValueError: dummy failure in job 1"
    assert failed.user_attrs["logs"] == [str(tmp_path / "sweep" / "1" / "app.log")]
    for t in trials:
        if t.state == TrialState.COMPLETE:
            result = read_json(tmp_path / "sweep" / str(t.number) / "result.json")["value"]
            assert t.value == pytest.approx(result) == pytest.approx(-((t.params["x"] - 1) ** 2) - (t.params["y"] + 0.5) ** 2)

    first_points = [t.params for t in trials]
    out = run_app(study_args(tmp_path, 6, "fail_jobs=[1]"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "4 trials done, running 2 more" in out.stdout
    trials = load(tmp_path).trials
    assert len(trials) == 6 and [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials[4:])
    assert all(t.params not in first_points for t in trials[4:])  # the resumed sampler moved on
    assert all((tmp_path / "sweep" / str(n) / "state.json").exists() for n in range(6))
    results = read_yaml(tmp_path / "sweep" / "optimization_results.yaml")
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert results["best_trial"] == best.number and results["n_complete"] == 5 and results["n_failed"] == 1

    # A rerun of a finished study has nothing left to do.
    out = run_app(study_args(tmp_path, 6, "fail_jobs=[1]"), cwd=tmp_path)
    assert out.returncode == 0 and "running 0 more" in out.stdout
    assert len(load(tmp_path).trials) == 6


def test_non_numeric_objective_fails_the_trial(tmp_path: Path) -> None:
    out = run_app(study_args(tmp_path, 2, "fail=nan", "fail_jobs=[0]"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "must be a finite number" in trials[0].user_attrs["error"]


def test_a_study_where_every_trial_fails_ends_in_an_error(tmp_path: Path) -> None:
    out = run_app(study_args(tmp_path, 2, "fail_jobs=[0,1]"), cwd=tmp_path)
    assert out.returncode == 1
    assert "No trial of study 'dummy' completed (2 failed)" in out.stderr


def test_grid_sampler_stops_at_the_grid_size(tmp_path: Path) -> None:
    args = [a if not a.startswith("x=") else "x=0,1" for a in study_args(tmp_path, 20, sampler="grid")]
    out = run_app(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    trials = load(tmp_path).trials
    assert len(trials) == 8
    assert {(t.params["x"], t.params["y"]) for t in trials} == {(x, y) for x in (0, 1) for y in (-1, -0.5, 0, 0.5)}


def test_trials_of_a_killed_sweep_are_failed_and_redone(tmp_path: Path) -> None:
    """Kill the sweep process mid-trial (as a lost login session does); the rerun marks the trial
    it left RUNNING as FAIL, does not count it, and still runs n_trials."""
    args = study_args(tmp_path, 2, "steps=200", "step_seconds=0.05")
    proc = start_app(args, cwd=tmp_path)
    try:
        wait_for(lambda: (tmp_path / "sweep" / "0" / "state.json").exists(), 60, "the first trial to start")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [t.state for t in load(tmp_path).trials] == [TrialState.RUNNING, TrialState.RUNNING]

    t0 = time.monotonic()
    out = run_app(study_args(tmp_path, 2), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "left running by a sweep that no longer exists" in out.stdout
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert time.monotonic() - t0 < 60
