"""Label-free collapse detection: early-warning detectors that read only what a run without
labels has, and a stopping rule and a checkpoint choice built from them (their evaluation
against the labelled verdict is `label_free_eval`).

Keeping the two kinds apart:
- every detector is registered with `reads_labels` (`DETECTOR_INFO` here and in `detectors`);
- the label-free detectors are handed `label_free_view(curves)`: only the metrics named in
  `LABEL_FREE_INPUTS` (per-step signals computed from samples, answers, votes, entropies and
  weights; see `mgrpo.step_metrics.LABEL_FREE_METRICS`). A held-out accuracy, a benchmark,
  `collapse/true_accuracy` or `collapse/label_accuracy` never reaches them, so corrupting labels
  cannot change a label-free verdict or checkpoint choice (tested).

The detectors share one shape (`_shift`): a training curve is smoothed (centred window of
`train_smooth` steps), compared with its *baseline* (the mean of its first `baseline_steps`
points), and the detector fires when the change exceeds both an absolute or relative floor and
`noise_z` noise units (the curve's own noise, as in `detectors.Thresholds`), and lasts through
the last observed step for `sustain_steps`. `Detection.step` is the onset of that stretch.

Online, a monitor only sees the curve so far, at its checks; `label_free_eval` replays finished
runs that way and measures each detector against the labelled verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from mgrpo.metric_names import (
    ANSWER_LOG_MAGNITUDE,
    EMA_PARAM_DISTANCE,
    ENTROPY_MOMENTUM,
    KL,
    LABEL_FLIP_FRAC,
    LABEL_MODE_FRAC,
    MOMENTUM_AGREEMENT,
    NO_ANSWER_FRAC,
    NUM_ANSWER_CLASSES,
    POLICY_MOMENTUM_DISAGREEMENT,
    RESPONSE_LENGTH,
    SELF_CERTAINTY,
)

from .detectors import (
    DETECTOR_INFO as LABELLED_INFO,
    ENTROPY,
    PSEUDO_REWARD,
    VOTE_SHARE,
    ZERO_STD_FRAC,
    Detection,
    DetectorInfo,
    Thresholds,
    _smooth,
    _sustained_start,
    _train_noise,
    as_curve,
    degenerate_consensus,
    entropy_collapse,
)

LABEL_FREE_INPUTS = (
    PSEUDO_REWARD, VOTE_SHARE, NUM_ANSWER_CLASSES, ZERO_STD_FRAC, ENTROPY, ENTROPY_MOMENTUM, RESPONSE_LENGTH,
    NO_ANSWER_FRAC, KL, POLICY_MOMENTUM_DISAGREEMENT, MOMENTUM_AGREEMENT, LABEL_FLIP_FRAC, LABEL_MODE_FRAC,
    EMA_PARAM_DISTANCE, ANSWER_LOG_MAGNITUDE, SELF_CERTAINTY,
)
"""The only curves a label-free detector is given (all computed without gold answers)."""


@dataclass(frozen=True)
class LabelFreeThresholds:
    """Every threshold of the label-free detectors and of the stopping rule, with its reason.

    Floors are in the metric's own units (fractions for shares, nats for KL) unless named
    relative. Noise handling is that of `detectors.Thresholds`: a change must also exceed
    `noise_z` x sigma x sqrt(3 / train_smooth), sigma estimated from the curve's step-to-step
    differences, so a noisy curve needs a larger change.
    """

    baseline_steps: int = 25
    """The baseline of a curve is the mean of its first this many points (one smoothing window:
    the start of training, before any policy change has accumulated)."""
    noise_z: float = 3.0
    """As `Thresholds.noise_z`: 3 noise units, room for the many comparisons along a curve."""
    train_smooth: int = 25
    """Centred rolling mean over this many steps, as for the labelled training-curve detectors."""
    sustain_steps: int = 20
    """A condition must hold this many logged steps through the last one (as `Thresholds`)."""
    min_points: int = 3
    """Curves with fewer points are not judged."""
    vote_share_rise: float = 0.05
    """Vote share of the winning answer above its baseline by this much: the sharpening that
    2603.08660 (He et al., "How Far Can Unsupervised RLVR Scale LLM Training?") finds behind
    every intrinsic-reward collapse. 0.05 is `Thresholds.min_rise`, the labelled divergence's
    reward rise."""
    pseudo_reward_rise: float = 0.05
    """Pseudo-reward above its baseline by this much: the label-free half of the labelled
    reward-accuracy divergence (the half that needs no accuracy curve)."""
    answer_classes_fall: float = 0.2
    """Mean number of answer classes per prompt below (1 - this) x its baseline: answers
    converging (relative, as the count depends on G)."""
    length_drift: float = 0.25
    """Mean response length moved by this fraction of its baseline, either way: length collapse
    or runaway generations, a common symptom of reward hacking."""
    no_answer_rise: float = 0.1
    """Fraction of samples without an extractable answer above its baseline by this much: the
    output format breaking down."""
    disagreement_rise: float = 0.05
    """M-GRPO: the fraction of prompts whose policy and momentum majority answers differ, above
    its baseline by this much: the policy leaving its anchor."""
    momentum_agreement_fall: float = 0.05
    """M-GRPO: the fraction of momentum samples agreeing with the pseudo-label, below its
    baseline by this much: the pooled vote following the policy away from the anchor."""
    label_flip_rise: float = 0.1
    """Prompts seen again whose pseudo-label changed, above the baseline of the first revisits
    by this much (absent until a prompt is seen twice, i.e. in the second epoch)."""
    constant_answer_level: float = 0.5
    """Half or more of a step's prompts sharing one pseudo-label: a collapse onto a constant
    answer (distinct problems rarely share an answer; 16 random sums of three 2-digit numbers
    share one in well under 1% of steps at this level)."""
    answer_drift: float = 0.02
    """Mean sign(x) log10(1 + |x|) of the numeric answers moved this much from its baseline,
    either way: the policy shifting its answers systematically (prompts are i.i.d., so the
    answers' marginal distribution is stationary unless the policy moves). 0.02 is a 5% shift
    of every answer's size. Set after looking at one SRT/M-GRPO pair (seed 0) of an earlier lab
    session, whose held-out answers drifted 7% (SRT) and 3% (M-GRPO); measured on the rest."""
    self_certainty_rise: float = 0.05
    """Mean self-certainty of the policy samples (Intuitor's confidence, KL(uniform || p) per
    token, nats) above its baseline by this much: the model growing surer of its own tokens,
    the confidence that 2603.08660 finds decoupling from correctness before a collapse. 0.05
    nats is half the tiny model's whole per-token entropy (0.1)."""
    consensus_level: float = 0.95
    """As `Thresholds.consensus_level`, without the labelled exemption for correct consensus."""
    entropy_ratio: float = 0.3
    """As `Thresholds.entropy_ratio`."""
    entropy_early_frac: float = 0.5
    """As `Thresholds.entropy_early_frac`."""
    kl_window: int = 25
    """KL acceleration compares the KL's rise over the last window of this many steps with its
    average rise per window since the first step..."""
    kl_accel_ratio: float = 2.0
    """...and fires when the recent rise is at least this multiple of that average (and above
    noise), sustained: the run leaving the reference at an increasing rate rather than at a
    steady one or settling. A linear KL gives a ratio of 1, KL ~ t^2 gives 2 only in the limit,
    KL ~ t^3 gives 3, and a knee (steady, then steep) gives much more."""
    rule: str = ("unanimous_consensus,entropy_collapse,constant_answer,no_answer_rise,label_flip_rise,"
                 "momentum_disagreement_rise,momentum_agreement_fall,self_certainty_rise")
    """The label-free stopping rule: the detectors (comma-separated) whose alarm makes the run
    collapsed without labels. Three kinds: patterns that are a collapse by definition (unanimity
    with no reward signal left, entropy gone, one answer for everything, no answers, labels
    flipping); M-GRPO's policy leaving its momentum anchor, which on the development runs
    (experiments/label_free/README.md) fired on the one M-GRPO run that decayed and on none of
    the three that held; and self-certainty rising, which on the lab's 27 runs fired on the three
    Intuitor collapses (50 steps before the labelled monitor) and on none of the 18 healthy or
    slowly decaying runs, nor on the 12 development runs (chosen on the lab's runs, so that is
    in-sample). The other trend detectors (vote share, pseudo-reward, answer classes, answer
    size, length, KL) are reported but left out: on those runs they were silent on SRT's
    collapse or fired on healthy runs."""
    checkpoint_margin: int = 0
    """The label-free checkpoint is the last candidate at or before the rule's onset step minus
    this many steps (the onset is already the start of the sustained stretch)."""
    check_every: int = 0
    """Replay checks every this many steps; 0: every run's own `monitor.every` param (25 when
    absent), i.e. exactly when its online monitor would have looked."""

    def __post_init__(self) -> None:
        for name in ("baseline_steps", "train_smooth", "sustain_steps", "min_points", "kl_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"LabelFreeThresholds.{name}={getattr(self, name)!r} must be >= 1")
        for name in ("noise_z", "vote_share_rise", "pseudo_reward_rise", "no_answer_rise", "disagreement_rise", "answer_drift", "self_certainty_rise",
                     "momentum_agreement_fall", "label_flip_rise", "length_drift", "kl_accel_ratio",
                     "checkpoint_margin", "check_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"LabelFreeThresholds.{name}={getattr(self, name)!r} must be >= 0")
        for name in ("answer_classes_fall", "constant_answer_level", "consensus_level", "entropy_ratio",
                     "entropy_early_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LabelFreeThresholds.{name}={getattr(self, name)!r} must be in [0, 1]")
        unknown = [n for n in self.rule_names if n not in LABEL_FREE_DETECTORS]
        if unknown or not self.rule_names:
            raise ValueError(
                f"LabelFreeThresholds.rule={self.rule!r}: {'unknown detector ' + ', '.join(unknown) if unknown else 'empty'}; "
                f"label-free detectors are {', '.join(LABEL_FREE_DETECTORS)}"
            )

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.rule.split(",") if n.strip())

    def labelled(self) -> Thresholds:
        """The `Thresholds` of the shared detectors (entropy, consensus) at these settings."""
        return Thresholds(noise_z=self.noise_z, train_smooth=self.train_smooth, sustain_steps=self.sustain_steps,
                          min_points=self.min_points, entropy_ratio=self.entropy_ratio,
                          entropy_early_frac=self.entropy_early_frac, consensus_level=self.consensus_level)


def label_free_view(curves: Mapping[str, object]) -> dict[str, object]:
    """Only the label-free inputs of a mapping of curves: what a label-free detector may read."""
    return {name: curve for name, curve in curves.items() if name in LABEL_FREE_INPUTS}


# ---- the detectors ------------------------------------------------------------------------------


def _problem(name: str, curve: Optional[pd.Series], needed: int) -> Optional[str]:
    if curve is None or curve.empty:
        return f"no {name} curve"
    if len(curve) < needed:
        return f"{name} has only {len(curve)} points"
    return None


def _shift(det: str, name: str, curve: Optional[pd.Series], th: LabelFreeThresholds, direction: int,
           floor: float, relative: bool = False) -> Detection:
    """The smoothed curve moved away from its baseline, in `direction` (+1 up, -1 down, 0
    either), by more than max(floor (x |baseline| when relative), noise_z noise units), and
    stayed there through the last point for `sustain_steps`."""
    problem = _problem(name, curve, max(th.min_points, th.baseline_steps + th.sustain_steps))
    if problem:
        return Detection(det, False, detail=problem)
    base = float(curve.iloc[: th.baseline_steps].mean())
    s = _smooth(curve, th.train_smooth)
    limit = max(floor * abs(base) if relative else floor, th.noise_z * _train_noise(curve, th.train_smooth))
    delta = s.to_numpy() - base
    moved = np.abs(delta) > limit if direction == 0 else direction * delta > limit
    moved[: th.baseline_steps] = False
    start = _sustained_start(moved, th.sustain_steps)
    if start is None:
        return Detection(det, False)
    step = int(s.index[start])
    return Detection(det, True, step, f"{name} moved {base:.3f} -> {s.iloc[-1]:.3f} (smoothed; limit {limit:.3f}) since step {step}")


def vote_share_rise(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("vote_share_rise", VOTE_SHARE, c.get(VOTE_SHARE), th, +1, th.vote_share_rise)


def pseudo_reward_rise(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("pseudo_reward_rise", PSEUDO_REWARD, c.get(PSEUDO_REWARD), th, +1, th.pseudo_reward_rise)


def answer_classes_fall(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("answer_classes_fall", NUM_ANSWER_CLASSES, c.get(NUM_ANSWER_CLASSES), th, -1, th.answer_classes_fall, relative=True)


def answer_drift(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("answer_drift", ANSWER_LOG_MAGNITUDE, c.get(ANSWER_LOG_MAGNITUDE), th, 0, th.answer_drift)


def self_certainty_rise(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("self_certainty_rise", SELF_CERTAINTY, c.get(SELF_CERTAINTY), th, +1, th.self_certainty_rise)


def length_drift(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("length_drift", RESPONSE_LENGTH, c.get(RESPONSE_LENGTH), th, 0, th.length_drift, relative=True)


def no_answer_rise(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("no_answer_rise", NO_ANSWER_FRAC, c.get(NO_ANSWER_FRAC), th, +1, th.no_answer_rise)


def momentum_disagreement_rise(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("momentum_disagreement_rise", POLICY_MOMENTUM_DISAGREEMENT, c.get(POLICY_MOMENTUM_DISAGREEMENT), th, +1, th.disagreement_rise)


def momentum_agreement_fall(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("momentum_agreement_fall", MOMENTUM_AGREEMENT, c.get(MOMENTUM_AGREEMENT), th, -1, th.momentum_agreement_fall)


def label_flip_rise(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    return _shift("label_flip_rise", LABEL_FLIP_FRAC, c.get(LABEL_FLIP_FRAC), th, +1, th.label_flip_rise)


def constant_answer(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    """Smoothed `train/label_mode_frac` at or above `constant_answer_level`, sustained."""
    det, curve = "constant_answer", c.get(LABEL_MODE_FRAC)
    problem = _problem(LABEL_MODE_FRAC, curve, max(th.min_points, th.sustain_steps + 1))
    if problem:
        return Detection(det, False, detail=problem)
    s = _smooth(curve, th.train_smooth)
    start = _sustained_start(s.to_numpy() >= th.constant_answer_level, th.sustain_steps)
    if start is None:
        return Detection(det, False)
    step = int(s.index[start])
    return Detection(det, True, step, f"{LABEL_MODE_FRAC} {s.iloc[-1]:.3f} since step {step}: one answer for many prompts")


def kl_acceleration(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    """KL to the reference rising faster than it has on average: with w = `kl_window`, the
    smoothed rise over the last w points is at least `kl_accel_ratio` x the average rise per w
    points from the first point to w points ago, and above noise_z noise units, sustained through
    the last point."""
    det, curve = "kl_acceleration", c.get(KL)
    w = th.kl_window
    problem = _problem(KL, curve, max(th.min_points, 2 * w + th.sustain_steps))
    if problem:
        return Detection(det, False, detail=problem)
    s = _smooth(curve, th.train_smooth).to_numpy()
    noise = th.noise_z * _train_noise(curve, th.train_smooth)
    i = np.arange(s.size)
    recent = np.full(s.size, np.nan)
    average = np.full(s.size, np.nan)
    recent[2 * w :] = s[2 * w :] - s[w:-w]
    average[2 * w :] = (s[w:-w] - s[0]) / ((i[w:-w]) / w)
    with np.errstate(invalid="ignore"):
        cond = (recent > noise) & (recent >= th.kl_accel_ratio * np.maximum(average, 0.0))
    cond[: 2 * w] = False
    start = _sustained_start(cond, th.sustain_steps)
    if start is None:
        return Detection(det, False)
    step = int(curve.index[start])
    return Detection(det, True, step, f"{KL} rose {recent[-1]:.4g} in the last {w} points vs {average[-1]:.4g} per {w} on average, since step {step}")


def unanimous_consensus(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    """`detectors.degenerate_consensus` without its labelled exemption: vote share and
    zero-variance fraction both at `consensus_level`, whatever the (unknown) correctness."""
    d = degenerate_consensus(c.get(VOTE_SHARE), c.get(ZERO_STD_FRAC), None, th.labelled())
    return replace(d, name="unanimous_consensus")


def entropy_collapse_lf(c: Mapping[str, pd.Series], th: LabelFreeThresholds) -> Detection:
    """`detectors.entropy_collapse` (it reads only `collapse/entropy`)."""
    return entropy_collapse(c.get(ENTROPY), th.labelled())


LABEL_FREE_DETECTORS: dict[str, tuple[Callable[[Mapping[str, pd.Series], LabelFreeThresholds], Detection], DetectorInfo]] = {
    "entropy_collapse": (entropy_collapse_lf, DetectorInfo("entropy_collapse", False, (ENTROPY,), "policy entropy fell to 30% of its start, early")),
    "unanimous_consensus": (unanimous_consensus, DetectorInfo("unanimous_consensus", False, (VOTE_SHARE, ZERO_STD_FRAC), "every sample agrees; no reward signal left")),
    "constant_answer": (constant_answer, DetectorInfo("constant_answer", False, (LABEL_MODE_FRAC,), "half the step's prompts share one pseudo-label")),
    "no_answer_rise": (no_answer_rise, DetectorInfo("no_answer_rise", False, (NO_ANSWER_FRAC,), "samples without an answer rose")),
    "label_flip_rise": (label_flip_rise, DetectorInfo("label_flip_rise", False, (LABEL_FLIP_FRAC,), "pseudo-labels of revisited prompts flip more")),
    "momentum_disagreement_rise": (momentum_disagreement_rise, DetectorInfo("momentum_disagreement_rise", False, (POLICY_MOMENTUM_DISAGREEMENT,), "policy and momentum majorities disagree more")),
    "momentum_agreement_fall": (momentum_agreement_fall, DetectorInfo("momentum_agreement_fall", False, (MOMENTUM_AGREEMENT,), "momentum samples agree less with the pseudo-label")),
    "vote_share_rise": (vote_share_rise, DetectorInfo("vote_share_rise", False, (VOTE_SHARE,), "winning vote share rose")),
    "pseudo_reward_rise": (pseudo_reward_rise, DetectorInfo("pseudo_reward_rise", False, (PSEUDO_REWARD,), "pseudo-reward rose")),
    "answer_classes_fall": (answer_classes_fall, DetectorInfo("answer_classes_fall", False, (NUM_ANSWER_CLASSES,), "fewer answer classes per prompt")),
    "answer_drift": (answer_drift, DetectorInfo("answer_drift", False, (ANSWER_LOG_MAGNITUDE,), "answers' size drifted 5%")),
    "self_certainty_rise": (self_certainty_rise, DetectorInfo("self_certainty_rise", False, (SELF_CERTAINTY,), "self-certainty rose")),
    "length_drift": (length_drift, DetectorInfo("length_drift", False, (RESPONSE_LENGTH,), "response length moved 25%")),
    "kl_acceleration": (kl_acceleration, DetectorInfo("kl_acceleration", False, (KL,), "KL to the reference accelerating")),
}
"""Label-free detectors by name: (function, info). Every one has `reads_labels=False` and its
inputs are in `LABEL_FREE_INPUTS` (checked at import)."""

for _name, (_, _info) in LABEL_FREE_DETECTORS.items():
    assert not _info.reads_labels and set(_info.inputs) <= set(LABEL_FREE_INPUTS), _name

DETECTOR_INFO: dict[str, DetectorInfo] = {
    **{f"labelled:{k}": v for k, v in LABELLED_INFO.items()},
    **{k: info for k, (_, info) in LABEL_FREE_DETECTORS.items()},
}
"""Every detector of the package, labelled ones prefixed `labelled:` (their names overlap)."""


# ---- a verdict without labels --------------------------------------------------------------------


@dataclass(frozen=True)
class LabelFreeVerdict:
    """The label-free detectors on one run's curves so far."""

    alarm: bool
    """A detector of the rule fired."""
    onset_step: Optional[int]
    """Earliest onset among the rule's detectors that fired."""
    detections: tuple[Detection, ...]
    rule: tuple[str, ...]

    @property
    def fired(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detections if d.fired)

    @property
    def fired_in_rule(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.detections if d.fired and d.name in self.rule)

    def detection(self, name: str) -> Detection:
        for d in self.detections:
            if d.name == name:
                return d
        raise KeyError(f"no label-free detector named {name!r}; they are {', '.join(LABEL_FREE_DETECTORS)}")

    def tags(self) -> dict[str, str]:
        """MLflow tags: `mgrpo.label_free_alarm`, `mgrpo.label_free_onset_step`,
        `mgrpo.label_free_detectors` (rule members that fired)."""
        return {
            "mgrpo.label_free_alarm": str(self.alarm).lower(),
            "mgrpo.label_free_onset_step": "" if self.onset_step is None else str(self.onset_step),
            "mgrpo.label_free_detectors": ",".join(self.fired_in_rule),
        }

    def summary(self) -> str:
        if not self.alarm:
            return "no label-free alarm" + (f" (outside the rule: {', '.join(self.fired)})" if self.fired else "")
        return "label-free alarm from step {}: {}".format(
            self.onset_step, "; ".join(d.detail for d in self.detections if d.fired and d.name in self.rule))


def detect_label_free(curves: Mapping[str, object], thresholds: Optional[LabelFreeThresholds] = None) -> LabelFreeVerdict:
    """Every label-free detector on one run's curves (metric -> Series indexed by step, or
    [(step, value)] points). Only `LABEL_FREE_INPUTS` are read; anything else is dropped first."""
    th = thresholds or LabelFreeThresholds()
    c = {}
    for name, value in label_free_view(curves).items():
        series = value if isinstance(value, pd.Series) else _points(value)
        clean = (series.dtype == "float64" and series.index.dtype == "int64" and series.index.is_monotonic_increasing
                 and series.index.is_unique and not series.isna().any())
        series = series if clean else as_curve(series)
        if not series.empty:
            c[name] = series
    detections = tuple(fn(c, th) for fn, _ in LABEL_FREE_DETECTORS.values())
    onsets = [d.step for d in detections if d.fired and d.name in th.rule_names]
    return LabelFreeVerdict(bool(onsets), min(onsets) if onsets else None, detections, th.rule_names)


def _points(points: Sequence[tuple[int, float]]) -> pd.Series:
    if not points:
        return pd.Series(dtype="float64")
    steps, values = zip(*points)
    return pd.Series(values, index=pd.Index(steps, dtype="int64"), dtype="float64")


def choose_checkpoint(candidates: Sequence[int], onset_step: Optional[int], margin: int = 0) -> Optional[int]:
    """The label-free checkpoint choice: with no alarm, the last candidate step (the final
    policy); with one, the last candidate at or before `onset_step - margin` (the first
    candidate when none is that early). None when there are no candidates."""
    steps = sorted(int(s) for s in candidates)
    if not steps:
        return None
    if onset_step is None:
        return steps[-1]
    before = [s for s in steps if s <= onset_step - margin]
    return before[-1] if before else steps[0]
