"""The online collapse monitor of one run: the curves it reads, its verdict, and the objective.

It keeps, in memory and in every checkpoint, only the curves the collapse detectors read
(`MONITORED`: the selection set's `collapse/selection_accuracy`, the other `collapse/*` curves the
labelled detectors use, and the label-free signals), so a reported benchmark
(`eval/<benchmark>/...`) can never choose a step or a run. It runs on rank 0. A checkpoint
written before `mgrpo.metric_names` keeps its curves under the old names; they are read under the
current ones.

`monitor.mode` picks the verdict that is tagged and may stop the run:
- labeled: `mgrpo_analysis.detectors` (held-out accuracy and the labelled diagnostics);
- label_free: the rule of `mgrpo_analysis.label_free`, handed only the label-free curves, with
  the checkpoint it would keep (the last checkpoint step at or before the alarm's onset). The
  objective returned to a sweep still reads the selection accuracy when there is one: choosing
  among runs is a labelled decision.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from mgrpo.metric_names import current_name
from mgrpo_analysis.detectors import ACCURACY, USED_METRICS
from mgrpo_analysis.label_free import LABEL_FREE_INPUTS, LabelFreeThresholds, choose_checkpoint, detect_label_free
from mgrpo_analysis.monitor import Thresholds, check_history

log = logging.getLogger(__name__)

MONITORED = tuple(dict.fromkeys((ACCURACY, *USED_METRICS, *LABEL_FREE_INPUTS)))
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
        self.label_free_alarm: Optional[dict[str, Any]] = None
        rule = getattr(monitor_cfg, "label_free_rule", None)
        self.label_free_thresholds = LabelFreeThresholds(rule=",".join(rule)) if rule else LabelFreeThresholds()

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "collapse": self.collapse, "label_free_alarm": self.label_free_alarm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.update({current_name(k): [tuple(p) for p in v] for k, v in state.get("history", {}).items()})
        self.collapse = state.get("collapse")
        self.label_free_alarm = state.get("label_free_alarm")

    def record(self, metrics: dict[str, float], step: int) -> None:
        for key in MONITORED:
            if key in metrics:
                self.history[key].append((step, metrics[key]))

    def latest(self, key: str) -> Optional[float]:
        return self.history[key][-1][1] if self.history.get(key) else None

    def due(self, step: int) -> bool:
        return self.cfg.enabled and (step % self.cfg.every == 0 or step == self.trainer_cfg.total_steps)

    def check(self, tracker) -> bool:
        """Run the detectors of `monitor.mode` on the curves so far and tag the run; True when it
        should stop."""
        if getattr(self.cfg, "mode", "labeled") == "label_free":
            return self.check_label_free(tracker)
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

    def checkpoint_steps(self, last: int) -> list[int]:
        """Steps a checkpoint is written at, up to `last`: 0, every trainer.checkpoint_every, and
        the last step of the run (whether `trainer.keep_last` still holds them is not checked)."""
        every = self.trainer_cfg.checkpoint_every
        final = {last} if last >= self.trainer_cfg.total_steps else set()
        return sorted({0, *range(every, last + 1, every)} | final)

    def check_label_free(self, tracker) -> bool:
        """The label-free rule on the label-free curves only; tags the verdict and the checkpoint
        it would keep. The first alarm is kept even if the signals later recover."""
        view = {k: self.history[k] for k in LABEL_FREE_INPUTS}
        verdict = detect_label_free(view, self.label_free_thresholds)
        last = max((points[-1][0] for points in view.values() if points), default=0)
        tags = verdict.tags()
        if verdict.alarm and self.label_free_alarm is None:
            keep = choose_checkpoint(self.checkpoint_steps(last), verdict.onset_step, self.label_free_thresholds.checkpoint_margin)
            self.label_free_alarm = {"step": last, "onset": verdict.onset_step, "detectors": list(verdict.fired_in_rule), "checkpoint": keep}
            log.warning("label-free alarm at step %d: %s; would keep the checkpoint of step %s", last, verdict.summary(), keep)
        if self.label_free_alarm is not None:
            a = self.label_free_alarm
            tags.update({
                "mgrpo.first_label_free_alarm_step": str(a["step"]),
                "mgrpo.first_label_free_onset_step": str(a["onset"]),
                "mgrpo.first_label_free_detectors": ",".join(a["detectors"]),
                "mgrpo.label_free_checkpoint_step": str(a["checkpoint"]),
            })
        else:
            tags["mgrpo.label_free_checkpoint_step"] = str(choose_checkpoint(self.checkpoint_steps(last), None))
        tracker.set_tags(tags)
        return verdict.alarm and self.cfg.stop_on_collapse

    def objective(self) -> float:
        """trainer.objective over the selection set's accuracy curve (never a benchmark)."""
        curve = [v for _, v in self.history[ACCURACY]]
        if not curve:
            return float("nan")
        final, peak = curve[-1], max(curve)
        if self.trainer_cfg.objective == "stable_accuracy":
            return final - self.trainer_cfg.objective_drop_penalty * (peak - final)
        return final
