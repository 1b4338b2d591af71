"""The ranks of one run: who I am, what my device is, and the few collectives the loop needs.

One run is one job of W ranks, one per GPU (or W CPU processes on gloo). They are started by
`torchrun` (which sets RANK, WORLD_SIZE, ...) or as the W tasks of one SLURM job through
submitit (`resources.tasks_per_node`), whose variables `init_ranks` exports with submitit's
`TorchDistributedEnvironment`. A single process (no such variables) is W = 1 and needs no
process group: every helper here is then a no-op, so the loop reads the same either way.

A rank that dies must not hang the others: each rank beats a counter in the rendezvous store
from a thread (`RankWatchdog`). When a peer's counter stops for `heartbeat_timeout_s`, or a peer
reports a crash, the watchdog stops this rank with an error that names the failed rank; a
collective that fails because its peer is gone is reported the same way (`RankFailure`). A
collective that merely hangs ends at the process group's `collective_timeout_s`.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

WATCHDOG_EXIT_CODE = 75
"""Exit status of a rank stopped by its watchdog because another rank failed."""


class RankFailure(RuntimeError):
    """Another rank of this run died or crashed; the message names it and says how to resume."""


@dataclass
class Ranks:
    """This process's place in the run. `world_size == 1` means a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    watchdog: Optional["RankWatchdog"] = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that talks to MLflow, shows progress and writes shared files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ---- collectives (no-ops on one rank) ---------------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Element-wise sum or max of a list of floats over ranks (float64, one collective)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return tensor.tolist()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def comm_device(self) -> torch.device:
        """Where collective buffers live: the GPU for nccl, the CPU for gloo."""
        return self.device if self.distributed and dist.get_backend() == "nccl" else torch.device("cpu")

    def shard(self, count: int, what: str = "trainer.prompts_per_step") -> slice:
        """This rank's contiguous share of `count` items; `count` must divide evenly."""
        if count % self.world_size:
            raise ValueError(
                f"{what}={count} cannot be split over {self.world_size} ranks: use a multiple of "
                f"{self.world_size}, or run on a number of ranks that divides {count}"
            )
        per_rank = count // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def reduce_metrics(self, weighted: dict[str, tuple[float, float]], summed: dict[str, float], maxed: dict[str, float]) -> dict[str, float]:
        """Per-step metrics over ranks, in one collective.

        Args:
            weighted: name -> (local mean, local weight): the global mean weighted by count.
                A metric whose total weight is 0 is left out.
            summed: name -> local value, summed over ranks.
            maxed: name -> local value, maximum over ranks (e.g. phase times).
        Every rank must pass the same keys.
        """
        w_keys, s_keys, m_keys = sorted(weighted), sorted(summed), sorted(maxed)
        sums = self.all_reduce(
            [weighted[k][0] * weighted[k][1] for k in w_keys] + [weighted[k][1] for k in w_keys] + [summed[k] for k in s_keys]
        )
        maxima = self.all_reduce([maxed[k] for k in m_keys], op="max")
        n = len(w_keys)
        out = {k: sums[i] / sums[n + i] for i, k in enumerate(w_keys) if sums[n + i] > 0}
        out.update({k: sums[2 * n + i] for i, k in enumerate(s_keys)})
        out.update(dict(zip(m_keys, maxima)))
        return out

    def fail(self, error: BaseException) -> RankFailure:
        """Tell the other ranks this one failed, and name the ranks that are gone, when the error
        came from a dead peer. Returns the error to raise (chain the original to it)."""
        own = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        if self.watchdog is None:
            return RankFailure(f"rank {self.rank} failed ({own}). {RESUME_HINT}")
        self.watchdog.report_failure(own)
        gone = self.watchdog.failed_peers(wait_s=3 * self.watchdog.interval_s)
        if not gone:
            return RankFailure(f"rank {self.rank} failed ({own}). {RESUME_HINT}")
        return RankFailure(f"{describe_peers(gone)}; rank {self.rank} stopped on {own}. {RESUME_HINT}")

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


STOP_JOIN_S = 10.0
"""How long `RankWatchdog.stop` waits for a store call in flight (one that hangs on a dead store
is left behind)."""

RESUME_HINT = "Rerun the same command to resume from the last complete checkpoint."


def describe_peers(gone: dict[int, str]) -> str:
    return "; ".join(f"rank {r} {why}" for r, why in sorted(gone.items()))


class RankWatchdog:
    """Heartbeats through the rendezvous store; stops this rank when a peer is gone.

    Each rank increments `mgrpo/beat/<rank>` every `interval_s` from a daemon thread, which runs
    whatever the main thread is doing (generation, a collective, answer checking). Counters, not
    clocks, so nodes need not agree on the time. A peer whose counter has not moved for
    `timeout_s`, or that wrote `mgrpo/failed/<rank>`, is gone: the watchdog logs which one and,
    if the main thread has not stopped by itself within `grace_s`, ends the process.
    """

    def __init__(self, store: dist.Store, rank: int, world_size: int, interval_s: float, timeout_s: float, grace_s: float = 10.0) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self._seen: dict[int, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._gone: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mgrpo-rank-watchdog", daemon=True)

    def start(self) -> "RankWatchdog":
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the heartbeat and wait for its thread to end. Waiting matters at exit: a daemon
        thread still inside a store call while the interpreter finalizes is ended through a C++
        destructor (pybind11's GIL release), which aborts the whole process ("terminate called
        without an active exception", pytorch/pytorch#38228) after the run has finished."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_JOIN_S)

    def report_failure(self, message: str) -> None:
        try:
            self.store.set(f"mgrpo/failed/{self.rank}", message)
        except Exception:  # the store itself may be gone; the heartbeat stops anyway
            pass

    def failed_peers(self, wait_s: float = 0.0) -> dict[int, str]:
        """Peers known to be gone, waiting up to `wait_s` for a verdict."""
        deadline = time.monotonic() + wait_s
        while True:
            found = self._check(stale_after=min(self.timeout_s, max(wait_s, 2 * self.interval_s)))
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(self.interval_s / 2)

    def _beat(self) -> None:
        self.store.add(f"mgrpo/beat/{self.rank}", 1)

    def _check(self, stale_after: float) -> dict[int, str]:
        now = time.monotonic()
        gone: dict[int, str] = {}
        try:
            for peer in range(self.world_size):
                if peer == self.rank:
                    continue
                failed_key = f"mgrpo/failed/{peer}"
                if self.store.check([failed_key]):
                    gone[peer] = f"crashed ({self.store.get(failed_key).decode(errors='replace')})"
                    continue
                count = self.store.add(f"mgrpo/beat/{peer}", 0)
                last_count, since = self._seen.get(peer, (-1, now))
                if count != last_count:
                    self._seen[peer] = (count, now)
                elif now - since > stale_after:
                    gone[peer] = f"stopped responding (no heartbeat for {now - since:.0f} s)"
        except Exception as err:
            gone[0] = f"is unreachable: the rendezvous store it (or the launcher) hosts is gone ({type(err).__name__})"
        with self._lock:
            self._gone.update(gone)
            return dict(self._gone)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except Exception:
                pass
            gone = self._check(stale_after=self.timeout_s)
            if gone:
                message = f"[mgrpo] rank {self.rank}: {describe_peers(gone)}; stopping. {RESUME_HINT}"
                log.error(message)
                print(message, file=sys.stderr, flush=True)
                if not self._stop.wait(self.grace_s):
                    os._exit(WATCHDOG_EXIT_CODE)
                return


def launched_ranks() -> bool:
    """True when this process is one of several ranks (torchrun, or a multi-task SLURM job)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def init_ranks(device: str, collective_timeout_s: float, heartbeat_timeout_s: float, heartbeat_interval_s: float = 1.0) -> Ranks:
    """Join the run's process group (nccl on GPUs, gloo on CPUs), or return a single rank.

    Args:
        device: 'auto' | 'cpu' | 'cuda' (`trainer.device`); rank r uses cuda:<local rank>.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not launched_ranks():
        return Ranks(device=torch.device("cuda" if use_cuda else "cpu"))
    if "RANK" not in os.environ:
        # One SLURM task per rank: submitit knows the task's place; export it for env://.
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=collective_timeout_s))
    ranks = Ranks(rank, world_size, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))
    store = dist.distributed_c10d._get_default_store()
    ranks.watchdog = RankWatchdog(store, rank, world_size, heartbeat_interval_s, heartbeat_timeout_s).start()
    dist.barrier()
    log.info("rank %d of %d on %s (%s)", rank, world_size, ranks.device, backend)
    return ranks
