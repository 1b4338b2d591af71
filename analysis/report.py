"""The collapse report: verdicts, tables and figures for a selection of runs, written as
markdown + PNG + CSV to a folder and logged to MLflow as the artifacts of a *report run*.

The report run lives in the (first) selected experiment, tagged `mgrpo.report=1` so analysis
selections skip it, and carries the tables as its description (`mlflow.note.content`), which the
MLflow UI renders on the run page; report.md and the figures are its artifacts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from mgrpo.metric_names import current_name

from . import label_free, label_free_eval, plots, tables, vote_check
from .detectors import ACCURACY, Thresholds, detect_runs, thresholds_table
from .store import REPORT_TAG, RunSet, Selection, Store


@dataclass
class Analysis:
    """Everything a report shows, as frames."""

    selection: Selection
    uri: str
    metric: str
    thresholds: Thresholds
    runs: pd.DataFrame
    """One row per run (see `RunSet.runs`)."""
    curves: pd.DataFrame
    """Long frame run_id, step, metric, value."""
    results: pd.DataFrame
    """One row per run: identity, config, verdict (see `tables.results`)."""
    swept: dict[str, list[str]]
    """Sweep id -> swept param keys (method and seed excluded)."""
    experiment_ids: dict[str, str] = field(default_factory=dict)
    """Name -> id of the selected experiments that exist."""
    messages: list[str] = field(default_factory=list)
    """Problems the reader should know about: unknown experiments or sweeps, missing curves."""
    label_free_thresholds: label_free.LabelFreeThresholds = field(default_factory=label_free.LabelFreeThresholds)
    label_free: pd.DataFrame = field(default_factory=pd.DataFrame)
    """One row per run: the label-free detectors' alarms and checkpoint choice beside the
    labelled truth (see `label_free_eval.evaluate_runs`); empty when not computed."""

    @property
    def label_free_detectors(self) -> pd.DataFrame:
        """Each label-free detector against the labelled verdict (see `label_free_eval.detector_table`)."""
        if self.label_free.empty:
            return pd.DataFrame()
        return label_free_eval.detector_table(self.label_free, self.label_free_thresholds.rule_names)

    @property
    def signal_shifts(self) -> pd.DataFrame:
        """How far each label-free signal moved, collapsed vs other runs (`label_free_eval.signal_shifts`)."""
        if self.label_free.empty:
            return pd.DataFrame()
        verdicts = self.results[["run_id", "collapsed"]]
        return label_free_eval.signal_shifts(self.runs, self.curves, verdicts, self.label_free_thresholds)

    @property
    def vote_check(self) -> pd.DataFrame:
        """Per run, the vote's pseudo-label vs the greedy answer (see `vote_check.vote_check_summary`)."""
        return vote_check.vote_check_summary(self.results, self.curves)

    @property
    def best_vs_final(self) -> pd.DataFrame:
        """Per config and method over seeds (see `tables.best_vs_final`)."""
        return tables.best_vs_final(self.results)

    @property
    def paired(self) -> pd.DataFrame:
        """Method differences on shared seeds (see `tables.paired_differences`)."""
        return tables.paired_differences(self.results)


def analyze(store: Store, selection: Selection, *, metric: str = ACCURACY,
            thresholds: Optional[Thresholds] = None,
            cache_dir: Optional[Path | str] = None,
            label_free_thresholds: Optional[label_free.LabelFreeThresholds] = None) -> Analysis:
    """Select runs, load their curves (through the cache), and judge every run."""
    runset = store.select(selection)
    curves = store.curves(runset.runs, cache_dir)
    return build(selection, store.uri, runset, curves, thresholds or Thresholds(), metric, label_free_thresholds)


def build(selection: Selection, uri: str, runset: RunSet, curves: pd.DataFrame,
          thresholds: Thresholds, metric: str = ACCURACY,
          label_free_thresholds: Optional[label_free.LabelFreeThresholds] = None) -> Analysis:
    """The analysis of already loaded frames (no MLflow access). `metric` may be a name of runs
    logged before `mgrpo.metric_names` (e.g. `val/accuracy`): it is read under its current name."""
    metric = current_name(metric)
    runs = runset.runs
    messages = list(runset.messages)
    if runs.empty and not messages:
        messages.append(f"no runs match the selection ({selection.describe()})")
    verdicts = detect_runs(runs, curves, thresholds, metric=metric)
    swept, swept_messages = tables.swept_params(runs)
    messages += swept_messages
    res = tables.results(runs, verdicts, swept)
    for row in res[res["notes"].fillna("") != ""].itertuples():
        messages.append(f"run {row.run_name} ({row.run_id[:8]}): {row.notes}")
    lf = label_free_thresholds or label_free.LabelFreeThresholds()
    lf_runs = label_free_eval.evaluate_runs(runs, curves, verdicts, lf, thresholds, metric) if not runs.empty else pd.DataFrame()
    return Analysis(selection, uri, metric, thresholds, runs, curves, res, swept,
                    dict(runset.experiment_ids), messages, lf, lf_runs)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}\n"


def render(analysis: Analysis, figures: dict[str, Path]) -> str:
    """The report as markdown; figures are linked by file name (relative to report.md)."""
    a = analysis
    res = a.results
    collapsed = int(res["collapsed"].sum()) if not res.empty else 0
    lines = [
        f"# Collapse report: {a.selection.describe()}",
        "",
        f"Tracking URI `{a.uri}` · {len(res)} runs · {collapsed} collapsed · metric `{a.metric}` · "
        f"generated {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "",
    ]
    if a.messages:
        lines.append(_section("Problems", "\n".join(f"- {m}" for m in a.messages)))
    if res.empty:
        return "\n".join(lines)
    lines.append(_section(
        "Verdicts",
        "A run collapsed when any detector fired; `step` is the earliest detection. Peak, final "
        "and drop are the raw held-out accuracy (best evaluation, last evaluation, difference).\n\n"
        + tables.markdown(tables.verdict_table(res)),
    ))
    lines.append(_section(
        "Best vs final (Table 2)",
        "Held-out accuracy over seeds, mean ± sample std; `collapsed` counts runs with any "
        "detection.\n\n" + tables.markdown(tables.best_vs_final_table(a.best_vs_final)),
    ))
    arms = tables.arm_table(tables.arm_summary(res, a.curves))
    if not arms.empty:
        lines.append(_section(
            "Arms side by side",
            "Each arm (config and method) over its seeds: held-out accuracy (peak, final; mean ± std) "
            "and, averaged over seeds, the mean of each training signal over the first and the last "
            "quarter of the run's steps: pseudo-reward (agreement with the vote), entropy of the "
            "policy's samples, and the fraction of the pooled samples the IQR filter removed.\n\n"
            + tables.markdown(arms),
        ))
    checked = a.vote_check
    if not checked.empty:
        lines.append(_section(
            "Could the vote teach? Pseudo-label vs greedy answer",
            "On the first `trainer.vote_check_size` selection-set problems, at the first and the last "
            "evaluation: how often the pseudo-label that the run's training pool, filter and vote "
            "produce is right, and how often the policy's greedy answer is. Label-free RL can only "
            "gain while the label beats the greedy answer (a positive difference); a labelled "
            "diagnostic, never read by training or selection.\n\n"
            + tables.markdown(vote_check.vote_check_table(checked)),
        ))
    for sweep_id, keys in a.swept.items():
        pivot = tables.sweep_pivot(res, sweep_id, keys)
        if keys and not pivot.empty:
            name = sweep_id or "runs without a sweep id"
            lines.append(_section(
                f"Sweep {name}: final accuracy by {', '.join(keys)} (Tables 1, 3)",
                tables.markdown(pivot),
            ))
    paired = a.paired
    if not paired.empty:
        lines.append(_section(
            "Paired differences across seeds",
            "Method a minus method b on the seeds both ran, mean ± std over seeds.\n\n"
            + tables.markdown(tables.paired_table(paired)),
        ))
    if not a.label_free.empty:
        lf = a.label_free_thresholds
        lines.append(_section(
            "Label-free early warning, measured against the labelled verdict",
            "Each label-free detector reads only per-step signals computed without gold answers "
            "(`mgrpo_analysis.label_free.LABEL_FREE_INPUTS`). Truth: the labelled verdict above and "
            "its collapse step. Each run is replayed at its monitor's checks (`monitor.every`); "
            "*lead* = first alarm step - labelled collapse step (negative: earlier), and against "
            "the step the labelled monitor itself would have fired. A run counts for a detector "
            "only when it logged the detector's inputs. The rule (`monitor.mode=label_free`) is "
            f"any of: {', '.join(lf.rule_names)}.\n\n"
            + tables.markdown(label_free_eval.detector_table_display(a.label_free_detectors)),
        ))
        lines.append(_section(
            "How far each label-free signal moved",
            "Smoothed last value minus the baseline (first 25 points), in noise units (the detectors "
            "fire beyond 3 and beyond an absolute floor); mean over the collapsed and the other runs, "
            "and the AUC of that shift for telling the collapsed runs apart (0.5: not at all).\n\n"
            + tables.markdown(label_free_eval.signal_shifts_display(a.signal_shifts)),
        ))
        lines.append(_section(
            "Checkpoint choice without labels",
            "The label-free choice is the last evaluated step at or before the rule's onset at its "
            "first alarm, or the final step when it never fired; the held-out accuracy is read "
            "only to score the choice. *Lost vs best* = labelled best - label-free choice.\n\n"
            + tables.markdown(label_free_eval.choice_summary(a.label_free, res)) + "\n\n"
            + tables.markdown(label_free_eval.checkpoint_table(a.label_free, res)),
        ))
    if figures:
        captions = {
            "curves": "Pseudo-reward and held-out accuracy (Figures 1, 4, 5)",
            "entropy": "Policy entropy (Figure 2)",
        }
        body = "\n\n".join(f"![{captions[k]}]({p.name})" for k, p in figures.items())
        lines.append(_section("Figures", body))
    if not a.label_free.empty:
        lines.append(_section(
            "Label-free thresholds",
            "See `mgrpo_analysis.label_free.LabelFreeThresholds`; override with `--threshold NAME=VALUE`.\n\n"
            + tables.markdown(label_free_eval.thresholds_frame(a.label_free_thresholds)),
        ))
    lines.append(_section(
        "Detector thresholds",
        "See `mgrpo_analysis.detectors.Thresholds` for what each means. A run's own "
        "`trainer.eval_size` / `data.heldout_size` param overrides `heldout_size`.\n\n"
        + tables.markdown(thresholds_table(a.thresholds)),
    ))
    return "\n".join(lines)


def write(analysis: Analysis, out_dir: Path | str) -> Path:
    """Write report.md, the figures and CSVs (runs, verdicts, best_vs_final, paired, vote_check) to
    `out_dir`; return the path of report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    figures: dict[str, Path] = {}
    res = analysis.results
    if not res.empty:
        title = analysis.selection.describe()
        made = {
            "curves": plots.plot_curves(res, analysis.curves, out / "curves.png",
                                        f"{title}: pseudo-reward and held-out accuracy",
                                        analysis.thresholds, analysis.metric),
            "entropy": plots.plot_entropy(res, analysis.curves, out / "entropy.png",
                                          f"{title}: policy entropy", analysis.thresholds),
        }
        figures = {k: p for k, p in made.items() if p is not None}
        res.to_csv(out / "verdicts.csv", index=False)
        analysis.runs.to_csv(out / "runs.csv", index=False)
        analysis.best_vs_final.to_csv(out / "best_vs_final.csv", index=False)
        analysis.paired.to_csv(out / "paired.csv", index=False)
        if not analysis.vote_check.empty:
            analysis.vote_check.to_csv(out / "vote_check.csv", index=False)
        if not analysis.label_free.empty:
            analysis.label_free.merge(res[["run_id", "run_name", "method", "seed"]], on="run_id", how="left").to_csv(
                out / "label_free_runs.csv", index=False)
            analysis.label_free_detectors.to_csv(out / "label_free_detectors.csv", index=False)
            analysis.signal_shifts.to_csv(out / "label_free_signal_shifts.csv", index=False)
    path = out / "report.md"
    path.write_text(render(analysis, figures))
    return path


REPORTS_SUFFIX = "-reports"
"""Report runs go to the experiment `<first selected experiment><REPORTS_SUFFIX>`, so they never
appear among the training runs or in their charts' legends."""


@dataclass(frozen=True)
class ReportRun:
    run_id: str
    experiment_id: str
    experiment_name: str
    run_name: str
    replaced: int
    """Earlier report runs of the same selection that this one replaced (deleted)."""


def log_report_run(store: Store, analysis: Analysis, out_dir: Path | str) -> ReportRun:
    """Log the report folder as the artifacts of a finished run in the experiment
    `<first selected experiment>-reports` (created beside it when missing), tagged
    `mgrpo.report=1` and `mgrpo.report_selection`, with the report's text as the run
    description. Earlier report runs of the same selection there are deleted once the new one
    is complete, so there is one per selection."""
    client = store.client
    source_name, source_id = next(iter(analysis.experiment_ids.items()))
    name = source_name + REPORTS_SUFFIX
    found = client.get_experiment_by_name(name)
    if found is None:
        location = client.get_experiment(source_id).artifact_location
        experiment_id = client.create_experiment(name, artifact_location=location, tags={REPORT_TAG: "1"})
    else:
        experiment_id = found.experiment_id
    selection = analysis.selection.describe()[:5000]
    note = render(analysis, {}) + "\n_report.md, the figures and CSVs are in this run's artifacts._\n"
    run_name = f"report: {analysis.selection.describe()}"[:250]
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={REPORT_TAG: "1", "mgrpo.report_selection": selection, "mlflow.note.content": note},
    )
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(out_dir))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    old = [r for r in client.search_runs([experiment_id], f"tags.`{REPORT_TAG}` = '1'", max_results=1000)
           if r.info.run_id != run_id and r.data.tags.get("mgrpo.report_selection") == selection]
    for r in old:
        client.delete_run(r.info.run_id)
    return ReportRun(run_id, experiment_id, name, run_name, len(old))
