"""`hydra/sweeper: mgrpo_optuna`: the sweeper's options, one comment each."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class MgrpoOptunaSweeperConf:
    _target_: str = "hydra_plugins.mgrpo_optuna_sweeper.sweeper.MgrpoOptunaSweeper"

    # Optuna storage URL. A relative `sqlite:///x.db` is taken from the directory the sweep was
    # launched in. null keeps the study in memory: nothing to resume.
    storage: Optional[str] = None
    # Study name in the storage. Rerunning with the same storage and name resumes the study.
    study_name: str = "${hydra.job.name}"
    # maximize | minimize the task's return value (mgrpo-train returns an accuracy-like score).
    direction: str = "maximize"
    # Total trials the study should have run (completed or failed). A rerun runs only the ones
    # missing, so rerunning a finished study does nothing; raise n_trials to run more.
    n_trials: int = 20
    # Trials per batch, launched together through the configured launcher (local: one after
    # another in this process; SLURM: one job array, run in parallel).
    n_jobs: int = 1
    # tpe | random | grid. grid needs every parameter discrete (choice/range) and stops at the
    # grid's size.
    sampler: str = "tpe"
    # Sampler seed. A resumed study adds the number of trials it already has, so a rerun
    # does not propose the same points again.
    seed: Optional[int] = 0
    # Extra keyword arguments of the sampler, e.g. {n_startup_trials: 5} for tpe.
    sampler_kwargs: Dict[str, Any] = field(default_factory=dict)
    # Search space, in Hydra's Optuna sweeper syntax: `interval(0.8, 1.2)`,
    # `tag(log, interval(1e-6, 1e-4))`, `tag(int, interval(1, 8))`, `choice(a, b)` or `a,b,null`,
    # `range(8, 65, 8)`. Plain values are fixed overrides. Sweeps given on the command line join
    # the space and replace a same-named entry here.
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="mgrpo_optuna", node=MgrpoOptunaSweeperConf, provider="mgrpo"
)
