"""The loader, the curve cache, the tables and the report, against real SQLite MLflow stores."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mgrpo import metric_names as names
from mgrpo_analysis import cli
from mgrpo_analysis.store import Selection, Store, TrackingError, _assemble
from mgrpo_analysis.synthetic import RunSpec, log_runs

SWEEP_TAGS = {"mgrpo.sweep_id": "lr", "mgrpo.swept_params": "algo,optim.lr,trainer.seed"}


def specs():
    """2 methods x 2 learning rates x 2 seeds in sweep 'lr' (SRT collapses at the high lr),
    plus one run of another sweep that never evaluated."""
    out = [
        RunSpec(method=m, seed=s, steps=150, eval_every=10, peak_step=40,
                collapse_to=0.1 if (m, lr) == ("srt", "3e-05") else None,
                params={"optim.lr": lr}, tags=SWEEP_TAGS, name=f"{m}-{lr}-s{s}")
        for lr in ("1e-05", "3e-05") for m in ("srt", "mgrpo") for s in (0, 1)
    ]
    out.append(RunSpec(method="srt", seed=0, steps=60, evaluate=False, tags={"mgrpo.sweep_id": "noeval"},
                       name="no-eval"))
    return out


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A SQLite store with experiment 'exp' filled from `specs`; returns (uri, client)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=(root / "artifacts").as_uri())
    log_runs(client, exp, specs())
    return uri, client


def test_select_builds_one_row_per_run_with_params_tags_and_status(tracking):
    uri, _ = tracking
    store = Store.open(uri)
    runset = store.select(Selection(("exp",), sweep_ids=("lr",)))
    runs = runset.runs
    assert len(runs) == 8 and not runset.messages
    assert set(runs["method"]) == {"srt", "mgrpo"} and set(runs["seed"]) == {0, 1}
    assert (runs["status"] == "FINISHED").all() and (runs["sweep_id"] == "lr").all()
    assert {"params.optim.lr", "params.algo.name", "tags.mgrpo.swept_params"} <= set(runs.columns)
    srt = store.select(Selection(("exp",), filter_string="params.algo.name = 'srt'")).runs
    assert set(srt["method"]) == {"srt"} and len(srt) == 5
    tagged = store.select(Selection(("exp",), tags=(("mgrpo.sweep_id", "noeval"),))).runs
    assert list(tagged["run_name"]) == ["no-eval"]


def test_sql_fast_path_matches_the_client_api(tracking):
    uri, client = tracking
    run_id = Store.open(uri).select(Selection(("exp",), sweep_ids=("lr",))).runs["run_id"].iloc[0]
    # a resumed run re-logs step 5 later: the newest value wins; NaN stays NaN
    client.log_batch(run_id, metrics=[Metric(names.KL, 123.0, 10**13, 5),
                                      Metric("train/odd", float("nan"), 10**13, 1)])
    store = Store.open(uri)
    runs = store.select(Selection(("exp",), sweep_ids=("lr",))).runs.head(2)
    sql = store._fetch_sql(list(runs["run_id"]))
    api = store._fetch_client(list(runs["run_id"]))
    assert list(sql) == list(api) == list(runs["run_id"])
    for frame_sql, frame_api in zip(sql.values(), api.values()):
        pd.testing.assert_frame_equal(frame_sql, frame_api)
    curves = _assemble(list(runs["run_id"]), sql)
    assert list(curves.columns) == ["run_id", "step", "metric", "value"]
    assert len(curves) == 2 * (10 * 150 + 16) + 1
    kl = curves[(curves["run_id"] == run_id) & (curves["metric"] == names.KL) & (curves["step"] == 5)]
    assert list(kl["value"]) == [123.0]
    assert curves[curves["metric"] == "train/odd"]["value"].isna().all()


def test_curves_are_cached_and_new_data_invalidates_only_that_run(tracking, tmp_path, monkeypatch):
    uri, client = tracking
    store = Store.open(uri)
    runs = store.select(Selection(("exp",), sweep_ids=("lr",))).runs
    fetched = []
    real = Store._fetch_sql

    def counting(self, run_ids):
        fetched.append(list(run_ids))
        return real(self, run_ids)

    monkeypatch.setattr(Store, "_fetch_sql", counting)
    first = store.curves(runs, tmp_path)
    assert fetched == [list(runs["run_id"])]
    assert list(first.columns) == ["run_id", "step", "metric", "value"]

    t0 = time.perf_counter()
    second = Store.open(uri).curves(runs, tmp_path)
    warm = time.perf_counter() - t0
    assert len(fetched) == 1, "a warm cache must not read curves from MLflow"
    pd.testing.assert_frame_equal(first, second)
    assert warm < 5

    changed = runs["run_id"].iloc[3]
    client.log_batch(changed, metrics=[Metric(names.SELECTION_ACCURACY, 0.5, 10**13, 151)])
    reopened = Store.open(uri)
    third = reopened.curves(reopened.select(Selection(("exp",), sweep_ids=("lr",))).runs, tmp_path)
    assert fetched[1:] == [[changed]]
    assert 151 in set(third[(third["run_id"] == changed) & (third["metric"] == names.SELECTION_ACCURACY)]["step"])
    assert len(list(tmp_path.rglob(f"{changed}.*.parquet"))) == 1


def test_report_end_to_end(tracking, tmp_path, capsys):
    uri, client = tracking
    out = tmp_path / "report"
    code = cli.main(["--tracking-uri", uri, "--experiment", "exp", "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Verdicts (9 runs" in printed.out and "Best vs final" in printed.out
    assert "no-eval" in printed.err and f"no {names.SELECTION_ACCURACY} curve" in printed.err

    for name in ("report.md", "curves.png", "entropy.png", "verdicts.csv", "best_vs_final.csv", "paired.csv"):
        assert (out / name).is_file(), name
    for png in ("curves.png", "entropy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 20_000
    text = (out / "report.md").read_text()
    for heading in ("## Problems", "## Verdicts", "## Best vs final", "## Sweep lr", "## Paired differences",
                    "![Policy entropy"):
        assert heading in text

    verdicts = pd.read_csv(out / "verdicts.csv")
    collapsed = verdicts[verdicts["collapsed"]]
    assert set(zip(collapsed["method"], collapsed["optim.lr"])) == {("srt", 3e-05)}
    assert sorted(set(verdicts["config"].dropna())) == ["lr: optim.lr=1e-05", "lr: optim.lr=3e-05", "noeval"]
    paired = pd.read_csv(out / "paired.csv")
    high = paired[paired["config"] == "lr: optim.lr=3e-05"].iloc[0]
    assert (high["a"], high["b"], high["n"], high["a_higher"]) == ("mgrpo", "srt", 2, 2)

    training = client.get_experiment_by_name("exp").experiment_id
    assert not client.search_runs([training], "tags.`mgrpo.report` = '1'"), "reports must not pile up among training runs"
    assert f"#/experiments/{training}/runs?compareRunsMode=CHART" in printed.out
    for heading in ("## Label-free early warning", "## Checkpoint choice without labels", "## Label-free thresholds"):
        assert heading in text
    assert {"label_free_runs.csv", "label_free_detectors.csv"} <= {p.name for p in out.iterdir()}
    reports_exp = client.get_experiment_by_name("exp-reports").experiment_id
    reports = client.search_runs([reports_exp], "tags.`mgrpo.report` = '1'")
    assert len(reports) == 1
    report_run = reports[0]
    assert report_run.info.status == "FINISHED"
    assert "# Collapse report" in report_run.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(report_run.info.run_id)}
    assert {"report.md", "curves.png", "entropy.png"} <= artifacts
    again = Store.open(uri).select(Selection(("exp",)))
    assert report_run.info.run_id not in set(again.runs["run_id"])

    # the same selection again replaces its report run; another selection gets its own
    assert cli.main(["--tracking-uri", uri, "--experiment", "exp", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "replacing 1 earlier report" in capsys.readouterr().out
    assert cli.main(["--tracking-uri", uri, "--experiment", "exp", "--sweep-id", "lr", "--out", str(tmp_path / "lr"),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    selections = sorted(r.data.tags["mgrpo.report_selection"] for r in client.search_runs([reports_exp]))
    assert len(selections) == 2 and report_run.info.run_id not in {r.info.run_id for r in client.search_runs([reports_exp])}


def test_unknown_experiment_and_sweep_ids_are_reported(tracking, tmp_path, capsys):
    uri, _ = tracking
    code = cli.main(["--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "a"),
                     "--no-mlflow-report", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 1 and "experiment 'nope' not found" in err and "exp" in err
    assert "not found" in (tmp_path / "a" / "report.md").read_text()

    code = cli.main(["--tracking-uri", uri, "--experiment", "exp", "--sweep-id", "lr", "--sweep-id", "typo",
                     "--out", str(tmp_path / "b"), "--no-mlflow-report", "--cache-dir", str(tmp_path / "c")])
    printed = capsys.readouterr()
    assert code == 0
    assert "sweep id 'typo' matched no runs" in printed.err and "lr" in printed.err
    assert "Verdicts (8 runs" in printed.out and (tmp_path / "b" / "curves.png").is_file()


def test_bad_filter_and_missing_store_are_errors(tracking, tmp_path, capsys):
    uri, _ = tracking
    assert cli.main(["--tracking-uri", uri, "--experiment", "exp", "--filter", "params.x ==== 1",
                     "--out", str(tmp_path), "--no-mlflow-report"]) == 2
    assert "filter" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(TrackingError, match="absent.db"):
        Store.open(missing)
    assert not (tmp_path / "absent.db").exists()


def test_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path):
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mgrpo_analysis.cli", "--tracking-uri", "http://127.0.0.1:9",
         "--experiment", "exp", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "http://127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr
    assert time.perf_counter() - t0 < 20
    assert not Path(tmp_path, "report.md").exists()


def test_verdicts_are_written_to_the_runs_and_replaced_on_reanalysis(tmp_path, capsys):
    """After `mgrpo-analyze`, the UI search tags.`mgrpo.verdict` = 'collapsed' lists exactly the
    collapsed runs; each run's description links the report run. Analysing again replaces the
    tags (a stale one goes) and the description's section, and keeps a user's own note."""
    from mgrpo_analysis.run_tags import NOTE_HEADING

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    chosen = [s for s in specs() if s.seed == 0 and s.name != "srt-1e-05-s0"]  # 2 healthy, 1 collapsing, 1 without evaluation
    ids = dict(zip([s.name for s in chosen], log_runs(client, exp, chosen)))
    client.set_tag(ids["mgrpo-1e-05-s0"], "mlflow.note.content", "My note: the baseline.")
    client.set_tag(ids["mgrpo-1e-05-s0"], "mgrpo.verdict.collapse_onset_step", "7")  # as if an earlier analysis said so
    command = ["--tracking-uri", uri, "--experiment", "exp", "--out", str(tmp_path / "report"), "--no-cache"]

    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    assert "verdicts on 4 runs" in printed and "tags.`mgrpo.verdict` = 'collapsed'" in printed
    (report,) = client.search_runs([client.get_experiment_by_name("exp-reports").experiment_id])
    verdicts = pd.read_csv(tmp_path / "report" / "verdicts.csv")
    expected = set(verdicts[verdicts["collapsed"]]["run_id"])
    assert expected == {ids["srt-3e-05-s0"]}
    found = {r.info.run_id for r in client.search_runs([exp], "tags.`mgrpo.verdict` = 'collapsed'")}
    assert found == expected
    tags = {name: client.get_run(run_id).data.tags for name, run_id in ids.items()}
    collapsed, healthy, unjudged = tags["srt-3e-05-s0"], tags["mgrpo-1e-05-s0"], tags["no-eval"]
    row = verdicts.set_index("run_id").loc[ids["srt-3e-05-s0"]]
    assert collapsed["mgrpo.verdict.collapse_onset_step"] == str(int(row["collapse_step"]))
    assert collapsed["mgrpo.verdict.best_step"] == str(int(row["peak_step"])) and collapsed["mgrpo.verdict.final_step"] == "150"
    assert collapsed["mgrpo.verdict.detectors"] == row["detectors"]
    assert collapsed["mgrpo.verdict.label_free_checkpoint_step"].isdigit()
    assert "mgrpo.verdict.label_free_onset_step" in collapsed  # the synthetic collapse moves the label-free signals
    assert healthy["mgrpo.verdict"] == "healthy" and "mgrpo.verdict.collapse_onset_step" not in healthy
    assert unjudged["mgrpo.verdict"] == "unjudged" and "mgrpo.verdict.best_step" not in unjudged
    assert all(t["mgrpo.verdict.report_run"] == report.info.run_id for t in tags.values())
    note = healthy["mlflow.note.content"]
    assert note.startswith("My note: the baseline.") and f"#/experiments/{report.info.experiment_id}/runs/{report.info.run_id}" in note
    assert "**collapsed** at step" in collapsed["mlflow.note.content"] and "**healthy**" in note

    assert cli.main(command) == 0
    capsys.readouterr()
    (second,) = client.search_runs([client.get_experiment_by_name("exp-reports").experiment_id])
    assert second.info.run_id != report.info.run_id
    again = {name: client.get_run(run_id).data.tags for name, run_id in ids.items()}
    assert {r.info.run_id for r in client.search_runs([exp], "tags.`mgrpo.verdict` = 'collapsed'")} == expected
    for t in again.values():
        assert t["mgrpo.verdict.report_run"] == second.info.run_id
        assert t["mlflow.note.content"].count(NOTE_HEADING) == 1 and second.info.run_id in t["mlflow.note.content"]
    assert again["mgrpo-1e-05-s0"]["mlflow.note.content"].startswith("My note: the baseline.")
    assert {k: v for k, v in again["srt-3e-05-s0"].items() if k != "mlflow.note.content" and "report_run" not in k} == \
        {k: v for k, v in collapsed.items() if k != "mlflow.note.content" and "report_run" not in k}

    assert cli.main([*command, "--no-mlflow-report"]) == 0  # leaves the store as it is
    assert client.get_run(ids["srt-3e-05-s0"]).data.tags["mgrpo.verdict.report_run"] == second.info.run_id
