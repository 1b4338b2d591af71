"""Collapse detectors on synthetic curves with known answers (no MLflow)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mgrpo import metric_names as names
from mgrpo_analysis.detectors import DETECTORS, Thresholds, detect_runs
from mgrpo_analysis.monitor import check_history


def evals(fn, last=400, every=25, n=1000, seed=0):
    """Held-out accuracy p(step) measured on n problems (binomial noise), at step 0, every
    `every` steps and at `last`."""
    rng = np.random.default_rng(seed)
    steps = sorted(set(range(0, last + 1, every)) | {last})
    return [(s, rng.binomial(n, fn(s)) / n) for s in steps]


def train(fn, last=400, sd=0.04, seed=1):
    """A per-step training curve with Gaussian batch noise of standard deviation sd."""
    rng = np.random.default_rng(seed)
    return [(s, float(fn(s) + sd * rng.standard_normal())) for s in range(1, last + 1)]


def flat_train_metrics(last=400, seed=1):
    return {
        names.PSEUDO_REWARD: train(lambda s: 0.6, last, seed=seed),
        names.TRUE_ACCURACY: train(lambda s: 0.4, last, seed=seed + 1),
        names.LABEL_ACCURACY: train(lambda s: 0.55, last, sd=0.12, seed=seed + 2),
        names.ENTROPY: train(lambda s: 0.8, last, sd=0.02, seed=seed + 3),
        names.VOTE_SHARE: train(lambda s: 0.6, last, seed=seed + 4),
        names.ZERO_STD_FRAC: train(lambda s: 0.2, last, sd=0.1, seed=seed + 5),
    }


def rise_then_fall(peak_step, last, top=0.6, bottom=0.2, base=0.4):
    def p(s):
        if s <= peak_step:
            return base + (top - base) * s / peak_step
        return top - (top - bottom) * (s - peak_step) / (last - peak_step)
    return p


def test_clean_rise_then_fall_is_an_accuracy_collapse_after_the_peak():
    v = check_history({names.SELECTION_ACCURACY: evals(rise_then_fall(100, 400))})
    assert v.collapsed and v.fired == ("accuracy_collapse",)
    assert 100 < v.collapse_step <= 200
    assert v.peak_step in (75, 100, 125) and v.peak_value == pytest.approx(0.6, abs=0.04)
    assert v.final_step == 400 and v.final_value == pytest.approx(0.2, abs=0.04)
    assert v.drop == pytest.approx(v.peak_value - v.final_value)
    assert v.tags() == {"mgrpo.collapsed": "true", "mgrpo.collapse_step": str(v.collapse_step)}


@pytest.mark.parametrize("seed", range(20))
def test_noisy_flat_run_fires_nothing(seed):
    history = {names.SELECTION_ACCURACY: evals(lambda s: 0.4, last=1000, seed=seed), **flat_train_metrics(1000, seed)}
    v = check_history(history)
    assert not v.collapsed, v.summary()
    assert v.tags() == {"mgrpo.collapsed": "false", "mgrpo.collapse_step": ""}


def test_steady_rise_fires_nothing():
    history = {
        names.SELECTION_ACCURACY: evals(lambda s: 0.4 + 0.3 * s / 400),
        names.PSEUDO_REWARD: train(lambda s: 0.5 + 0.4 * s / 400),
        names.TRUE_ACCURACY: train(lambda s: 0.35 + 0.3 * s / 400),
    }
    v = check_history(history)
    assert not v.collapsed
    assert v.peak_step >= 350 and v.drop < 0.05


def test_late_collapse_is_found_near_the_end():
    v = check_history({names.SELECTION_ACCURACY: evals(rise_then_fall(1700, 2000, bottom=0.3), last=2000)})
    assert v.fired == ("accuracy_collapse",)
    assert 1700 < v.collapse_step <= 1925


def test_a_dip_that_recovers_is_not_a_collapse():
    dip = lambda s: 0.3 if 150 <= s <= 225 else 0.55  # noqa: E731
    assert not check_history({names.SELECTION_ACCURACY: evals(dip)}).collapsed


def test_early_entropy_collapse_fires_and_a_slow_decline_does_not():
    sharp = {names.ENTROPY: train(lambda s: 0.05 + 0.95 * np.exp(-s / 15), sd=0.01)}
    v = check_history(sharp)
    assert v.fired == ("entropy_collapse",) and v.collapse_step <= 60
    slow = {names.ENTROPY: train(lambda s: 1.0 - 0.8 * s / 400, sd=0.01)}
    assert not check_history(slow).collapsed
    assert "fell late" in check_history(slow).detection("entropy_collapse").detail


def test_reward_rising_while_true_accuracy_falls_is_a_divergence():
    history = {
        names.PSEUDO_REWARD: train(lambda s: 0.5 + 0.45 * s / 400),
        names.TRUE_ACCURACY: train(rise_then_fall(100, 400, top=0.5, bottom=0.15, base=0.35)),
    }
    v = check_history(history)
    assert v.fired == ("reward_accuracy_divergence",)
    assert 100 < v.collapse_step < 250
    assert names.TRUE_ACCURACY in v.detection("reward_accuracy_divergence").detail
    assert any(f"no {names.SELECTION_ACCURACY} curve" in n for n in v.notes)


def test_divergence_falls_back_to_val_accuracy_and_uses_label_accuracy():
    reward = train(lambda s: 0.5 + 0.45 * s / 400)
    v = check_history({names.PSEUDO_REWARD: reward, names.SELECTION_ACCURACY: evals(rise_then_fall(100, 400))})
    assert "reward_accuracy_divergence" in v.fired
    v = check_history({names.PSEUDO_REWARD: reward,
                       names.LABEL_ACCURACY: train(rise_then_fall(100, 400, top=0.8, bottom=0.3))})
    assert names.LABEL_ACCURACY in v.detection("reward_accuracy_divergence").detail


def test_degenerate_consensus_unless_the_consensus_is_correct():
    to_one = lambda s: min(1.0, 0.5 + s / 200)  # noqa: E731
    history = {names.VOTE_SHARE: train(to_one, sd=0.005), names.ZERO_STD_FRAC: train(to_one, sd=0.005)}
    v = check_history({**history, names.LABEL_ACCURACY: train(lambda s: 0.3)})
    assert v.fired == ("degenerate_consensus",) and 80 <= v.collapse_step <= 120  # 0.95 at step 90
    assert not check_history({**history, names.LABEL_ACCURACY: train(lambda s: 0.99, sd=0.005)}).collapsed


@pytest.mark.parametrize("history", [
    {},
    {names.SELECTION_ACCURACY: []},
    {names.SELECTION_ACCURACY: [(0, 0.5)]},
    {names.SELECTION_ACCURACY: [(0, 0.5), (5, 0.1), (10, 0.1)], names.ENTROPY: [(s, 1.0 / s) for s in range(1, 11)],
     names.PSEUDO_REWARD: [(s, 0.1 * s) for s in range(1, 11)]},
])
def test_runs_shorter_than_the_window_do_not_crash_or_collapse(history):
    v = check_history(history)
    assert not v.collapsed and len(v.detections) == len(DETECTORS)


def test_the_drop_must_exceed_the_heldout_standard_error():
    history = {names.SELECTION_ACCURACY: evals(rise_then_fall(100, 400, top=0.5, bottom=0.4, base=0.5), n=100_000)}
    assert check_history(history, Thresholds(heldout_size=1000)).collapsed  # 3 SE = 0.047
    assert not check_history(history, Thresholds(heldout_size=100)).collapsed  # 3 SE = 0.15
    assert not check_history(history, Thresholds(min_drop=0.2)).collapsed


def test_history_order_and_repeated_steps():
    points = evals(rise_then_fall(100, 400))
    resumed = points[::-1] + [(400, 0.65)]  # a resumed run re-logged the last step: last value wins
    v = check_history({names.SELECTION_ACCURACY: resumed})
    assert (v.final_step, v.final_value) == (400, 0.65) and (v.peak_step, v.peak_value) == (400, 0.65)


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="heldout_size"):
        Thresholds(heldout_size=0)
    with pytest.raises(ValueError, match="entropy_ratio"):
        Thresholds(entropy_ratio=1.5)


def test_detect_runs_reads_the_long_frame_and_each_runs_heldout_size():
    rows = []
    fall = evals(rise_then_fall(100, 400, top=0.5, bottom=0.4, base=0.5), n=100_000)
    for run_id in ("big", "small", "empty"):
        rows += [(run_id, s, names.SELECTION_ACCURACY, v) for s, v in (fall if run_id != "empty" else [])]
    curves = pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])
    runs = pd.DataFrame({"run_id": ["big", "small", "empty"],
                         "params.data.heldout_size": ["1000", "100", "1000"],
                         "params.trainer.eval_size": ["None", "None", "None"]})
    out = detect_runs(runs, curves)
    assert list(out["run_id"]) == ["big", "small", "empty"]
    assert list(out["collapsed"]) == [True, False, False]
    assert out.loc[0, "detectors"] == "accuracy_collapse"
    assert out.loc[0, "step_accuracy_collapse"] == out.loc[0, "collapse_step"]
    assert f"no {names.SELECTION_ACCURACY} curve" in out.loc[2, "notes"] and pd.isna(out.loc[2, "peak"])


def test_the_monitor_imports_neither_mlflow_nor_matplotlib():
    code = ("import sys, mgrpo_analysis.monitor; "
            "assert not {'mlflow', 'matplotlib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
