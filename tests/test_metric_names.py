"""Metric names: the chart view's layout they make, and runs logged under the old names."""

from __future__ import annotations

import re

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from mgrpo import metric_names as names
from mgrpo.run_monitor import MONITORED, RunMonitor
from mgrpo_analysis import cli
from mgrpo_analysis.store import Selection, Store
from mgrpo_analysis.synthetic import RunSpec, log_runs

SECTIONS = {names.COLLAPSE, names.EVAL, names.TRAIN, names.TIME, names.SELECTION, names.VOTE_CHECK}
LOGGED = sorted(v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and "/" in v and v not in SECTIONS)
"""Every fixed metric name of `mgrpo.metric_names`."""
OLD_NAMES = {new: old for old, new in names.RENAMED.items()}
VOTE_CHECK = [f"{names.VOTE_CHECK}/label_accuracy", f"{names.VOTE_CHECK}/greedy_accuracy"]


def section(name: str) -> str:
    """MLflow 3.17.2's section of a metric: its name up to the last '/'."""
    return name.rsplit("/", 1)[0]


def sorts_alike(a: str, b: str) -> bool:
    """Whether JavaScript's default sort and `localeCompare` put a and b in the same order: they
    disagree only where the first difference is '_' against a digit or '/' (ICU puts '_' first)."""
    for x, y in zip(a, b):
        if x != y:
            return not ({x, y} & {"_"} and ({x, y} - {"_"}) & set("/0123456789"))
    return True


def test_the_chart_view_opens_on_the_collapse_curves_and_ends_on_timings():
    logged = [*LOGGED, names.phase_time("rollout"), *VOTE_CHECK,
              *(names.benchmark_metric(b, k) for b in ("aime24", "math500") for k in ("mean@8", "pass@1"))]
    order = sorted({section(n) for n in logged})  # JavaScript's default sort, as the view is first built
    assert order[0] == names.COLLAPSE and order[-2:] == [names.TRAIN, names.TIME]
    assert all(s.startswith(names.EVAL + "/") for s in order[1:-2]), order
    charts = sorted(logged)
    assert all(sorts_alike(a, b) for group in (order, charts) for a, b in zip(group, group[1:]))
    first_screen = [n for n in logged if section(n) == names.COLLAPSE]
    assert len(first_screen) <= 9, "three rows of three charts: what the first screen holds"
    assert {names.SELECTION_ACCURACY, names.PSEUDO_REWARD, names.LABEL_ACCURACY, names.ENTROPY,
            names.ENTROPY_MOMENTUM, names.VOTE_SHARE, names.FILTERED_FRAC} <= set(first_screen)
    assert set(MONITORED) <= set(LOGGED), "the monitor reads logged names"
    assert not [n for n in logged if n.startswith("data/")], "step-0 data counts are dataset profiles, not charts"


def test_every_old_name_maps_to_a_current_one():
    assert names.current_name("val/accuracy") == names.SELECTION_ACCURACY
    assert names.current_name("val/aime24/mean_at_8") == names.benchmark_metric("aime24", "mean@8")
    assert names.current_name("val/vote_check/label_accuracy") == VOTE_CHECK[0]
    assert names.current_name("time/rollout") == names.phase_time("rollout")
    assert names.current_name("time/pad_ratio") == names.PAD_RATIO
    assert names.current_name("train/loss") == names.LOSS
    for name in [*LOGGED, *names.RENAMED.values(), names.phase_time("update")]:
        assert names.current_name(name) == name, "a current name is left as it is"
    assert set(names.RENAMED.values()) <= set(LOGGED)


def _store(tmp_path, label: str, old: bool) -> str:
    """The synthetic sweep (SRT collapsing at the high lr; one run without evaluation) with a vote
    check at the first and last evaluation, logged under the old names or the current ones."""
    uri = f"sqlite:///{tmp_path / label}.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / f"{label}-artifacts").as_uri())
    sweep = {"mgrpo.sweep_id": "lr", "mgrpo.swept_params": "algo,optim.lr,trainer.seed"}
    specs = [RunSpec(method=m, seed=s, steps=150, eval_every=10, peak_step=40,
                     collapse_to=0.1 if (m, lr) == ("srt", "3e-05") else None,
                     params={"optim.lr": lr}, tags=sweep, name=f"{m}-{lr}-s{s}")
             for lr in ("1e-05", "3e-05") for m in ("srt", "mgrpo") for s in (0, 1)]
    specs.append(RunSpec(method="srt", seed=0, steps=60, evaluate=False, name="no-eval"))
    rename = {**OLD_NAMES, **{n: "val/vote_check/" + n.rsplit("/", 1)[1] for n in VOTE_CHECK}} if old else {}
    for run_id in log_runs(client, exp, specs, rename=rename):
        points = [Metric(rename.get(n, n), value, 0, step)
                  for step in (0, 150) for n, value in zip(VOTE_CHECK, (0.4 + step / 1000, 0.45))]
        client.log_batch(run_id, metrics=points)
    return uri


def _outputs(uri: str, out) -> dict[str, object]:
    assert cli.main(["--tracking-uri", uri, "--experiment", "exp", "--out", str(out), "--no-cache", "--no-mlflow-report"]) == 0
    tables = {f.name: pd.read_csv(f).drop(columns="run_id", errors="ignore") for f in sorted(out.glob("*.csv")) if f.name != "runs.csv"}
    text = (out / "report.md").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("Tracking URI"))
    return {**tables, "report.md": re.sub(r"\b[0-9a-f]{32}\b|\(\b[0-9a-f]{8}\)", "<run>", text)}


def test_a_store_logged_under_the_old_names_is_analysed_as_a_new_one(tmp_path, capsys):
    old, new = _outputs(_store(tmp_path, "old", True), tmp_path / "old"), _outputs(_store(tmp_path, "new", False), tmp_path / "new")
    capsys.readouterr()
    assert set(old) == set(new) and {"verdicts.csv", "vote_check.csv", "label_free_runs.csv"} <= set(old)
    for name, table in new.items():
        if isinstance(table, pd.DataFrame):
            pd.testing.assert_frame_equal(old[name], table, obj=name)
        else:
            assert old[name] == table
    verdicts = new["verdicts.csv"]
    assert set(verdicts[verdicts["collapsed"]]["run_name"]) == {"srt-3e-05-s0", "srt-3e-05-s1"}
    assert len(new["vote_check.csv"]) == 9


def test_a_run_resumed_across_the_renaming_reads_as_one_curve(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_batch(run_id, metrics=[Metric("train/entropy", 1.0, 0, step) for step in (1, 2, 3)]
                     + [Metric("val/accuracy", 0.4, 0, 0), Metric(names.LOSS, 0.1, 0, 1)])
    client.log_batch(run_id, metrics=[Metric(names.ENTROPY, 2.0, 1, step) for step in (3, 4)])  # step 3 again, after the resume
    store = Store.open(uri)
    curves = store.curves(store.select(Selection(("exp",))).runs, None)
    assert list(curves["metric"].cat.categories) == sorted([names.ENTROPY, names.SELECTION_ACCURACY, names.LOSS])
    entropy = curves[curves["metric"] == names.ENTROPY]
    assert list(entropy["step"]) == [1, 2, 3, 4] and list(entropy["value"]) == [1.0, 1.0, 2.0, 2.0]
    assert list(curves["metric"]) == sorted(curves["metric"]), "sorted by metric within the run"


def test_a_checkpoint_of_the_old_names_resumes_the_monitor_under_the_current_ones():
    class Config:
        enabled, every, mode, stop_on_collapse, label_free_rule = True, 1, "labeled", False, None

    monitor = RunMonitor(Config(), None, 100)
    monitor.load_state_dict({"history": {"val/accuracy": [[0, 0.4], [10, 0.5]], "train/entropy": [[1, 0.9]]}})
    assert monitor.latest(names.SELECTION_ACCURACY) == 0.5 and monitor.history[names.ENTROPY] == [(1, 0.9)]
    assert set(monitor.history) == set(MONITORED)
