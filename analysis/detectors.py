"""Collapse detectors: pure functions from metric curves to a verdict.

A *curve* is a `pandas.Series` of values indexed by step. `detect` takes a mapping from metric
name to curve (whatever subset of the run data contract is present) and returns a `Verdict`.
The same function serves the offline report (`detect_runs` over the long curves frame) and the
online monitor inside the trainer (`mgrpo_analysis.monitor.check_history`), so a run is judged
the same way while it trains and after it ends.

Four detectors, each robust to noise in the same three ways: curves are smoothed before they
are compared; a fall only counts when it is larger than both an absolute floor and a multiple
of the curve's noise; and only when it lasts to the end of the observed curve (a dip that
recovers is not a collapse). Every threshold lives in `Thresholds`, documented there once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from mgrpo.metric_names import (
    ENTROPY,
    LABEL_ACCURACY,
    PSEUDO_REWARD,
    SELECTION_ACCURACY as ACCURACY,
    TRUE_ACCURACY,
    VOTE_SHARE,
    ZERO_STD_FRAC,
    is_eval_metric,
)

USED_METRICS = (PSEUDO_REWARD, TRUE_ACCURACY, LABEL_ACCURACY, ENTROPY, VOTE_SHARE, ZERO_STD_FRAC)
"""Curves the detectors read, besides the held-out accuracy metric; others are ignored."""

DETECTORS = (
    "accuracy_collapse",
    "reward_accuracy_divergence",
    "entropy_collapse",
    "degenerate_consensus",
)
"""Detector names, in the order they are reported."""


@dataclass(frozen=True)
class DetectorInfo:
    """What a detector reads: whether any of its inputs needs gold labels, and which curves."""

    name: str
    reads_labels: bool
    """True when an input is a held-out accuracy or a diagnostic computed from gold answers
    (`collapse/true_accuracy`, `collapse/label_accuracy`): such a detector cannot run without
    labels."""
    inputs: tuple[str, ...]
    description: str = ""


DETECTOR_INFO = {
    "accuracy_collapse": DetectorInfo("accuracy_collapse", True, (ACCURACY,), "held-out accuracy fell from its peak"),
    "reward_accuracy_divergence": DetectorInfo(
        "reward_accuracy_divergence", True, (PSEUDO_REWARD, TRUE_ACCURACY, LABEL_ACCURACY, ACCURACY),
        "pseudo-reward rose while an accuracy fell"),
    "entropy_collapse": DetectorInfo("entropy_collapse", False, (ENTROPY,), "policy entropy fell early"),
    "degenerate_consensus": DetectorInfo(
        "degenerate_consensus", True, (VOTE_SHARE, ZERO_STD_FRAC, LABEL_ACCURACY),
        "unanimous votes, unless the pseudo-labels are correct (reads labels for that exemption)"),
}
"""The detectors above, marked label-reading or label-free (`mgrpo_analysis.label_free` has the
label-free ones that make up a verdict without labels)."""


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the collapse detectors, with the reason for its default.

    Two kinds of curve are judged. *Evaluation curves* (`collapse/selection_accuracy`) have one
    point per evaluation (every `trainer.eval_every` steps) and binomial noise with standard
    error sqrt(p(1-p)/n) on n held-out problems: 0.0155 at p = 0.4, n = 1000. *Training curves*
    (the other `collapse/*`) have one point per optimizer step and batch noise of unknown size,
    so their noise is estimated from the curve itself:
    sigma = 1.4826 * median|x[t] - x[t-1]| / sqrt(2), which a slow trend barely moves. A change
    between a smoothed peak and the smoothed last value (a centred window of w steps holds only
    w/2 at the end) has standard error sigma * sqrt(3/w); that is the noise unit for training
    curves.
    """

    heldout_size: int = 1000
    """n, held-out problems per evaluation, for the standard error of
    `collapse/selection_accuracy`. Offline, a run's own `trainer.eval_size` or `data.heldout_size`
    param takes precedence."""
    noise_z: float = 3.0
    """A fall (or rise) must exceed this many noise units: the standard error of one evaluation
    for evaluation curves, sigma * sqrt(3/w) for training curves. 3 leaves room for the peak
    being the maximum of many noisy points."""
    min_drop: float = 0.05
    """...and must also exceed this absolute amount (accuracy points as a fraction), so that a
    statistically real but small decline on a huge held-out set is not called a collapse."""
    eval_smooth: int = 3
    """Evaluation curves are smoothed by a centred rolling mean over this many evaluations."""
    sustain_evals: int = 3
    """A fall of an evaluation curve must hold for at least this many evaluations, up to the
    last one observed. With 3 (and noise_z = 3), flat runs of 40-80 evaluations at n = 1000 or
    n = 256 fired in fewer than 1 in 1,000 simulated seeds; with 2, in about 1 in 1,000."""
    train_smooth: int = 25
    """Training curves are smoothed by a centred rolling mean over this many steps."""
    sustain_steps: int = 20
    """A condition on training curves must hold for at least this many logged steps, up to the
    last one observed."""
    min_points: int = 3
    """Curves with fewer points are not judged (a note says so): a run shorter than this, or
    than one smoothing window of evaluations, cannot show a sustained fall."""
    min_rise: float = 0.05
    """Divergence: the smoothed pseudo-reward must rise at least this much above its value at
    the accuracy peak (and by noise_z of its own noise) while accuracy falls."""
    entropy_ratio: float = 0.3
    """Entropy collapse: smoothed `collapse/entropy` falls to at most this fraction of its initial
    value (mean of the first `train_smooth` steps)..."""
    entropy_early_frac: float = 0.5
    """...within this fraction of the steps observed so far, and stays there. A slow decline
    late in training is ordinary RL sharpening, not the sharp early fall of Figure 2."""
    consensus_level: float = 0.95
    """Degenerate consensus: smoothed `collapse/vote_share` and `collapse/zero_std_frac` both at
    or above this level. Not fired while smoothed `collapse/label_accuracy` (when logged) is also
    at this level: agreeing on correct answers is convergence, not degeneracy."""

    def __post_init__(self) -> None:
        for name in ("heldout_size", "eval_smooth", "sustain_evals", "train_smooth",
                     "sustain_steps", "min_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"Thresholds.{name}={getattr(self, name)!r} must be >= 1")
        for name in ("noise_z", "min_drop", "min_rise"):
            if getattr(self, name) < 0:
                raise ValueError(f"Thresholds.{name}={getattr(self, name)!r} must be >= 0")
        for name in ("entropy_ratio", "entropy_early_frac", "consensus_level"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Thresholds.{name}={getattr(self, name)!r} must be in [0, 1]")


@dataclass(frozen=True)
class Detection:
    """The outcome of one detector on one run."""

    name: str
    fired: bool
    step: Optional[int] = None
    """First step of the sustained condition, when fired."""
    detail: str = ""
    """One line on why it fired, or why it could not be judged."""


@dataclass(frozen=True)
class Verdict:
    """Whether a run collapsed, and the numbers behind it.

    `peak_*`, `final_*` and `drop` describe the raw accuracy curve (`metric`): the best
    evaluation, the last one, and best minus last, the paper's "best vs final". The detectors
    judge smoothed curves, so a noisy run can show a drop here and still not be collapsed.
    """

    metric: str
    collapsed: bool
    collapse_step: Optional[int]
    """Earliest step among the detectors that fired."""
    peak_step: Optional[int]
    peak_value: float
    final_step: Optional[int]
    final_value: float
    drop: float
    detections: tuple[Detection, ...]
    notes: tuple[str, ...] = field(default=())
    """Problems with the input, e.g. a missing or too short curve."""

    @property
    def fired(self) -> tuple[str, ...]:
        """Names of the detectors that fired."""
        return tuple(d.name for d in self.detections if d.fired)

    def detection(self, name: str) -> Detection:
        """The outcome of detector `name` (one of `DETECTORS`)."""
        for d in self.detections:
            if d.name == name:
                return d
        raise KeyError(f"no detector named {name!r}; detectors are {', '.join(DETECTORS)}")

    def tags(self) -> dict[str, str]:
        """MLflow tags of the run data contract: `mgrpo.collapsed`, `mgrpo.collapse_step`."""
        step = "" if self.collapse_step is None else str(self.collapse_step)
        return {"mgrpo.collapsed": str(self.collapsed).lower(), "mgrpo.collapse_step": step}

    def summary(self) -> str:
        """One line for logs."""
        if not self.collapsed:
            return f"no collapse ({self.metric} peak {self.peak_value:.3f}, final {self.final_value:.3f})"
        why = "; ".join(d.detail for d in self.detections if d.fired)
        return f"collapse at step {self.collapse_step}: {why}"


def as_curve(points: pd.Series) -> pd.Series:
    """A clean curve: float values indexed by int step, sorted, NaNs dropped, one value per
    step (the last logged, as a resumed run may log a step twice)."""
    s = pd.Series(points, dtype="float64").dropna()
    s = s[~s.index.duplicated(keep="last")].sort_index()
    s.index = s.index.astype("int64")
    return s


def _smooth(curve: pd.Series, window: int) -> pd.Series:
    return curve.rolling(window, center=True, min_periods=1).mean()


def _train_noise(curve: pd.Series, window: int) -> float:
    """Standard error of a change between two smoothed values of a training curve (see
    Thresholds): sigma * sqrt(1/w + 2/w), as the last smoothed value averages half a window."""
    diffs = np.abs(np.diff(curve.to_numpy()))
    if diffs.size == 0:
        return 0.0
    sigma = 1.4826 * float(np.median(diffs)) / math.sqrt(2.0)
    return sigma * math.sqrt(3.0 / min(window, len(curve)))


def _binomial_se(p: float, n: int) -> float:
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def _sustained_start(mask: np.ndarray, min_len: int) -> Optional[int]:
    """Index where the final run of True values in `mask` begins, if it reaches the end and is
    at least `min_len` long; else None."""
    if mask.size == 0 or not mask[-1]:
        return None
    false_at = np.flatnonzero(~mask)
    start = int(false_at[-1]) + 1 if false_at.size else 0
    return start if mask.size - start >= min_len else None


def _fall_threshold(name: str, raw: pd.Series, peak: float, th: Thresholds) -> float:
    if is_eval_metric(name):
        noise = _binomial_se(peak, th.heldout_size)
    else:
        noise = _train_noise(raw, th.train_smooth)
    return max(th.min_drop, th.noise_z * noise)


def _smooth_for(name: str, raw: pd.Series, th: Thresholds) -> pd.Series:
    return _smooth(raw, th.eval_smooth if is_eval_metric(name) else th.train_smooth)


def _sustain_for(name: str, th: Thresholds) -> int:
    return th.sustain_evals if is_eval_metric(name) else th.sustain_steps


def _too_short(name: str, raw: Optional[pd.Series], th: Thresholds) -> Optional[str]:
    if raw is None or raw.empty:
        return f"no {name} curve"
    if len(raw) < max(th.min_points, _sustain_for(name, th) + 1):
        return f"{name} has only {len(raw)} points"
    return None


def accuracy_collapse(acc: Optional[pd.Series], th: Thresholds, name: str = ACCURACY) -> Detection:
    """A sustained fall of held-out accuracy from its peak.

    Fires when the smoothed curve drops below (smoothed peak - threshold) after the peak and
    stays below through the last evaluation, for at least `sustain_evals` evaluations. The
    threshold is max(min_drop, noise_z * sqrt(p(1-p)/n)) at the peak p.
    """
    det = "accuracy_collapse"
    problem = _too_short(name, acc, th)
    if problem:
        return Detection(det, False, detail=problem)
    s = _smooth_for(name, acc, th)
    i_peak = int(np.argmax(s.to_numpy()))
    peak = float(s.iloc[i_peak])
    thr = _fall_threshold(name, acc, peak, th)
    below = s.to_numpy() < peak - thr
    below[: i_peak + 1] = False
    start = _sustained_start(below, _sustain_for(name, th))
    if start is None:
        return Detection(det, False)
    step = int(s.index[start])
    return Detection(
        det, True, step,
        f"{name} fell from {peak:.3f} (step {s.index[i_peak]}) to {s.iloc[-1]:.3f} "
        f"(smoothed; threshold {thr:.3f})",
    )


def reward_accuracy_divergence(
    reward: Optional[pd.Series], accuracies: Mapping[str, pd.Series], th: Thresholds
) -> Detection:
    """Pseudo-reward rising while an accuracy falls: the model agrees with itself more and is
    right less.

    For each accuracy curve given (true accuracy and pseudo-label accuracy), from its smoothed
    peak on: the accuracy is below (peak - fall threshold) and the smoothed pseudo-reward, read
    at the same steps, is above (its value at the peak + rise threshold), both through the last
    point for a sustained stretch. Fires on the earliest such start among the curves.
    """
    det = "reward_accuracy_divergence"
    problem = _too_short(PSEUDO_REWARD, reward, th)
    if problem:
        return Detection(det, False, detail=problem)
    r_smooth = _smooth(reward, th.train_smooth)
    rise = max(th.min_rise, th.noise_z * _train_noise(reward, th.train_smooth))
    hits: list[tuple[int, str]] = []
    judged = []
    for name, acc in accuracies.items():
        if _too_short(name, acc, th):
            continue
        judged.append(name)
        a = _smooth_for(name, acc, th)
        r = r_smooth.reindex(a.index, method="nearest")
        i_peak = int(np.argmax(a.to_numpy()))
        fall = _fall_threshold(name, acc, float(a.iloc[i_peak]), th)
        cond = (a.to_numpy() < a.iloc[i_peak] - fall) & (r.to_numpy() > r.iloc[i_peak] + rise)
        cond[: i_peak + 1] = False
        start = _sustained_start(cond, _sustain_for(name, th))
        if start is not None:
            hits.append((
                int(a.index[start]),
                f"{PSEUDO_REWARD} rose {r.iloc[i_peak]:.3f}->{r.iloc[-1]:.3f} while {name} fell "
                f"{a.iloc[i_peak]:.3f}->{a.iloc[-1]:.3f} (smoothed)",
            ))
    if not judged:
        return Detection(det, False, detail="no accuracy curve to compare the reward with")
    if not hits:
        return Detection(det, False)
    step = min(h[0] for h in hits)
    return Detection(det, True, step, "; ".join(h[1] for h in sorted(hits)))


def entropy_collapse(entropy: Optional[pd.Series], th: Thresholds) -> Detection:
    """A sharp early fall of policy entropy (the paper's Figure 2).

    Fires when smoothed entropy reaches at most `entropy_ratio` x its initial level, stays
    there through the last step for `sustain_steps`, and got there within the first
    `entropy_early_frac` of the observed steps.
    """
    det = "entropy_collapse"
    problem = _too_short(ENTROPY, entropy, th)
    if problem:
        return Detection(det, False, detail=problem)
    initial = float(entropy.iloc[: th.train_smooth].mean())
    if initial <= 0:
        return Detection(det, False, detail=f"initial {ENTROPY} is {initial:.3g}, not positive")
    s = _smooth(entropy, th.train_smooth)
    start = _sustained_start(s.to_numpy() <= th.entropy_ratio * initial, th.sustain_steps)
    if start is None:
        return Detection(det, False)
    first, step, last = int(s.index[0]), int(s.index[start]), int(s.index[-1])
    if step - first > th.entropy_early_frac * (last - first):
        return Detection(det, False, detail=f"{ENTROPY} fell late (step {step} of {last})")
    return Detection(
        det, True, step,
        f"{ENTROPY} fell from {initial:.3f} to {s.iloc[-1]:.3f} by step {step} (smoothed)",
    )


def degenerate_consensus(
    vote_share: Optional[pd.Series],
    zero_std_frac: Optional[pd.Series],
    label_accuracy: Optional[pd.Series],
    th: Thresholds,
) -> Detection:
    """Every sample agrees on one answer: vote share and the fraction of zero-variance prompts
    both go to 1, so rewards carry no signal (all advantages are zero).

    Fires when both smoothed curves stay at or above `consensus_level` through the last step
    for `sustain_steps`, except while smoothed pseudo-label accuracy is at that level too.
    """
    det = "degenerate_consensus"
    for name, curve in ((VOTE_SHARE, vote_share), (ZERO_STD_FRAC, zero_std_frac)):
        problem = _too_short(name, curve, th)
        if problem:
            return Detection(det, False, detail=problem)
    both = pd.concat(
        {"v": _smooth(vote_share, th.train_smooth), "z": _smooth(zero_std_frac, th.train_smooth)},
        axis=1, join="inner",
    )
    cond = (both["v"] >= th.consensus_level) & (both["z"] >= th.consensus_level)
    if label_accuracy is not None and not label_accuracy.empty:
        lab = _smooth(label_accuracy, th.train_smooth).reindex(both.index, method="nearest")
        cond &= lab < th.consensus_level
    start = _sustained_start(cond.to_numpy(), th.sustain_steps)
    if start is None:
        return Detection(det, False)
    step = int(both.index[start])
    return Detection(
        det, True, step,
        f"{VOTE_SHARE} {both['v'].iloc[-1]:.3f} and {ZERO_STD_FRAC} {both['z'].iloc[-1]:.3f} "
        f"since step {step} (smoothed)",
    )


def detect(
    curves: Mapping[str, pd.Series],
    thresholds: Optional[Thresholds] = None,
    *,
    metric: str = ACCURACY,
) -> Verdict:
    """Run every detector on one run's curves (metric name -> values indexed by step).

    Missing curves are not an error: the detectors that need them report why they could not
    judge, and the others still run. `metric` is the held-out accuracy used for the accuracy
    collapse, the peak/final numbers, and (failing `collapse/true_accuracy`) the divergence.
    """
    th = thresholds or Thresholds()
    c = {name: as_curve(series) for name, series in curves.items() if name in (metric, *USED_METRICS)}
    c = {name: s for name, s in c.items() if not s.empty}
    acc = c.get(metric)
    true_acc = TRUE_ACCURACY if TRUE_ACCURACY in c else metric
    accuracies = {n: c[n] for n in (true_acc, LABEL_ACCURACY) if n in c}
    detections = (
        accuracy_collapse(acc, th, metric),
        reward_accuracy_divergence(c.get(PSEUDO_REWARD), accuracies, th),
        entropy_collapse(c.get(ENTROPY), th),
        degenerate_consensus(c.get(VOTE_SHARE), c.get(ZERO_STD_FRAC), c.get(LABEL_ACCURACY), th),
    )
    notes = []
    if acc is None:
        notes.append(f"no {metric} curve: accuracy collapse, peak and final not judged")
        peak_step = final_step = None
        peak_value = final_value = float("nan")
    else:
        peak_step, peak_value = int(acc.idxmax()), float(acc.max())
        final_step, final_value = int(acc.index[-1]), float(acc.iloc[-1])
    steps = [d.step for d in detections if d.fired]
    return Verdict(
        metric=metric,
        collapsed=bool(steps),
        collapse_step=min(steps) if steps else None,
        peak_step=peak_step,
        peak_value=peak_value,
        final_step=final_step,
        final_value=final_value,
        drop=peak_value - final_value,
        detections=detections,
        notes=tuple(notes),
    )


def thresholds_table(th: Thresholds) -> pd.DataFrame:
    """The thresholds as a two-column frame, for reports."""
    values = asdict(th)
    return pd.DataFrame({"threshold": list(values), "value": pd.Series(list(values.values()), dtype=object)})


def heldout_size(params: Mapping[str, object], default: int) -> int:
    """n for the standard error of a run's held-out accuracy: its `trainer.eval_size` param
    when set (problems used per evaluation), else `data.heldout_size`, else `default`."""
    for key in ("params.trainer.eval_size", "params.data.heldout_size"):
        try:
            n = int(str(params.get(key)))
        except ValueError:
            continue
        if n > 0:
            return n
    return default


def detect_runs(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    thresholds: Optional[Thresholds] = None,
    *,
    metric: str = ACCURACY,
) -> pd.DataFrame:
    """`detect` on every run: one row per run of `runs` (in order), from the long curves frame.

    Columns: run_id, collapsed, collapse_step, peak_step, peak, final_step, final, drop,
    detectors (names that fired, comma-separated), `step_<detector>` for each detector, notes.
    Each run's held-out size comes from its params (see `heldout_size`).
    """
    th = thresholds or Thresholds()
    wanted = curves[curves["metric"].isin((metric, *USED_METRICS))]
    steps, values = wanted["step"].to_numpy(), wanted["value"].to_numpy()
    by_run: dict[str, dict[str, pd.Series]] = {}
    groups = wanted.groupby(["run_id", "metric"], observed=True, sort=False).indices
    for (run_id, name), rows in groups.items():  # positions, not sub-frames: 10x faster
        by_run.setdefault(run_id, {})[name] = pd.Series(values[rows], index=steps[rows])
    rows = []
    for run in runs.to_dict("records"):
        run_th = replace(th, heldout_size=heldout_size(run, th.heldout_size))
        v = detect(by_run.get(run["run_id"], {}), run_th, metric=metric)
        rows.append({
            "run_id": run["run_id"],
            "collapsed": v.collapsed,
            "collapse_step": v.collapse_step,
            "peak_step": v.peak_step,
            "peak": v.peak_value,
            "final_step": v.final_step,
            "final": v.final_value,
            "drop": v.drop,
            "detectors": ",".join(v.fired),
            **{f"step_{d.name}": d.step for d in v.detections},
            "notes": "; ".join(v.notes),
        })
    columns = ["run_id", "collapsed", "collapse_step", "peak_step", "peak", "final_step", "final",
               "drop", "detectors", *(f"step_{d}" for d in DETECTORS), "notes"]
    frame = pd.DataFrame(rows, columns=columns)
    step_cols = ["collapse_step", "peak_step", "final_step", *(f"step_{d}" for d in DETECTORS)]
    return frame.astype({c: "Int64" for c in step_cols} | {"collapsed": bool})
