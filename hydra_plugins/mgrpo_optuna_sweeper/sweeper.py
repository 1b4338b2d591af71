"""An Optuna sweeper for Hydra over optuna's ask-and-tell API.

Each batch asks the study for `n_jobs` trials, launches them together through the configured
launcher (basic or SLURM), and tells the study each job's return value. The Hydra job number of
a trial is its trial number, so every trial has its own job directory, across reruns too.

- **Failures:** a job that raised, returned something other than a finite number, or died
  outside Python (reported by mgrpo's SLURM launcher) is told as FAIL, with its error and log
  paths in the trial's user attrs, and the sweep goes on. The sweep fails at the end only when
  the study has no completed trial at all.
- **Resuming:** with a `storage`, a rerun of the same command loads the study and runs only the
  trials still missing from `n_trials`. Trials this sweeper counts are those it reported
  (`mgrpo_outcome` user attr). Trials of an interrupted sweep are told FAIL without it, so they
  do not count and new trials take their place (the grid sampler queues the same points again):
  on Ctrl-C or an error at once, and, for a sweep process that was killed, at the next start
  (trials it left RUNNING on this host under a process id that no longer exists).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    Glob,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
OUTCOME_ATTR = "mgrpo_outcome"


def _option_error(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"hydra.sweeper.{key}={value!r} is invalid: {allowed}.")


def distribution_from_override(override: Override) -> Any:
    """The optuna distribution of one swept parameter, in the syntax of Hydra's Optuna sweeper."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    name = override.key_or_group
    if isinstance(value, Glob):
        raise ValueError(f"{name}: glob() is not supported by the Optuna sweeper; list the choices")
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.identity))
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise ValueError(f"{name}: choices must be numbers, strings, booleans or null, not {bad}")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise ValueError(f"{name}: {override.get_value_element_as_str()} is empty")
        step = abs(value.step)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), step=int(step))
        return FloatDistribution(float(min(values)), float(max(values)), step=float(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(math.ceil(value.start), math.floor(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{name}: {override.input_line!r} is not a sweep the Optuna sweeper supports")


def search_space(
    params: Optional[Mapping[str, str]], arguments: Sequence[str]
) -> Tuple[Dict[str, Any], Dict[str, str], List[str]]:
    """Split `hydra.sweeper.params` and command-line overrides into (distributions by parameter
    name, override key of each parameter, fixed overrides). A command-line override replaces a
    same-named param, as in Hydra's basic sweeper."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    final: Dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        final[override.get_key_element()] = override
    distributions: Dict[str, Any] = {}
    keys: Dict[str, str] = {}
    fixed: List[str] = []
    for key, override in final.items():
        if override.is_sweep_override():
            distributions[override.key_or_group] = distribution_from_override(override)
            keys[override.key_or_group] = key
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return distributions, keys, fixed


def grid_values(distributions: Mapping[str, Any]) -> Dict[str, List[Any]]:
    """Every point of each distribution, for the grid sampler."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: Dict[str, List[Any]] = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[name] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise ValueError(f"sampler=grid needs discrete values (choice or range); {name} is {dist}")
    return grid


def _plain(mapping: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """A plain dict from an option Hydra hands over as a DictConfig (or None)."""
    if mapping is None:
        return {}
    if OmegaConf.is_config(mapping):
        return dict(OmegaConf.to_container(mapping, resolve=True))
    return dict(mapping)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MgrpoOptunaSweeper(Sweeper):
    """See the module docstring; options are documented in `config.py`."""

    def __init__(
        self,
        storage: Optional[str],
        study_name: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: str,
        seed: Optional[int],
        sampler_kwargs: Mapping[str, Any],
        params: Optional[Mapping[str, str]],
    ) -> None:
        if direction not in DIRECTIONS:
            raise _option_error("direction", direction, "use maximize or minimize")
        if sampler not in SAMPLERS:
            raise _option_error("sampler", sampler, "use one of " + ", ".join(SAMPLERS))
        if not (isinstance(n_trials, int) and n_trials >= 1):
            raise _option_error("n_trials", n_trials, "must be an integer >= 1")
        if not (isinstance(n_jobs, int) and n_jobs >= 1):
            raise _option_error("n_jobs", n_jobs, "must be an integer >= 1")
        self.storage = storage
        self.study_name = study_name
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_name = sampler
        self.seed = seed
        self.sampler_kwargs = _plain(sampler_kwargs)
        self.params = _plain(params)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ---- study ---------------------------------------------------------------------------------
    def _storage_url(self) -> Optional[str]:
        from mgrpo.tracking import resolve_tracking_uri

        if not self.storage:
            return None
        assert self.config is not None
        url = resolve_tracking_uri(self.storage, Path(str(self.config.hydra.runtime.cwd)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
        return url

    def _sampler(self, trials_so_far: int) -> Any:
        import optuna

        seed = None if self.seed is None else self.seed + trials_so_far
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **self.sampler_kwargs)
        # grid: the points are enqueued (see _enqueue_grid); this only draws if none is left.
        return optuna.samplers.RandomSampler(seed=seed, **self.sampler_kwargs)

    def _enqueue_grid(self, study: Any, distributions: Mapping[str, Any]) -> int:
        """Queue the grid points no counted trial has run yet, in a seeded random order; return
        the grid's size. Optuna's GridSampler is not used: it calls `study.stop()` when the grid is
        exhausted, which raises outside `study.optimize`."""
        import itertools
        import random

        from optuna.trial import TrialState

        grid = grid_values(distributions)
        names = list(grid)
        points = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
        taken = [t.params for t in study.get_trials(deepcopy=False) if OUTCOME_ATTR in t.user_attrs]
        taken += [t.params for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
        missing = [p for p in points if p not in taken]
        random.Random(self.seed).shuffle(missing)
        for point in missing:
            study.enqueue_trial(point)
        return len(points)

    def _fail_abandoned_trials(self, study: Any) -> None:
        """Tell FAIL (uncounted, so redone) the trials a killed sweep process on this host left
        RUNNING."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            pid = attrs.get("sweeper_pid")
            if attrs.get("sweeper_host") == host and isinstance(pid, int) and not _pid_alive(pid):
                log.warning(f"Trial {trial.number} was left running by a sweep that no longer exists; marking it FAIL")
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    @staticmethod
    def _counted(study: Any) -> int:
        return sum(1 for t in study.get_trials(deepcopy=False) if OUTCOME_ATTR in t.user_attrs)

    # ---- the loop ------------------------------------------------------------------------------
    def sweep(self, arguments: List[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        distributions, keys, fixed = search_space(self.params, arguments)
        if not distributions:
            raise ValueError("the Optuna sweep has nothing to search: set hydra.sweeper.params or pass a sweep")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        storage = self._storage_url()
        # A first look at the study only to size the sampler's seed offset.
        existing = 0
        if storage is not None:
            try:
                existing = len(optuna.load_study(study_name=self.study_name, storage=storage).trials)
            except KeyError:
                existing = 0
        study = optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            direction=self.direction,
            sampler=self._sampler(existing),
            load_if_exists=True,
        )
        self._fail_abandoned_trials(study)
        target = self.n_trials
        if self.sampler_name == "grid":
            target = min(target, self._enqueue_grid(study, distributions))
        done = self._counted(study)
        log.info(
            f"Study '{self.study_name}' ({storage or 'in memory'}): {done} trials done, "
            f"running {max(0, target - done)} more in batches of {self.n_jobs}, sampler {self.sampler_name}"
        )
        while done < target:
            batch = [study.ask(distributions) for _ in range(min(self.n_jobs, target - done))]
            try:
                self._run_batch(study, batch, keys, fixed, sweep_dir)
            except BaseException:
                for trial in batch:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            done += len(batch)
        self._report(study, sweep_dir, storage)

    def _run_batch(self, study: Any, batch: List[Any], keys: Mapping[str, str], fixed: List[str], sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        for trial in batch:
            trial.set_user_attr("sweeper_host", socket.gethostname())
            trial.set_user_attr("sweeper_pid", os.getpid())
            trial.set_user_attr("job_dir", str(sweep_dir / str(trial.number)))
        overrides = [
            fixed + [f"{keys[name]}={Transformer.str(value)}" for name, value in trial.params.items()]
            for trial in batch
        ]
        self.validate_batch_is_legal(overrides)
        results: List[JobReturn] = []
        # Job numbers are trial numbers; a launch covers consecutive numbers, which they are
        # unless another process asks trials of the same study at the same time.
        start = 0
        while start < len(batch):
            end = start + 1
            while end < len(batch) and batch[end].number == batch[end - 1].number + 1:
                end += 1
            results += self.launcher.launch(overrides[start:end], initial_job_idx=batch[start].number)
            start = end
        for trial, ret in zip(batch, results):
            value, error = self._objective(ret)
            if error is None:
                trial.set_user_attr(OUTCOME_ATTR, "complete")
                study.tell(trial, value)
                log.info(f"Trial {trial.number} {trial.params}: {value}")
            else:
                from mgrpo.sweeps import describe_failure

                message, paths = describe_failure(ret, job_num=trial.number)
                trial.set_user_attr(OUTCOME_ATTR, "failed")
                trial.set_user_attr("error", error[:2000])
                trial.set_user_attr("logs", paths)
                study.tell(trial, state=TrialState.FAIL)
                log.warning(f"Trial {trial.number} marked FAIL: {message if ret.status == JobStatus.FAILED else error}")

    @staticmethod
    def _objective(ret: JobReturn) -> Tuple[Optional[float], Optional[str]]:
        """(value, None) for a usable return value, else (None, why)."""
        if ret.status != JobStatus.COMPLETED:
            err = ret._return_value
            return None, f"{type(err).__name__}: {err}"
        value = ret.return_value
        try:
            number = None if isinstance(value, (bool, str)) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number):
            return None, f"the task returned {value!r}; the objective must be a finite number"
        return number, None

    def _report(self, study: Any, sweep_dir: Path, storage: Optional[str]) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if OUTCOME_ATTR in t.user_attrs]
        if not complete:
            raise RuntimeError(
                f"No trial of study '{self.study_name}' completed ({len(failed)} failed); "
                "their errors and log paths are above and in the trials' user attrs"
            )
        best = study.best_trial
        results = {
            "study_name": self.study_name,
            "storage": storage,
            "direction": self.direction,
            "best_value": best.value,
            "best_params": best.params,
            "best_trial": best.number,
            "best_job_dir": best.user_attrs.get("job_dir"),
            "n_complete": len(complete),
            "n_failed": len(failed),
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info(f"Best trial {best.number}: {best.value} with {best.params} ({len(complete)} complete, {len(failed)} failed)")
