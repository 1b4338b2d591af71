"""The vote check in the report: per run, was the vote's pseudo-label better than the policy's own
greedy answer, at the start and at the end?

The trainer logs `VOTE_CHECK_METRICS` at step 0 and each evaluation (`mgrpo.vote_check`): on a
fixed part of the selection set, the accuracy of the pseudo-label that the training pool, filter
and vote would produce, and of the greedy answer. Label-free RL can gain only while the first is
above the second; the table shows why a run could or could not.
"""

from __future__ import annotations

import pandas as pd

from mgrpo.metric_names import VOTE_CHECK

from .tables import _seed_str, method_label

PREFIX = VOTE_CHECK + "/"
LABEL_ACCURACY = PREFIX + "label_accuracy"
GREEDY_ACCURACY = PREFIX + "greedy_accuracy"
LABEL_MINUS_GREEDY = PREFIX + "label_minus_greedy"
LABELLED_FRAC = PREFIX + "labelled_frac"
VOTE_CHECK_METRICS = (LABEL_ACCURACY, GREEDY_ACCURACY, LABEL_MINUS_GREEDY, LABELLED_FRAC)
"""The metric names; the trainer logs these (a labelled diagnostic that no detector reads)."""


def vote_check_summary(results: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run that logged the check: its first and last evaluation's label and greedy
    accuracy and their difference.

    Args:
        results: one row per run (`tables.results`: run_id, run_name, method, seed, ...).
        curves: long frame run_id, step, metric, value.
    Returns:
        run_id, run_name, method, seed, first_step, label_first, greedy_first, gain_first,
        last_step, label_last, greedy_last, gain_last (empty when no run logged the check).
    """
    columns = ["run_id", "run_name", "method", "seed", "first_step", "label_first", "greedy_first", "gain_first",
               "last_step", "label_last", "greedy_last", "gain_last"]
    wanted = curves[curves["metric"].isin([LABEL_ACCURACY, GREEDY_ACCURACY])].dropna(subset=["value"])
    if wanted.empty:
        return pd.DataFrame(columns=columns)
    wide = wanted.pivot_table(index=["run_id", "step"], columns="metric", values="value", observed=True).dropna()
    rows = []
    for run_id, g in wide.groupby(level="run_id", observed=True):
        g = g.droplevel("run_id").sort_index()
        first, last = g.index[0], g.index[-1]
        rows.append({
            "run_id": str(run_id), "first_step": int(first),
            "label_first": g.loc[first, LABEL_ACCURACY], "greedy_first": g.loc[first, GREEDY_ACCURACY],
            "last_step": int(last), "label_last": g.loc[last, LABEL_ACCURACY], "greedy_last": g.loc[last, GREEDY_ACCURACY],
        })
    out = pd.DataFrame(rows)
    out["gain_first"] = out["label_first"] - out["greedy_first"]
    out["gain_last"] = out["label_last"] - out["greedy_last"]
    identity = results[["run_id", "run_name", "method", "seed"]].astype({"run_id": str})
    return identity.merge(out, on="run_id", how="inner")[columns]


def vote_check_table(summary: pd.DataFrame) -> pd.DataFrame:
    """`vote_check_summary` for display (method names and seeds as the other tables show them)."""
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    signed = lambda v: f"{v:+.3f}"  # noqa: E731
    return pd.DataFrame({
        "run": summary["run_name"],
        "method": summary["method"].map(method_label),
        "seed": summary["seed"].map(_seed_str),
        "label (first eval)": summary["label_first"].map(fmt),
        "greedy (first eval)": summary["greedy_first"].map(fmt),
        "label - greedy (first)": summary["gain_first"].map(signed),
        "last eval step": summary["last_step"].astype(str),
        "label (last eval)": summary["label_last"].map(fmt),
        "greedy (last eval)": summary["greedy_last"].map(fmt),
        "label - greedy (last)": summary["gain_last"].map(signed),
    })
