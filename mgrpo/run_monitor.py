"""The online collapse monitor of one run: the curves it reads, its verdict, and the objective.

It keeps, in memory and in every checkpoint, only the curves the collapse detectors read
(`MONITORED`: the selection set's `val/accuracy` and the `train/*` curves they use), so a
reported benchmark (`val/<benchmark>/...`) can never choose a step or a run. It runs on rank 0.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from mgrpo_analysis.detectors import ACCURACY, USED_METRICS
from mgrpo_analysis.monitor import Thresholds, check_history

log = logging.getLogger(__name__)

MONITORED = (ACCURACY, *USED_METRICS)
"""The curves the online collapse monitor reads (kept in memory and in checkpoints)."""


class RunMonitor:
    def __init__(self, monitor_cfg, trainer_cfg, selection_size: int) -> None:
        """
        Args:
            monitor_cfg: `MonitorConfig` (when and whether to stop).
            trainer_cfg: `TrainerConfig` (total steps, the objective).
            selection_size: problems per evaluation of the selection set (the noise unit).
        """
        self.cfg = monitor_cfg
        self.trainer_cfg = trainer_cfg
        self.selection_size = selection_size
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in MONITORED}
        self.collapse: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "collapse": self.collapse}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.update({k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()})
        self.collapse = state.get("collapse")

    def record(self, metrics: dict[str, float], step: int) -> None:
        for key in MONITORED:
            if key in metrics:
                self.history[key].append((step, metrics[key]))

    def latest(self, key: str) -> Optional[float]:
        return self.history[key][-1][1] if self.history.get(key) else None

    def due(self, step: int) -> bool:
        return self.cfg.enabled and (step % self.cfg.every == 0 or step == self.trainer_cfg.total_steps)

    def check(self, tracker) -> bool:
        """Run the detectors on the curves so far and tag the run; True when it should stop."""
        verdict = check_history(self.history, Thresholds(heldout_size=self.selection_size))
        tags = verdict.tags()
        if verdict.collapsed and self.collapse is None:
            self.collapse = {"step": verdict.collapse_step, "detectors": list(verdict.fired)}
            log.warning("collapse detected: %s", verdict.summary())
        if self.collapse is not None:
            # The verdict may later clear if the run recovers; the first detection is kept.
            tags["mgrpo.first_collapse_step"] = str(self.collapse["step"])
            tags["mgrpo.first_collapse_detectors"] = ",".join(self.collapse["detectors"])
        tracker.set_tags(tags)
        return verdict.collapsed and self.cfg.stop_on_collapse

    def objective(self) -> float:
        """trainer.objective over the selection set's val/accuracy curve (never a benchmark)."""
        curve = [v for _, v in self.history[ACCURACY]]
        if not curve:
            return float("nan")
        final, peak = curve[-1], max(curve)
        if self.trainer_cfg.objective == "stable_accuracy":
            return final - self.trainer_cfg.objective_drop_penalty * (peak - final)
        return final
