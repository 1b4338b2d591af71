"""Label-free health signals: the trainer's per-step signals (hand-computed cases), the
label-free detectors on synthetic curves, and proof that they never read a label."""

from __future__ import annotations

import pytest

from mgrpo import metric_names as names
from mgrpo.algos.voting import majority_vote
from mgrpo.step_metrics import LABEL_FREE_METRICS, LABEL_METRICS, PseudoLabelMemory, role_signals, same_answers, step_pseudo_labels
from mgrpo.tasks import Problem


def exact(a: str, b: str) -> bool:
    return a == b


def numeric(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


# ---- per-step signals ---------------------------------------------------------------------------


def test_signal_registries_are_disjoint():
    assert not set(LABEL_FREE_METRICS) & set(LABEL_METRICS)
    assert {names.TRUE_ACCURACY, names.LABEL_ACCURACY} == set(LABEL_METRICS)


def test_same_answers_uses_the_normalised_fast_path_then_the_equivalence():
    calls = []

    def eq(a, b):
        calls.append((a, b))
        return numeric(a, b)

    assert same_answers([("1/2", "1/2"), ("$3$", "3"), ("4", "4.0"), ("5", "6")], eq) == [True, True, True, False]
    assert calls == [("4", "4.0"), ("5", "6")]
    assert same_answers([], eq) == []


def test_role_signals_hand_computed():
    # 3 prompts; policy: 3 samples each (9), momentum: 2 samples each (6).
    # prompt 0: policy 7,7,8 -> 7; momentum 7,9 -> 7 (tie 7 vs 9 breaks to "7")  : agree
    # prompt 1: policy 5,5,5 -> 5; momentum 6,6 -> 6                              : disagree
    # prompt 2: policy 1,2,2 -> 2; momentum None,None -> no label                  : not compared
    answers = ["7", "7", "8", "5", "5", "5", "1", "2", "2", "7", "9", "6", "6", None, None]
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 2, 2]
    pooled = majority_vote(answers, groups, exact)  # pooled labels: 7, 5, 2
    out = role_signals(answers, groups, 9, pooled, exact)
    assert out[names.POLICY_MOMENTUM_DISAGREEMENT] == (pytest.approx(0.5), 2.0)
    # momentum samples agreeing with the pooled label: "7" (yes), "9", "6", "6", None, None
    assert out[names.MOMENTUM_AGREEMENT] == (pytest.approx(1 / 6), 6.0)


def test_role_signals_compare_answers_by_equivalence_not_by_string():
    answers = ["0.5", "0.5", "1/2", "1/2"]
    groups = [0, 0, 0, 0]
    pooled = majority_vote(answers, groups, numeric_frac)
    out = role_signals(answers, groups, 2, pooled, numeric_frac)
    assert out[names.POLICY_MOMENTUM_DISAGREEMENT] == (0.0, 1.0)
    assert out[names.MOMENTUM_AGREEMENT] == (1.0, 2.0)


def numeric_frac(a: str, b: str) -> bool:
    def value(x: str) -> float:
        if "/" in x:
            n, d = x.split("/")
            return float(n) / float(d)
        return float(x)

    return value(a) == value(b)


def test_role_signals_without_momentum_samples_is_empty():
    answers = ["1", "1"]
    assert role_signals(answers, [0, 0], 2, majority_vote(answers, [0, 0], exact), exact) == {}


def test_pseudo_label_memory_flips_and_mode_hand_computed():
    memory = PseudoLabelMemory()
    first = memory.observe([("a", "1"), ("b", "2"), ("c", "2"), ("d", None)], exact)
    assert names.LABEL_FLIP_FRAC not in first  # nothing seen before
    assert first[names.LABEL_MODE_FRAC] == pytest.approx(2 / 3)  # "2" twice among 3 labelled
    # epoch 2: a keeps 1, b flips to 3, c unlabeled now (keeps 2), d first labelled now
    second = memory.observe([("a", "1"), ("b", "3"), ("c", None), ("d", "4")], exact)
    assert second[names.LABEL_FLIP_FRAC] == pytest.approx(1 / 2)  # a, b compared
    assert second[names.LABEL_MODE_FRAC] == pytest.approx(1 / 3)
    assert memory.labels == {"a": "1", "b": "3", "c": "2", "d": "4"}
    restored = PseudoLabelMemory()
    restored.load_state_dict(memory.state_dict())
    assert restored.labels == memory.labels
    assert restored.observe([("c", "2.0")], numeric) == {names.LABEL_FLIP_FRAC: 0.0, names.LABEL_MODE_FRAC: 1.0}


def test_step_pseudo_labels_keys_by_uid_and_never_reads_gold():
    problems = [Problem("u0", "p0", "gold0"), Problem("u1", "p1", None)]
    vote = majority_vote(["3", "3", None, None], [0, 0, 1, 1], exact)
    assert step_pseudo_labels(problems, vote) == [("u0", "3"), ("u1", None)]
    corrupted = [Problem("u0", "p0", "WRONG"), Problem("u1", "p1", "WRONG")]
    assert step_pseudo_labels(corrupted, vote) == step_pseudo_labels(problems, vote)


# ---- the trainer logs them, and keeps the pseudo-label memory across a resume ------------------


def test_trainer_logs_label_free_signals_and_resumes_the_label_memory(tiny_cache, tmp_path):
    """A pool of 8 prompts, 4 per step: step 3 sees step 1's prompts again. Deleting the last
    checkpoint and rerunning resumes at step 2 and replays step 3; the memory it writes must
    hold step 2's labels too, which only the step-2 checkpoint had."""
    import shutil

    from mgrpo import checkpoint as ckpt
    from tests.test_trainer import fast_overrides
    from tests.trainer_helpers import metric_series, train

    def overrides(uri, *extra):
        return fast_overrides(tiny_cache, uri, "signals", "data.max_train_problems=8", "trainer.total_steps=3",
                              "trainer.checkpoint_every=2", "trainer.keep_last=5",
                              "trainer.keep_finished_state=true", *extra)  # the finished run is resumed from step 2

    ref_uri = f"sqlite:///{tmp_path}/ref.db"
    train(overrides(ref_uri), tmp_path / "ref")
    ref = next(iter(metric_series(ref_uri, "signals").values()))
    for key in (names.POLICY_MOMENTUM_DISAGREEMENT, names.MOMENTUM_AGREEMENT, names.LABEL_MODE_FRAC):
        assert [s for s, _ in ref[key]] == [1, 2, 3], key
        assert all(0.0 <= v <= 1.0 for _, v in ref[key]), key
    assert [s for s, _ in ref[names.LABEL_FLIP_FRAC]] == [3]
    ref_labels = ckpt.latest_checkpoint(tmp_path / "ref").state["pseudo_labels"]
    assert 4 < len(ref_labels) <= 8 and all(uid.startswith("arith:") for uid in ref_labels)

    uri = f"sqlite:///{tmp_path}/resumed.db"
    train(overrides(uri), tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000003")
    train(overrides(uri), tmp_path / "run")  # resumes at step 2 and replays step 3
    found = ckpt.latest_checkpoint(tmp_path / "run")
    assert found.state["step"] == 3 and found.state["pseudo_labels"] == ref_labels

    srt_uri = f"sqlite:///{tmp_path}/srt.db"
    train(overrides(srt_uri, "algo=srt", "monitor.mode=label_free", "monitor.every=1", "monitor.stop_on_collapse=true"), tmp_path / "srt")
    srt = next(iter(metric_series(srt_uri, "signals").values()))
    assert names.POLICY_MOMENTUM_DISAGREEMENT not in srt and names.LABEL_FLIP_FRAC in srt
    from mlflow import MlflowClient

    client = MlflowClient(srt_uri)
    tags = client.search_runs([client.get_experiment_by_name("signals").experiment_id])[0].data.tags
    assert tags["mgrpo.label_free_alarm"] == "false" and tags["mgrpo.label_free_checkpoint_step"] == "3"
    assert "mgrpo.collapsed" not in tags, "label_free mode computes no labelled verdict"


def test_answer_log_magnitude_hand_computed():
    from mgrpo.step_metrics import answer_log_magnitude

    assert answer_log_magnitude("99") == pytest.approx(2.0)
    assert answer_log_magnitude("-99") == pytest.approx(-2.0)
    assert answer_log_magnitude("0") == 0.0
    assert answer_log_magnitude("9,999") == pytest.approx(4.0)
    assert answer_log_magnitude("\\frac{3}{1}") == pytest.approx(answer_log_magnitude("3/1")) == pytest.approx(0.60206)
    assert answer_log_magnitude("-\\frac{9}{1}") == pytest.approx(-1.0)
    for other in (None, "x+1", "1/0", "1e400", "nan", "\\sqrt{2}"):
        assert answer_log_magnitude(other) is None, other


# ---- label-free detectors on synthetic curves ---------------------------------------------------

import numpy as np  # noqa: E402

from mgrpo_analysis import label_free as lf  # noqa: E402
from mgrpo_analysis import label_free_eval as lfe  # noqa: E402
from mgrpo_analysis.detectors import DETECTOR_INFO  # noqa: E402


def curve(fn, last=400, sd=0.02, seed=1):
    rng = np.random.default_rng(seed)
    return [(s, float(fn(s) + sd * rng.standard_normal())) for s in range(1, last + 1)]


def healthy(last=400, seed=0):
    """Every label-free signal, flat at a plausible level with batch noise."""
    return {
        names.PSEUDO_REWARD: curve(lambda s: 0.45, last, 0.04, seed),
        names.VOTE_SHARE: curve(lambda s: 0.46, last, 0.03, seed + 1),
        names.NUM_ANSWER_CLASSES: curve(lambda s: 4.5, last, 0.3, seed + 2),
        names.ZERO_STD_FRAC: curve(lambda s: 0.02, last, 0.01, seed + 3),
        names.ENTROPY: curve(lambda s: 0.1, last, 0.003, seed + 4),
        names.RESPONSE_LENGTH: curve(lambda s: 27.0, last, 0.1, seed + 5),
        names.NO_ANSWER_FRAC: curve(lambda s: 0.003, last, 0.002, seed + 6),
        names.POLICY_MOMENTUM_DISAGREEMENT: curve(lambda s: 0.3, last, 0.1, seed + 7),
        names.MOMENTUM_AGREEMENT: curve(lambda s: 0.4, last, 0.1, seed + 8),
        names.LABEL_MODE_FRAC: curve(lambda s: 0.1, last, 0.03, seed + 9),
        names.ANSWER_LOG_MAGNITUDE: curve(lambda s: 2.2, last, 0.02, seed + 10),
        names.LABEL_FLIP_FRAC: [(s, v) for s, v in curve(lambda s: 0.3, last, 0.1, seed + 11) if s > last // 4],
        names.KL: curve(lambda s: 1e-3 * s / last, last, 2e-5, seed + 12),
        names.SELF_CERTAINTY: curve(lambda s: 11.43, last, 0.02, seed + 13),
    }


def ramp(start, end, at=100, over=100):
    """start until step `at`, then linearly to `end` over `over` steps, then end."""
    return lambda s: start + (end - start) * min(max((s - at) / over, 0.0), 1.0)


PATTERNS = {
    # detector: (metric, function of step) replacing the healthy curve
    "vote_share_rise": (names.VOTE_SHARE, ramp(0.46, 0.7)),
    "pseudo_reward_rise": (names.PSEUDO_REWARD, ramp(0.45, 0.7)),
    "answer_classes_fall": (names.NUM_ANSWER_CLASSES, ramp(4.5, 2.5)),
    "length_drift": (names.RESPONSE_LENGTH, ramp(27.0, 45.0)),
    "no_answer_rise": (names.NO_ANSWER_FRAC, ramp(0.003, 0.3)),
    "momentum_disagreement_rise": (names.POLICY_MOMENTUM_DISAGREEMENT, ramp(0.3, 0.6)),
    "momentum_agreement_fall": (names.MOMENTUM_AGREEMENT, ramp(0.4, 0.1)),
    "constant_answer": (names.LABEL_MODE_FRAC, ramp(0.1, 0.9)),
    "answer_drift": (names.ANSWER_LOG_MAGNITUDE, ramp(2.2, 2.1)),
    "self_certainty_rise": (names.SELF_CERTAINTY, ramp(11.43, 11.6)),
    "entropy_collapse": (names.ENTROPY, lambda s: 0.005 + 0.095 * np.exp(-s / 15)),
    "kl_acceleration": (names.KL, lambda s: 1e-3 * s / 400 + (0.02 * ((s - 250) / 150) ** 2 if s > 250 else 0.0)),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_each_label_free_detector_fires_on_its_pattern_and_only_it(name):
    metric, fn = PATTERNS[name]
    history = healthy()
    sd = {names.ENTROPY: 0.002, names.KL: 2e-5}.get(metric, 0.01)
    history[metric] = curve(fn, sd=sd, seed=99)
    v = lf.detect_label_free(history)
    assert v.fired == (name,), (name, [d.detail for d in v.detections if d.fired])
    step = v.detection(name).step
    if name not in ("entropy_collapse", "kl_acceleration"):
        assert 100 < step <= 220, step  # after the change starts, within its ramp (+ smoothing)
    assert v.alarm == (name in v.rule)


def test_label_flip_and_unanimity_patterns():
    history = healthy()
    history[names.LABEL_FLIP_FRAC] = [(s, v) for s, v in curve(ramp(0.3, 0.8, at=200), seed=5) if s > 100]
    assert lf.detect_label_free(history).fired == ("label_flip_rise",)
    history = healthy()
    history[names.VOTE_SHARE] = curve(ramp(0.46, 1.0, over=60), sd=0.005)
    history[names.ZERO_STD_FRAC] = curve(ramp(0.02, 1.0, over=60), sd=0.005)
    v = lf.detect_label_free(history)
    assert set(v.fired) == {"unanimous_consensus", "vote_share_rise"} and v.alarm
    assert v.onset_step == v.detection("unanimous_consensus").step


@pytest.mark.parametrize("seed", range(20))
def test_steady_noisy_runs_raise_no_label_free_alarm(seed):
    v = lf.detect_label_free(healthy(last=1000, seed=seed * 20))
    assert not v.fired, [d.detail for d in v.detections if d.fired]
    assert v.tags() == {"mgrpo.label_free_alarm": "false", "mgrpo.label_free_onset_step": "", "mgrpo.label_free_detectors": ""}


def test_a_linear_kl_rise_is_not_an_acceleration_but_a_quadratic_one_is():
    linear = {names.KL: curve(lambda s: 0.05 * s / 400, sd=1e-4)}
    assert not lf.detect_label_free(linear).fired
    quadratic = {names.KL: curve(lambda s: 0.05 * (s / 400) ** 3, sd=1e-4)}
    assert lf.detect_label_free(quadratic).fired == ("kl_acceleration",)


def test_short_or_missing_curves_are_not_judged():
    v = lf.detect_label_free({names.VOTE_SHARE: [(1, 0.5), (2, 0.9)]})
    assert not v.alarm and all(not d.fired for d in v.detections)
    assert "only 2 points" in v.detection("vote_share_rise").detail
    assert v.detection("kl_acceleration").detail == "no train/kl curve"


def test_every_detector_is_marked_and_label_free_ones_read_no_label():
    labelled = {k for k, info in DETECTOR_INFO.items() if info.reads_labels}
    assert labelled == {"accuracy_collapse", "reward_accuracy_divergence", "degenerate_consensus"}
    assert not DETECTOR_INFO["entropy_collapse"].reads_labels
    for name, (_, info) in lf.LABEL_FREE_DETECTORS.items():
        assert not info.reads_labels and set(info.inputs) <= set(lf.LABEL_FREE_INPUTS), name
    for metric in (names.SELECTION_ACCURACY, names.TRUE_ACCURACY, names.LABEL_ACCURACY, names.benchmark_metric("math500", "mean@1")):
        assert metric not in lf.LABEL_FREE_INPUTS
    assert not set(lf.LABEL_FREE_INPUTS) & set(LABEL_METRICS)


def corrupt_labels(history, seed=0):
    """Every label-reading curve replaced by garbage, others untouched."""
    rng = np.random.default_rng(seed)
    out = dict(history)
    for key in (names.SELECTION_ACCURACY, names.TRUE_ACCURACY, names.LABEL_ACCURACY, names.benchmark_metric("math500", "mean@1")):
        steps = [s for s, _ in history.get(key, [])] or list(range(0, 401, 20))
        out[key] = [(s, float(rng.uniform())) for s in steps]
    return out


@pytest.mark.parametrize("name", ["constant_answer", "answer_drift", "vote_share_rise"])
def test_corrupted_labels_change_no_label_free_verdict_or_checkpoint(name):
    metric, fn = PATTERNS[name]
    history = healthy()
    history[metric] = curve(fn, sd=0.01, seed=99)
    history[names.SELECTION_ACCURACY] = [(s, 0.4 + 0.1 * np.sin(s / 50)) for s in range(0, 401, 20)]
    history[names.TRUE_ACCURACY] = curve(lambda s: 0.3)
    clean = lf.detect_label_free(history)
    for seed in range(3):
        dirty = lf.detect_label_free(corrupt_labels(history, seed))
        assert dirty == clean
        steps = [s for s, _ in history[names.SELECTION_ACCURACY]]
        assert lf.choose_checkpoint(steps, dirty.onset_step) == lf.choose_checkpoint(steps, clean.onset_step)


def test_choose_checkpoint_hand_computed():
    steps = [0, 20, 40, 60, 80, 100]
    assert lf.choose_checkpoint(steps, None) == 100
    assert lf.choose_checkpoint(steps, 75) == 60
    assert lf.choose_checkpoint(steps, 80) == 80
    assert lf.choose_checkpoint(steps, 80, margin=10) == 60
    assert lf.choose_checkpoint(steps, -5) == 0
    assert lf.choose_checkpoint([], 10) is None


def test_thresholds_are_checked_and_name_the_setting():
    with pytest.raises(ValueError, match="LabelFreeThresholds.rule"):
        lf.LabelFreeThresholds(rule="vote_share_rise,nonsense")
    with pytest.raises(ValueError, match="baseline_steps"):
        lf.LabelFreeThresholds(baseline_steps=0)
    with pytest.raises(ValueError, match="constant_answer_level"):
        lf.LabelFreeThresholds(constant_answer_level=2.0)
    assert lf.LabelFreeThresholds(rule=" answer_drift , length_drift").rule_names == ("answer_drift", "length_drift")


# ---- the online monitor in label_free mode ------------------------------------------------------


class Tags:
    def __init__(self):
        self.tags = {}

    def set_tags(self, tags):
        self.tags.update(tags)


def monitor(mode="label_free", stop=True, rule=None):
    from mgrpo.config import MonitorConfig, TrainerConfig
    from mgrpo.run_monitor import RunMonitor

    cfg = MonitorConfig(mode=mode, stop_on_collapse=stop, label_free_rule=rule)
    return RunMonitor(cfg, TrainerConfig(total_steps=400, checkpoint_every=50), 1000)


def feed(mon, history, upto):
    by_step = {}
    for key, points in history.items():
        for s, v in points:
            if s <= upto:
                by_step.setdefault(s, {})[key] = v
    for s in sorted(by_step):
        mon.record(by_step[s], s)


def test_label_free_monitor_stops_tags_and_keeps_its_choice_whatever_the_labels():
    metric, fn = PATTERNS["constant_answer"]
    history = healthy()
    history[metric] = curve(fn, sd=0.01, seed=99)
    history[names.SELECTION_ACCURACY] = [(s, 0.4) for s in range(0, 401, 20)]
    outcomes = []
    for h in (history, corrupt_labels(history, 1), corrupt_labels(history, 2)):
        mon, tracker = monitor(), Tags()
        decisions = []
        for upto in range(25, 401, 25):
            feed(mon, {k: [p for p in v if upto - 25 < p[0] <= upto] for k, v in h.items()}, upto)
            decisions.append(mon.check(tracker))
        outcomes.append((decisions, dict(tracker.tags), mon.label_free_alarm))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    decisions, tags, alarm = outcomes[0]
    assert decisions.index(True) > 0 and tags["mgrpo.label_free_alarm"] == "true"
    assert "mgrpo.collapsed" not in tags, "label_free mode must not compute the labelled verdict"
    onset = int(tags["mgrpo.first_label_free_onset_step"])
    assert int(tags["mgrpo.label_free_checkpoint_step"]) == max(s for s in range(0, 401, 50) if s <= onset)
    assert tags["mgrpo.first_label_free_detectors"] == "constant_answer"


def test_label_free_monitor_only_tags_without_stop_and_survives_a_resume():
    mon, tracker = monitor(stop=False, rule=["answer_drift"]), Tags()
    metric, fn = PATTERNS["answer_drift"]
    history = healthy()
    history[metric] = curve(fn, sd=0.01, seed=99)
    feed(mon, history, 400)
    assert mon.check(tracker) is False and tracker.tags["mgrpo.label_free_alarm"] == "true"
    restored = monitor(stop=False, rule=["answer_drift"])
    import json

    restored.load_state_dict(json.loads(json.dumps(mon.state_dict())))
    assert restored.label_free_alarm == mon.label_free_alarm
    assert restored.history[names.ANSWER_LOG_MAGNITUDE] == mon.history[names.ANSWER_LOG_MAGNITUDE]


def test_labeled_mode_is_unchanged_and_bad_modes_are_refused():
    mon, tracker = monitor(mode="labeled"), Tags()
    feed(mon, healthy(), 400)
    assert mon.check(tracker) is False and tracker.tags["mgrpo.collapsed"] == "false"
    assert "mgrpo.label_free_alarm" not in tracker.tags

    from mgrpo.config import ConfigError
    from mgrpo.config_checks import validate
    from tests.trainer_helpers import compose_config

    for override, key in (("monitor.mode=oracle", "monitor.mode"), ("monitor.label_free_rule=[bogus]", "monitor.label_free_rule")):
        with pytest.raises(ConfigError, match=key):
            validate(compose_config([override]))
    validate(compose_config(["monitor.mode=label_free", "monitor.label_free_rule=[answer_drift,constant_answer]"]))


# ---- the evaluation against the labelled truth --------------------------------------------------


def long_frame(histories):
    import pandas as pd

    rows = [(run, s, m, v) for run, h in histories.items() for m, pts in h.items() for s, v in pts]
    return pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])


def test_evaluate_runs_scores_alarms_leads_and_checkpoints_against_the_truth():
    import pandas as pd

    from mgrpo_analysis.detectors import detect_runs

    def acc(fn):
        return [(s, fn(s)) for s in range(0, 401, 20)]

    collapsing = healthy()
    collapsing[names.LABEL_MODE_FRAC] = curve(ramp(0.1, 0.9, at=60), sd=0.01, seed=99)
    collapsing[names.SELECTION_ACCURACY] = acc(lambda s: 0.45 if s < 200 else 0.2)
    steady = healthy(seed=50)
    steady[names.SELECTION_ACCURACY] = acc(lambda s: 0.45)
    false_alarm = healthy(seed=70)
    false_alarm[names.NO_ANSWER_FRAC] = curve(ramp(0.003, 0.4, at=100), sd=0.01, seed=98)
    false_alarm[names.SELECTION_ACCURACY] = acc(lambda s: 0.40 + 0.05 * (s >= 200))
    silent = healthy(seed=90)
    silent[names.SELECTION_ACCURACY] = acc(lambda s: 0.45 if s < 200 else 0.2)
    curves = long_frame({"c": collapsing, "s": steady, "f": false_alarm, "x": silent})
    runs = pd.DataFrame({"run_id": ["c", "s", "f", "x"], "params.monitor.every": ["25"] * 4})
    verdicts = detect_runs(runs, curves)
    assert list(verdicts["collapsed"]) == [True, False, False, True]
    per = lfe.evaluate_runs(runs, curves, verdicts).set_index("run_id")

    truth = int(per.loc["c", "truth_step"])
    assert 160 <= truth <= 240 and per.loc["c", "labelled_alarm"] >= truth
    alarm = per.loc["c", "alarm_constant_answer"]
    assert alarm % 25 == 0 and alarm < truth, "the constant answer shows before accuracy falls"
    assert per.loc["c", "rule_alarm"] == alarm and per.loc["c", "rule_onset"] <= alarm
    assert per.loc["c", "lf_step"] < 200 and per.loc["c", "lf_accuracy"] == 0.45 and per.loc["c", "lf_lost"] == 0.0
    assert per.loc["x", "lf_step"] == 400 and per.loc["x", "lf_lost"] == pytest.approx(0.25)
    assert pd.isna(per.loc["s", "rule_alarm"]) and per.loc["s", "lf_step"] == 400
    assert not pd.isna(per.loc["f", "alarm_no_answer_rise"])

    table = lfe.detector_table(per.reset_index(), lf.LabelFreeThresholds().rule_names).set_index("detector")
    row = table.loc["constant_answer"]
    assert (row.detected, row.collapsed_runs, row.false_alarms, row.healthy_runs) == (1, 2, 0, 2)
    assert row.lead_median == alarm - truth < 0
    row = table.loc["no_answer_rise"]
    assert (row.detected, row.false_alarms, row.false_alarm_rate) == (0, 1, 0.5)
    rule = table.loc["rule (any in-rule detector)"]
    assert (rule.detected, rule.false_alarms) == (1, 1)
    assert table.loc["kl_acceleration", "not_judged"] == 0  # every run logged train/kl

    shifts = lfe.signal_shifts(runs, curves, verdicts).set_index("signal")
    assert shifts.loc[names.LABEL_MODE_FRAC, "auc"] >= 0.5  # c moved more than either other run; x did not move
    assert shifts.loc[names.LABEL_MODE_FRAC, "shift_collapsed"] > 3


def test_cli_threshold_prefix_changes_only_the_label_free_side():
    from mgrpo_analysis.cli import _thresholds

    th, lf_th = _thresholds([("noise_z", "4"), ("label_free.train_smooth", "11"), ("rule", "answer_drift")])
    assert th.noise_z == lf_th.noise_z == 4.0
    assert th.train_smooth == 25 and lf_th.train_smooth == 11 and lf_th.rule_names == ("answer_drift",)
    with pytest.raises(ValueError, match="label_free.heldout_size: unknown"):
        _thresholds([("label_free.heldout_size", "3")])
    with pytest.raises(ValueError, match="rule"):
        _thresholds([("rule", "nonsense")])
