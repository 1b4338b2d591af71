"""A SLURM job warned of its time limit (or preempted) stops after its step, checkpoints, requeues.

submitit starts every task of a job with a handler for USR2 (`submitit.JobEnvironment.USR_SIG`).
SLURM sends that signal to every task of the job step `signal_delay_s` before the time limit
(`--signal=USR2@<s>`; its periodic check makes that up to 30 s earlier), and submitit's
`_interrupt()` sends it to simulate a preemption. submitit's handler requeues the job at once,
wherever the signal lands, so everything since the last `trainer.checkpoint_every` would be lost.

`StopRequest` puts a handler in its place that only records the signal. The loop asks at each
step boundary (`agreed`: the flag all-reduced over the ranks, so all of them stop after the same
step even when the signal reaches them on either side of a boundary); the trainer then writes its
usual checkpoint and raises `JobStopped`, and `mgrpo-train` calls submitit's handler from the
main thread once the engines and the process group are closed (`requeue`). On rank 0 that handler
dumps the launcher's `checkpoint()` (the same job again, which resumes from its output directory),
counts a time-out against `max_num_timeout` and runs `scontrol requeue`; every rank then exits
without a result, as submitit's own path does.

A step that cannot end in the warning window must not cost the requeue: when the loop has not
handed over after `FALLBACK_FRACTION` of `signal_delay_s`, a watcher thread calls submitit's
handler itself, and the job resumes from its last checkpoint as it did before this existed.
(Python runs a signal handler in the main thread between bytecodes: a main thread stuck in one
native call, a hung collective say, delays the flag and so the watcher; the collective's own
timeout, `trainer.collective_timeout_s`, ends that case.)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, Optional

from mgrpo.parallel import Ranks

log = logging.getLogger(__name__)

FALLBACK_FRACTION = 0.8
"""Share of the warning window the loop has to reach a step boundary and checkpoint; the rest is
left for the requeue itself (submitit's pickle and `scontrol requeue` take about a second)."""


class JobStopped(RuntimeError):
    """The job was told to stop and has checkpointed `step`; `mgrpo-train` requeues it."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped after step {step} on SLURM's warning (time limit or preemption); checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Records `signum` for the loop instead of acting on it; hands over to the previous handler.

    Args:
        signum: the signal to record (submitit's USR2).
        deadline_s: seconds after the signal after which a watcher thread hands over by itself;
            None: never (the loop alone decides).
        poll_s: how often the watcher looks at the flag.
    """

    def __init__(self, signum: int, deadline_s: Optional[float] = None, poll_s: float = 0.5) -> None:
        self.signum = signum
        self.deadline_s = deadline_s
        self.received_at: Optional[float] = None
        """time.monotonic() of the first signal: the flag, the only thing the handler sets."""
        self._previous: Any = signal.getsignal(signum)
        self._handed_over = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        signal.signal(signum, self._record)
        if deadline_s is not None and callable(self._previous):
            threading.Thread(target=self._watch, args=(poll_s,), name="mgrpo-stop-deadline", daemon=True).start()

    @classmethod
    def for_submitit_job(cls, signal_delay_s: Optional[float]) -> Optional["StopRequest"]:
        """The stop request of a task of a submitit SLURM job (None elsewhere: a local run,
        torchrun). `signal_delay_s`: the launcher's warning time, which sets the fallback."""
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return None
        import submitit

        signum = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        if not callable(signal.getsignal(signum)):  # submitit installs its handler before the job runs
            return None
        return cls(signum, None if signal_delay_s is None else FALLBACK_FRACTION * float(signal_delay_s))

    @property
    def requested(self) -> bool:
        """Whether this process has received the signal."""
        return self.received_at is not None

    def agreed(self, ranks: Ranks) -> bool:
        """True on every rank when any rank has received the signal. A collective: every rank
        calls it at the same point of the loop."""
        return ranks.all_reduce([float(self.requested)], op="max")[0] > 0

    def requeue(self) -> NoReturn:
        """Hand over to the previous handler (submitit's: rank 0 requeues the job and exits, the
        other ranks return), then exit without a result: the requeued job produces it."""
        if self._hand_over():
            self._call_previous()
        sys.exit(-1)

    def close(self) -> None:
        """The run is over: stop the watcher and give the signal back to the previous handler (a
        late warning then requeues a finished job, which returns at once, rather than letting the
        limit kill it before its result is written)."""
        self._closed.set()
        signal.signal(self.signum, self._previous)

    # ---- internals -------------------------------------------------------------------------
    def _record(self, signum: int, frame: Any) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()

    def _hand_over(self) -> bool:
        """True for the first caller only (the loop or the watcher)."""
        with self._lock:
            first = not self._handed_over
            self._handed_over = True
            return first

    def _watch(self, poll_s: float) -> None:
        assert self.deadline_s is not None
        while not self._closed.wait(poll_s):
            if self.received_at is None or time.monotonic() - self.received_at < self.deadline_s:
                continue
            if self._hand_over():
                message = (
                    f"[mgrpo] not requeued {self.deadline_s:.0f} s after SLURM's warning: requeueing now, perhaps without "
                    "a checkpoint of the step in flight (the job resumes from its last complete one; a step longer than "
                    "the warning needs a longer hydra.launcher.signal_delay_s)"
                )
                log.warning(message)
                print(message, file=sys.stderr, flush=True)
                self._call_previous()
            return

    def _call_previous(self) -> None:
        # `scontrol requeue` makes SLURM send SIGTERM to every process of the job step, scontrol
        # included, which then dies before it returns (seen on a loaded node: submitit raises
        # CalledProcessError and the job reports a failure although it was requeued). Blocked in
        # this thread, SIGTERM stays blocked in the scontrol it starts; SLURM's SIGKILL after
        # KillWait still ends every process.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        self._previous(self.signum, None)
