"""Memory and time of the H200 check, phase by phase, and the budget of
conf/resources/h200x8.yaml set against what was measured.

`PhaseProbe` measures named phases, which may nest. On CUDA each phase reads the caching
allocator: `torch.cuda.reset_peak_memory_stats()` at its start, `max_memory_allocated()` at its
end (a nested phase's peak is carried into the phases around it, so resetting for the inner one
loses nothing). On a CPU there is no allocator to ask: a thread samples the process's resident
set size every few milliseconds instead, a coarser stand-in that lets the CPU variant of the
check run the same code.

`read_budget` reads the per-GPU budget that h200x8.yaml writes out in its comments, line by line,
and `compare_budget` scales each item to the check's run (one rank instead of the file's eight,
the check's micro-batch and rollout token counts) and puts the measured number beside it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

GB = 1e9
"""h200x8.yaml's GB and KB are decimal (4.02 B x 4 B / 8 = 2.0 GB); its KiB is 1024 B."""


@dataclass
class _Frame:
    name: str
    start_allocated: int
    started: float
    peak: int


class _RssSampler:
    """The process's peak resident set size since the last `reset`, sampled from /proc."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _RssSampler.PAGE

    def reset(self) -> None:
        self.peak = self.current()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.current())

    def close(self) -> None:
        self._stop.set()


class PhaseProbe:
    """Seconds, allocated bytes at start and end, and the peak, of each named phase."""

    def __init__(self, device: torch.device, on_end: Optional[Callable[[], None]] = None) -> None:
        """`on_end` is called after each phase (e.g. to save the report so far)."""
        self.device = device
        self.on_end = on_end
        self.cuda = device.type == "cuda"
        self.source = "cuda caching allocator (max_memory_allocated, reset per phase)" if self.cuda else "process RSS, sampled every 2 ms"
        self._rss = None if self.cuda else _RssSampler()
        self._stack: list[_Frame] = []
        self.phases: dict[str, dict[str, float]] = {}

    def allocated(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return _RssSampler.current()

    def _peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else self._rss.peak

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss.reset()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def begin(self, name: str) -> None:
        self._sync()
        peak = self._peak()
        for frame in self._stack:
            frame.peak = max(frame.peak, peak)
        self._reset()
        now = self.allocated()
        self._stack.append(_Frame(name, now, time.perf_counter(), now))

    def end(self, name: str) -> dict[str, float]:
        self._sync()
        if not self._stack or self._stack[-1].name != name:
            raise RuntimeError(f"phase {name!r} ended while {[f.name for f in self._stack]} were open")
        frame = self._stack.pop()
        peak = max(frame.peak, self._peak())
        for parent in self._stack:
            parent.peak = max(parent.peak, peak)
        end = self.allocated()
        record = {
            "seconds": time.perf_counter() - frame.started,
            "start_allocated_bytes": frame.start_allocated,
            "end_allocated_bytes": end,
            "peak_allocated_bytes": peak,
            "peak_above_start_bytes": peak - frame.start_allocated,
        }
        if self.cuda:
            record["reserved_bytes_at_end"] = torch.cuda.memory_reserved(self.device)
        self.phases[name] = record
        if self.on_end is not None:
            self.on_end()
        return record

    def is_open(self, name: str) -> bool:
        return any(f.name == name for f in self._stack)

    def close(self) -> None:
        if self._rss is not None:
            self._rss.close()


# ---- the budget -------------------------------------------------------------------------------


class BudgetFormatError(ValueError):
    """h200x8.yaml's budget comments no longer read as this check expects."""


BUDGET_LINES = {
    # key: (the comment line starts with this, what the number is)
    "policy_master": ("policy float32 master shard", "GB"),
    "policy_grad": ("its float32 gradient shard", "GB"),
    "adamw_state": ("AdamW exp_avg + exp_avg_sq shards", "GB"),
    "momentum": ("momentum float32 shard", "GB"),
    "reference": ("reference bf16 shard", "GB"),
    "gathered_weights": ("gathered bf16 weights in flight", "GB"),
    "layer_inputs": ("layer inputs", "KB/token"),
    "layer_recompute": ("one layer recomputed", "KB/token"),
    "logits": ("logits:", "GB"),
    "engine_weights": ("bf16 weights", "GB"),
    "kv_cache": ("KV cache:", "KiB/token"),
}
SHARDED = ("policy_master", "policy_grad", "adamw_state", "momentum", "reference")
"""Items the file divides over its ranks (one FSDP shard per GPU)."""


def read_budget(path: Path) -> dict:
    """The budget items of h200x8.yaml: GB items in bytes, per-token items in bytes per token,
    the logits item times its stated multiplier ('x2 with log-softmax'), the micro-batch tokens
    the activations are budgeted at ('KB/token x 14,336'), one rank's KV-cache share ('= 114,688
    tokens = 16.5 GB'), and the world size the file budgets for (resources.nodes x
    resources.tasks_per_node)."""
    import yaml

    text = path.read_text()
    comments = [line.lstrip("#").strip() for line in text.splitlines() if line.lstrip().startswith("#")]
    items: dict[str, float] = {}
    for key, (start, unit) in BUDGET_LINES.items():
        found = [c for c in comments if c.startswith(start)]
        if not found:
            raise BudgetFormatError(f"{path}: no budget comment line starts with {start!r} (item {key}); update experiments/gpu_smoke/check_memory.py BUDGET_LINES")
        line = found[0]
        if unit == "GB":
            match = re.search(r"=\s*([\d.]+)\s*GB", line)
            value = float(match.group(1)) * GB if match else None
            times = re.search(r"\(x(\d+)", line)
            if value is not None and times:
                value *= int(times.group(1))
        else:
            match = re.search(r"([\d.]+)\s*" + re.escape(unit), line)
            value = float(match.group(1)) * (1024 if unit.startswith("KiB") else 1000) if match else None
        if value is None:
            raise BudgetFormatError(f"{path}: the line {line!r} (item {key}) has no '{unit}' number")
        items[key] = value
    tokens = re.search(r"KB/token x ([\d,]+)", next(c for c in comments if c.startswith(BUDGET_LINES["layer_inputs"][0])))
    share = re.search(r"([\d,]+) tokens\s*=\s*([\d.]+)\s*GB", "\n".join(comments))
    if tokens is None or share is None:
        raise BudgetFormatError(f"{path}: the activation line needs 'KB/token x <tokens>' and the KV cache lines '<n> tokens = <x> GB'")
    items["micro_batch_tokens"] = float(tokens.group(1).replace(",", ""))
    items["kv_cache_share"] = float(share.group(2)) * GB
    resources = yaml.safe_load(text)["resources"]
    return {"path": str(path), "world_size": int(resources["nodes"]) * int(resources["tasks_per_node"]), "items": items}


def compare_budget(budget: dict, measured: dict[str, Optional[float]], world_size: int, micro_batch_tokens: int, rollout_tokens: int) -> list[dict]:
    """One row per budget item: the file's per-GPU number, that number for this check's run, and
    the measurement.

    Args:
        measured: bytes per row key (see the rows below); None where the run measured nothing.
        world_size: ranks of the check (the file's sharded items grow by file ranks / this).
        micro_batch_tokens: tokens of one update micro-batch (rows x sequence length).
        rollout_tokens: tokens in flight in the largest generate call (rows x sequence length).
    """
    b = budget["items"]
    scale = budget["world_size"] / world_size
    rows = [(key, b[key], b[key] * scale, f"x {scale:g} (one FSDP shard per rank, {world_size} rank(s) here)") for key in SHARDED]
    rows.append(("engine_weights", b["engine_weights"], b["engine_weights"], "the rollout engine's own bf16 copy (HF engine here, vLLM on the node)"))
    transient = b["gathered_weights"] + (b["layer_inputs"] + b["layer_recompute"]) * micro_batch_tokens + b["logits"]
    file_transient = b["gathered_weights"] + (b["layer_inputs"] + b["layer_recompute"]) * b["micro_batch_tokens"] + b["logits"]
    rows.append((
        "update_transient", file_transient, transient,
        f"gathered bf16 weights + checkpointed activations at {micro_batch_tokens} tokens per micro-batch + logits chunk",
    ))
    rows.append(("kv_cache", b["kv_cache_share"], b["kv_cache"] * rollout_tokens, f"KV cache of {rollout_tokens} tokens in one generate call"))
    out = []
    for key, per_gpu, here, how in rows:
        got = measured.get(key)
        out.append({
            "item": key,
            "budget_per_gpu_in_file_gb": None if per_gpu is None else round(per_gpu / GB, 3),
            "budget_for_this_check_gb": round(here / GB, 3),
            "measured_gb": None if got is None else round(got / GB, 3),
            "measured_over_budget": None if got is None else round(got / here, 3),
            "scaling": how,
        })
    return out


MEASURED_HOW = {
    "update_transient": "peak above start of the update's forward-backward, minus the gradients it allocated",
    "kv_cache": "peak above start of the policy's rollout (HF generate: KV cache, logits, sampler buffers)",
    "other items": "bytes of the tensors themselves (local shards: the whole model at world size 1)",
}


def measured_items(tensors: dict, phases: dict) -> dict[str, Optional[float]]:
    """The report's numbers under `compare_budget`'s keys (see MEASURED_HOW), from its `tensors`
    and `phases` sections."""
    def size(key: str) -> Optional[float]:
        return tensors[key]["bytes"] if key in tensors else None

    grads = size("policy_grads")
    update = phases.get("update.forward_backward")
    rollout = phases.get("rollout.policy")
    return {
        "policy_master": size("policy_master"), "policy_grad": grads, "adamw_state": size("adamw_state"),
        "momentum": size("momentum"), "reference": size("reference"), "engine_weights": size("engine_weights"),
        "update_transient": None if update is None or grads is None else update["peak_above_start_bytes"] - grads,
        "kv_cache": None if rollout is None else rollout["peak_above_start_bytes"],
    }
