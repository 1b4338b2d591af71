"""Online collapse monitoring: the offline detectors, called from inside the training loop.

The trainer keeps the history it has logged (metric name -> [(step, value)]) and calls
`check_history` every few steps; no MLflow, no disk, only pandas. The verdict's `tags()` are
the run data contract's `mgrpo.collapsed` / `mgrpo.collapse_step`.

    verdict = check_history(history, Thresholds(heldout_size=cfg.data.heldout_size))
    tracker.set_tags(verdict.tags())
    if verdict.collapsed and cfg.monitor.stop_on_collapse: ...
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import pandas as pd

from .detectors import ACCURACY, Detection, Thresholds, Verdict, detect

__all__ = ["check_history", "Thresholds", "Verdict", "Detection"]


def check_history(
    history: Mapping[str, Sequence[tuple[int, float]]],
    thresholds: Optional[Thresholds] = None,
    *,
    metric: str = ACCURACY,
) -> Verdict:
    """Judge a run from its history so far: metric name -> [(step, value), ...].

    Points may come in any order; a step logged twice keeps its last value. Metrics the
    detectors do not use are ignored, missing ones are noted in the verdict. A collapse is
    reported only once it has lasted to the latest step for the sustain length in `thresholds`,
    so a verdict can change from collapsed back to not collapsed if the run recovers.
    """
    curves = {}
    for name, points in history.items():
        if not points:
            continue
        steps, values = zip(*points)
        curves[name] = pd.Series(values, index=pd.Index(steps, dtype="int64"), dtype="float64")
    return detect(curves, thresholds, metric=metric)
