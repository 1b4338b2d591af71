"""`mgrpo-analyze`: collapse verdicts, comparison tables and a report for MLflow runs.

    mgrpo-analyze --tracking-uri sqlite:///mlflow.db --experiment mgrpo --sweep-id lr-sweep \\
        --out reports/lr-sweep

prints the verdict table, the best-vs-final table, the label-free detectors measured against the
labelled verdict and the label-free checkpoint choice, writes report.md, PNGs and CSVs to --out,
and logs them as a report run (tag mgrpo.report=1) in the experiment `<experiment>-reports`,
replacing the earlier report of the same selection. Each judged run gets its verdict as tags
(`mgrpo.verdict` = collapsed | healthy | unjudged, and `mgrpo.verdict.*` steps: see
`mgrpo_analysis.run_tags`) and a description linking the report run, both replaced by the next
analysis. It ends with the links that open the runs' curves in the MLflow UI's chart view.

Exit status: 0 when a report was produced (problems such as an unknown sweep id among others,
or a run without accuracy, are listed in it and on stderr); 1 when nothing matched the selection
or the report run or the runs' verdicts could not be logged; 2 on bad arguments or an unreadable tracking URI.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .detectors import ACCURACY, Thresholds
from .label_free import LabelFreeThresholds
from .store import DEFAULT_CACHE_DIR, DEFAULT_TRACKING_URI, Selection, SelectionError, Store, TrackingError


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _thresholds(pairs: Sequence[tuple[str, str]]) -> tuple[Thresholds, LabelFreeThresholds]:
    """--threshold NAME=VALUE pairs applied to `Thresholds` and `LabelFreeThresholds`. A name
    both have (noise_z, train_smooth, ...) changes both; `label_free.NAME` changes only the
    label-free one (the labelled verdict, the truth it is measured against, stays put)."""
    th, lf = Thresholds(), LabelFreeThresholds()
    names = {f.name for f in fields(Thresholds)}
    lf_names = {f.name for f in fields(LabelFreeThresholds)}
    known = sorted(names | lf_names) + [f"label_free.{n}" for n in sorted(lf_names)]
    changes: dict[str, object] = {}
    lf_changes: dict[str, object] = {}
    for key, value in pairs:
        only_lf = key.startswith("label_free.")
        name = key.removeprefix("label_free.")
        if name not in (lf_names if only_lf else names | lf_names):
            raise ValueError(f"--threshold {key}: unknown; thresholds are {', '.join(known)}")
        kind = type(getattr(lf if only_lf or name not in names else th, name))
        try:
            converted = kind(value)
        except ValueError:
            raise ValueError(f"--threshold {key}={value!r}: expected a {kind.__name__}") from None
        if name in names and not only_lf:
            changes[name] = converted
        if name in lf_names:
            lf_changes[name] = converted
    return replace(th, **changes), replace(lf, **lf_changes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgrpo-analyze",
        description="Detect collapse in M-GRPO / SRT runs logged to MLflow and write a report.",
        epilog="Thresholds: see mgrpo_analysis.detectors.Thresholds and mgrpo_analysis.label_free."
               "LabelFreeThresholds; e.g. --threshold noise_z=4 --threshold rule=constant_answer,answer_drift.",
    )
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help=f"MLflow tracking URI (default: {DEFAULT_TRACKING_URI})")
    p.add_argument("--experiment", action="append", required=True, metavar="NAME",
                   help="experiment name; repeat to pool several")
    p.add_argument("--sweep-id", action="append", default=[], metavar="ID",
                   help="only runs with tag mgrpo.sweep_id=ID; repeat for several sweeps")
    p.add_argument("--filter", default="", metavar="EXPR",
                   help="MLflow search filter, e.g. \"params.algo.name = 'srt'\"")
    p.add_argument("--tag", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                   help="only runs with this tag value; repeatable")
    p.add_argument("--out", type=Path, help="report folder (default: reports/<experiment>)")
    p.add_argument("--metric", default=ACCURACY, help=f"held-out accuracy metric (default: {ACCURACY})")
    p.add_argument("--threshold", action="append", default=[], type=_key_value, metavar="NAME=VALUE",
                   help="override a detector threshold (label_free.NAME: the label-free one only); repeatable")
    p.add_argument("--no-mlflow-report", action="store_true",
                   help="leave the store as it is: no report run, no verdict tags on the runs")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help=f"curve cache folder (default: {DEFAULT_CACHE_DIR})")
    p.add_argument("--no-cache", action="store_true", help="read every curve from MLflow")
    return p


def _print_table(title: str, df: pd.DataFrame) -> None:
    print(f"\n{title}")
    if df.empty:
        print("  (none)")
        return
    with pd.option_context("display.width", 250, "display.max_colwidth", 70, "display.max_rows", None):
        text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        width = {c: int(df[c].astype(str).str.len().max()) for c in text}
        left = {c: (lambda w: lambda v: f"{v!s:<{w}}")(w) for c, w in width.items()}
        print(df.to_string(index=False, justify="left", formatters=left))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    from . import label_free_eval, links, report, run_tags, tables  # after argument parsing, so --help stays fast

    try:
        thresholds, lf_thresholds = _thresholds(args.threshold)
    except ValueError as err:
        parser().error(str(err))
    selection = Selection(
        experiments=tuple(args.experiment), sweep_ids=tuple(args.sweep_id),
        filter_string=args.filter, tags=tuple(args.tag),
    )
    out = args.out or Path("reports") / "".join(c if c.isalnum() or c in "-_." else "_" for c in args.experiment[0])
    try:
        store = Store.open(args.tracking_uri)
        analysis = report.analyze(
            store, selection, metric=args.metric, thresholds=thresholds,
            cache_dir=None if args.no_cache else args.cache_dir, label_free_thresholds=lf_thresholds,
        )
    except (TrackingError, SelectionError) as err:
        print(f"mgrpo-analyze: error: {err}", file=sys.stderr)
        return 2
    for message in analysis.messages:
        print(f"mgrpo-analyze: warning: {message}", file=sys.stderr)

    res = analysis.results
    _print_table(f"Verdicts ({len(res)} runs, {int(res['collapsed'].sum())} collapsed)", tables.verdict_table(res))
    _print_table("Best vs final", tables.best_vs_final_table(analysis.best_vs_final))
    if not analysis.label_free.empty:
        _print_table(f"Label-free detectors vs the labelled verdict (rule: {', '.join(lf_thresholds.rule_names)})",
                     label_free_eval.detector_table_display(analysis.label_free_detectors))
        _print_table("How far each label-free signal moved (noise units; AUC collapsed vs other)",
                     label_free_eval.signal_shifts_display(analysis.signal_shifts))
        _print_table("Checkpoint choice without labels", label_free_eval.choice_summary(analysis.label_free, res))
    path = report.write(analysis, out)
    print(f"\nreport: {path}")
    if res.empty:
        return 1
    for name, experiment_id in analysis.experiment_ids.items():
        print(f"curves of {name!r} (chart view): {links.where_to_look(store.uri, experiment_id)}")
    if not args.no_mlflow_report:
        try:
            logged = report.log_report_run(store, analysis, out)
        except Exception as err:  # the local report stands; say why MLflow has no copy
            print(f"mgrpo-analyze: error: could not log the report run to {store.uri}: {err}", file=sys.stderr)
            return 1
        replaced = f", replacing {logged.replaced} earlier report(s) of this selection" if logged.replaced else ""
        report_link = links.run_url(store.uri, logged.experiment_id, logged.run_id)
        print(f"report run: {logged.run_id} in experiment {logged.experiment_name!r}{replaced}: {report_link}")
        try:
            tagged = run_tags.write_verdicts(store.client, analysis, logged.run_id, report_link, logged.run_name)
        except Exception as err:  # the report run stands; say why the runs lack their verdicts
            print(f"mgrpo-analyze: error: could not write the verdicts to the runs at {store.uri}: {err}", file=sys.stderr)
            return 1
        print(f"verdicts on {tagged} runs; list the collapsed ones in the MLflow UI with the search "
              f"tags.`{run_tags.VERDICT_TAG}` = 'collapsed'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
