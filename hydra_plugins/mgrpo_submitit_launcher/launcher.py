"""Hydra's submitit SLURM launcher, changed only in how it collects results.

The upstream launcher ends with `[job.results()[0] for job in jobs]`. A job that dies outside
Python (killed for memory, over its time limit with no requeue left, a crashed node) raises
there, and the parent stops collecting: later results are dropped even though those jobs ran,
and an Optuna sweep loses the whole batch. Here each job is collected on its own. A job that
produced no result becomes a FAILED `JobReturn` whose error names its log files, and every
failed job, whether Python raised in it or SLURM ended it, is reported with its logs as soon as
it is collected. What a sweep does with a failure stays the sweeper's choice: Hydra's basic
sweeper raises the first one after the whole batch is in; the mgrpo_optuna sweeper marks the
trial FAIL and goes on.

Submission, `checkpoint()` (requeue on preemption or timeout resubmits the same pickled job, so
it finds its own output directory) and the job side are upstream's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def _summarize(job: Any, err: Exception) -> str:
    """One line for a job that returned no result: its SLURM state when it never finished
    (CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL...), else the last line of its traceback."""
    import submitit

    if isinstance(err, submitit.core.utils.UncompletedJobError):
        return f"SLURM job {job.job_id} ended without a result (state {job.state})"
    lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("---")]
    trace_end = [line for line in lines if not line.startswith((" ", "Traceback", "You can check", "or at paths"))]
    return f"SLURM job {job.job_id} failed: {trace_end[-1] if trace_end else type(err).__name__}"


class MgrpoSlurmLauncher(SlurmLauncher):
    """submitit SLURM launcher that reports every failed job and returns every job's outcome."""

    def _executor(self) -> Any:
        """The submitit executor, with the launcher's parameters mapped as upstream maps them."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
        )
        base_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in base_keys else f"{self._EXECUTOR}_{key}": value
                for key, value in self.params.items()
                if key not in init_keys
            }
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mgrpo.sweeps import JobFailedError, describe_failure

        assert self.config is not None
        assert len(job_overrides) > 0
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        job_params = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            )
        jobs = executor.map_array(self, *zip(*job_params))

        returns: list[JobReturn] = []
        failed = 0
        for offset, (job, overrides) in enumerate(zip(jobs, job_overrides)):
            idx = initial_job_idx + offset
            try:
                ret = job.results()[0]
            except Exception as err:  # submitit's UncompletedJobError / FailedJobError
                ret = JobReturn(
                    overrides=list(overrides),
                    status=JobStatus.FAILED,
                    _return_value=JobFailedError(_summarize(job, err), [job.paths.stderr, job.paths.stdout]),
                )
            if ret.status == JobStatus.FAILED:
                failed += 1
                message, _ = describe_failure(ret, job_num=idx)
                log.error(message)
            returns.append(ret)
        if failed:
            log.error(f"{failed} of {len(jobs)} jobs failed; the others completed (see above)")
        return returns
