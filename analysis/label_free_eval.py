"""Label-free detectors measured against the truth: each finished run is replayed at the checks
its online monitor made, and every label-free detector's first alarm is compared with the
labelled verdict of `detectors.detect` (detections on collapsed runs, false alarms on the
others, lead time = alarm step - labelled collapse step, negative is early). Also the label-free
checkpoint choice against the labelled best and final, and how far each signal moved.

The label-free side only ever sees `label_free_view(curves)`; labels enter here, as the truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from .detectors import ACCURACY, USED_METRICS, Thresholds, _smooth, _train_noise, as_curve, detect, heldout_size
from .label_free import (
    LABEL_FREE_DETECTORS,
    LABEL_FREE_INPUTS,
    LabelFreeThresholds,
    choose_checkpoint,
    detect_label_free,
    label_free_view,
)
from .tables import method_label, method_order


# ---- replaying a run as its monitor saw it --------------------------------------------------------


def _truncate(curves: Mapping[str, pd.Series], step: int) -> dict[str, pd.Series]:
    return {k: v[v.index <= step] for k, v in curves.items()}


def check_steps(last_step: int, every: int) -> list[int]:
    """The steps an online monitor checking every `every` steps (and at the last) looks at."""
    return sorted(set(range(every, last_step + 1, every)) | {last_step}) if last_step > 0 else []


@dataclass(frozen=True)
class Replay:
    """First alarms of one run, replayed at its monitor's checks."""

    alarms: dict[str, Optional[int]]
    """Label-free detector -> first check step at which it fired (None: never)."""
    rule_alarm: Optional[int]
    rule_onset: Optional[int]
    """The rule's onset step at its first alarm (what a stopping monitor acts on)."""
    judged: dict[str, bool]
    """Label-free detector -> whether the full run had its inputs."""
    labelled_alarm: Optional[int]
    """First check at which the labelled verdict (`detectors.detect`) said collapsed."""


def replay(curves: Mapping[str, pd.Series], every: int, lf: LabelFreeThresholds, th: Thresholds,
           metric: str = ACCURACY, labelled: bool = True) -> Replay:
    """Replay one run's curves (clean Series) at checks every `every` steps. `labelled=False`
    skips the labelled verdict's replay (its alarm is only needed for runs that collapsed)."""
    view = {k: v for k, v in label_free_view(curves).items() if not v.empty}
    last = max((int(v.index[-1]) for v in curves.values() if not v.empty), default=0)
    final = detect_label_free(view, lf)
    judged = {d.name: not d.detail.startswith("no ") for d in final.detections}
    alarms: dict[str, Optional[int]] = {name: None for name in LABEL_FREE_DETECTORS}
    rule_alarm = rule_onset = labelled_alarm = None
    pending_labelled = labelled
    labelled_curves = {k: v for k, v in curves.items() if k in (metric, *USED_METRICS)}
    for step in check_steps(last, every):
        if all(a is not None or not judged[n] for n, a in alarms.items()) and rule_alarm is not None and not pending_labelled:
            break
        v = detect_label_free(_truncate(view, step), lf)
        for d in v.detections:
            if d.fired and alarms[d.name] is None:
                alarms[d.name] = step
        if v.alarm and rule_alarm is None:
            rule_alarm, rule_onset = step, v.onset_step
        if pending_labelled and detect(_truncate(labelled_curves, step), th, metric=metric).collapsed:
            labelled_alarm, pending_labelled = step, False
    return Replay(alarms, rule_alarm, rule_onset, judged, labelled_alarm)


def _every(run: Mapping[str, object], lf: LabelFreeThresholds) -> int:
    if lf.check_every:
        return lf.check_every
    try:
        every = int(str(run.get("params.monitor.every")))
    except ValueError:
        every = 25
    return every if every > 0 else 25


def evaluate_runs(runs: pd.DataFrame, curves: pd.DataFrame, verdicts: pd.DataFrame,
                  lf: Optional[LabelFreeThresholds] = None, thresholds: Optional[Thresholds] = None,
                  metric: str = ACCURACY) -> pd.DataFrame:
    """Per run: the labelled truth (from `verdicts`, the frame of `detectors.detect_runs`), each
    label-free detector's first alarm, the rule's alarm and onset, and the checkpoint choices.

    Columns: run_id, truth_collapsed, truth_step, labelled_alarm, `alarm_<detector>` and
    `judged_<detector>` for every label-free detector, rule_alarm, rule_onset, best_step, best,
    final_step, final, lf_step, lf_accuracy, lf_lost (best - lf_accuracy), lf_vs_final
    (lf_accuracy - final). The label-free choice picks among the evaluated steps (those with a
    `metric` value), which are read only to score the choice, never to make it.
    """
    lf = lf or LabelFreeThresholds()
    th = thresholds or Thresholds()
    by_run: dict[str, dict[str, pd.Series]] = {}
    wanted = curves[curves["metric"].isin({metric, *LABEL_FREE_INPUTS, *USED_METRICS})]
    for (run_id, name), group in wanted.groupby(["run_id", "metric"], sort=False):
        by_run.setdefault(run_id, {})[name] = as_curve(pd.Series(group["value"].to_numpy(), index=group["step"].to_numpy()))
    truth = verdicts.set_index("run_id")
    rows = []
    for run in runs.to_dict("records"):
        run_id = run["run_id"]
        c = by_run.get(run_id, {})
        run_th = replace(th, heldout_size=heldout_size(run, th.heldout_size))
        r = replay(c, _every(run, lf), lf, run_th, metric, labelled=bool(truth.loc[run_id, "collapsed"]))
        acc = c.get(metric, pd.Series(dtype="float64"))
        row = {"run_id": run_id, "truth_collapsed": bool(truth.loc[run_id, "collapsed"]),
               "truth_step": truth.loc[run_id, "collapse_step"], "labelled_alarm": r.labelled_alarm}
        for name in LABEL_FREE_DETECTORS:
            row[f"alarm_{name}"] = r.alarms[name]
            row[f"judged_{name}"] = r.judged[name]
        row.update(rule_alarm=r.rule_alarm, rule_onset=r.rule_onset)
        if acc.empty:
            row.update(best_step=None, best=math.nan, final_step=None, final=math.nan, lf_step=None, lf_accuracy=math.nan)
        else:
            chosen = choose_checkpoint(acc.index, r.rule_onset, lf.checkpoint_margin)
            row.update(best_step=int(acc.idxmax()), best=float(acc.max()), final_step=int(acc.index[-1]),
                       final=float(acc.iloc[-1]), lf_step=chosen, lf_accuracy=float(acc.loc[chosen]))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_columns())
    frame["lf_lost"] = frame["best"] - frame["lf_accuracy"]
    frame["lf_vs_final"] = frame["lf_accuracy"] - frame["final"]
    ints = ["truth_step", "labelled_alarm", "rule_alarm", "rule_onset", "best_step", "final_step", "lf_step",
            *(f"alarm_{n}" for n in LABEL_FREE_DETECTORS)]
    return frame.astype({c: "Int64" for c in ints} | {"truth_collapsed": bool})


def _columns() -> list[str]:
    cols = ["run_id", "truth_collapsed", "truth_step", "labelled_alarm"]
    for name in LABEL_FREE_DETECTORS:
        cols += [f"alarm_{name}", f"judged_{name}"]
    return cols + ["rule_alarm", "rule_onset", "best_step", "best", "final_step", "final", "lf_step", "lf_accuracy"]


def detector_table(per_run: pd.DataFrame, rule: Sequence[str]) -> pd.DataFrame:
    """Each label-free detector (and the rule) against the labelled truth: on the collapsed runs
    it could judge, how many it detected and its lead times (alarm - labelled collapse step;
    negative is early); on the other judged runs, its false alarms."""
    rows = []
    entries = [(name, f"alarm_{name}", f"judged_{name}") for name in LABEL_FREE_DETECTORS]
    entries.append(("rule (any in-rule detector)", "rule_alarm", None))
    for name, alarm_col, judged_col in entries:
        judged = per_run if judged_col is None else per_run[per_run[judged_col]]
        if judged_col is None:  # the rule judges a run when any member could
            judged = per_run[per_run[[f"judged_{n}" for n in rule]].any(axis=1)]
        collapsed = judged[judged["truth_collapsed"]]
        healthy = judged[~judged["truth_collapsed"]]
        hit = collapsed[collapsed[alarm_col].notna()]
        lead = (hit[alarm_col] - hit["truth_step"]).astype("float64")
        lead_alarm = (hit[alarm_col] - hit["labelled_alarm"]).astype("float64").dropna()
        false = int(healthy[alarm_col].notna().sum())
        rows.append({
            "detector": name,
            "in_rule": name.startswith("rule") or name in rule,
            "collapsed_runs": len(collapsed),
            "detected": len(hit),
            "detection_rate": len(hit) / len(collapsed) if len(collapsed) else math.nan,
            "healthy_runs": len(healthy),
            "false_alarms": false,
            "false_alarm_rate": false / len(healthy) if len(healthy) else math.nan,
            "lead_median": float(lead.median()) if len(lead) else math.nan,
            "lead_min": float(lead.min()) if len(lead) else math.nan,
            "lead_max": float(lead.max()) if len(lead) else math.nan,
            "lead_vs_labelled_alarm_median": float(lead_alarm.median()) if len(lead_alarm) else math.nan,
            "not_judged": int(len(per_run) - len(judged)),
        })
    return pd.DataFrame(rows)


def thresholds_frame(lf: LabelFreeThresholds) -> pd.DataFrame:
    values = asdict(lf)
    return pd.DataFrame({"threshold": list(values), "value": pd.Series(list(values.values()), dtype=object)})


def threshold_names() -> list[str]:
    return [f.name for f in fields(LabelFreeThresholds)]


# ---- display -------------------------------------------------------------------------------------


def _num(v: object, digits: int = 3) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):.{digits}f}"


def _step(v: object) -> str:
    return "" if v is None or pd.isna(v) else str(int(v))


def detector_table_display(table: pd.DataFrame) -> pd.DataFrame:
    """`detector_table` for reading: detections and false alarms as k/n, lead as median [min, max]."""
    def lead(row) -> str:
        if pd.isna(row.lead_median):
            return ""
        return f"{row.lead_median:+.0f} [{row.lead_min:+.0f}, {row.lead_max:+.0f}]"

    return pd.DataFrame({
        "detector": table["detector"],
        "in rule": table["in_rule"].map({True: "yes", False: ""}),
        "detected (collapsed runs)": [f"{d}/{n}" for d, n in zip(table["detected"], table["collapsed_runs"])],
        "false alarms (other runs)": [f"{f}/{n}" for f, n in zip(table["false_alarms"], table["healthy_runs"])],
        "lead vs labelled step, median [min, max]": [lead(r) for r in table.itertuples()],
        "lead vs labelled alarm": table["lead_vs_labelled_alarm_median"].map(lambda v: "" if pd.isna(v) else f"{v:+.0f}"),
        "runs not judged": table["not_judged"],
    })


def checkpoint_table(per_run: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per run: the labelled verdict, the label-free alarm, and the three checkpoints (labelled
    best, final, label-free choice) with their held-out accuracy."""
    meta = results.set_index("run_id")
    rows = []
    for r in per_run.itertuples():
        m = meta.loc[r.run_id] if r.run_id in meta.index else None
        rows.append({
            "run": m["run_name"] if m is not None else r.run_id[:8],
            "method": method_label(m["method"]) if m is not None else "",
            "seed": "" if m is None or pd.isna(m["seed"]) else str(int(m["seed"])),
            "labelled collapse": f"step {_step(r.truth_step)}" if r.truth_collapsed else "no",
            "label-free alarm (onset)": f"{_step(r.rule_alarm)} ({_step(r.rule_onset)})" if not pd.isna(r.rule_alarm) else "no",
            "best (step)": f"{_num(r.best)} ({_step(r.best_step)})",
            "final (step)": f"{_num(r.final)} ({_step(r.final_step)})",
            "label-free choice (step)": f"{_num(r.lf_accuracy)} ({_step(r.lf_step)})",
            "lost vs best": _num(r.lf_lost),
            "vs final": _num(r.lf_vs_final),
        })
    return pd.DataFrame(rows)


def choice_summary(per_run: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per method over seeds: mean ± std of the labelled best, the final, the label-free choice,
    and the accuracy the label-free choice loses against the best."""
    have = per_run.merge(results[["run_id", "method"]], on="run_id", how="left")
    have = have[have["lf_accuracy"].notna()]
    rows = []
    for method in method_order(have["method"].dropna().unique()):
        g = have[have["method"] == method]
        def pm(col: str) -> str:
            v = g[col].astype("float64")
            return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"
        rows.append({"method": method_label(method), "runs": len(g), "labelled best": pm("best"), "final": pm("final"),
                     "label-free choice": pm("lf_accuracy"), "lost vs best": pm("lf_lost"),
                     "label-free alarms": int(g["rule_alarm"].notna().sum())})
    return pd.DataFrame(rows)


def signal_shifts(runs: pd.DataFrame, curves: pd.DataFrame, verdicts: pd.DataFrame,
                  lf: Optional[LabelFreeThresholds] = None) -> pd.DataFrame:
    """How far each label-free signal moved by the end of each run, in noise units: (smoothed
    last value - baseline) / (sigma sqrt(3 / train_smooth)), the statistic every `_shift`
    detector compares with `noise_z`. Separation per signal, over the runs that logged it: the
    mean shift on collapsed and on other runs, and the AUC of the shift for telling collapsed
    runs from the rest (0.5: no separation; 1 or 0: perfect, up or down). This shows whether
    any threshold on a signal could have worked, not only whether the chosen one did.

    Returns one row per signal: signal, collapsed_runs, other_runs, shift_collapsed,
    shift_other, auc."""
    lf = lf or LabelFreeThresholds()
    collapsed = verdicts.set_index("run_id")["collapsed"]
    wanted = curves[curves["metric"].isin(LABEL_FREE_INPUTS) & curves["run_id"].isin(runs["run_id"])]
    rows = []
    for name, group in wanted.groupby("metric", sort=True):
        shifts: dict[bool, list[float]] = {True: [], False: []}
        for run_id, g in group.groupby("run_id", sort=False):
            c = as_curve(pd.Series(g["value"].to_numpy(), index=g["step"].to_numpy()))
            if len(c) < lf.baseline_steps + lf.sustain_steps:
                continue
            noise = _train_noise(c, lf.train_smooth)
            if not noise > 0:
                continue
            shift = (float(_smooth(c, lf.train_smooth).iloc[-1]) - float(c.iloc[: lf.baseline_steps].mean())) / noise
            shifts[bool(collapsed.get(run_id, False))].append(shift)
        yes, no = shifts[True], shifts[False]
        auc = math.nan
        if yes and no:
            wins = sum((a > b) + 0.5 * (a == b) for a in yes for b in no)
            auc = wins / (len(yes) * len(no))
        rows.append({"signal": name, "collapsed_runs": len(yes), "other_runs": len(no),
                     "shift_collapsed": float(np.mean(yes)) if yes else math.nan,
                     "shift_other": float(np.mean(no)) if no else math.nan, "auc": auc})
    return pd.DataFrame(rows, columns=["signal", "collapsed_runs", "other_runs", "shift_collapsed", "shift_other", "auc"])


def signal_shifts_display(shifts: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "signal": shifts["signal"],
        "runs (collapsed / other)": [f"{a} / {b}" for a, b in zip(shifts["collapsed_runs"], shifts["other_runs"])],
        "shift, collapsed runs": shifts["shift_collapsed"].map(lambda v: _num(v, 1)),
        "shift, other runs": shifts["shift_other"].map(lambda v: _num(v, 1)),
        "AUC": shifts["auc"].map(lambda v: _num(v, 2)),
    })
