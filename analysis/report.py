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

from . import plots, tables
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
            cache_dir: Optional[Path | str] = None) -> Analysis:
    """Select runs, load their curves (through the cache), and judge every run."""
    runset = store.select(selection)
    curves = store.curves(runset.runs, cache_dir)
    return build(selection, store.uri, runset, curves, thresholds or Thresholds(), metric)


def build(selection: Selection, uri: str, runset: RunSet, curves: pd.DataFrame,
          thresholds: Thresholds, metric: str = ACCURACY) -> Analysis:
    """The analysis of already loaded frames (no MLflow access)."""
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
    return Analysis(selection, uri, metric, thresholds, runs, curves, res, swept,
                    dict(runset.experiment_ids), messages)


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
    if figures:
        captions = {
            "curves": "Pseudo-reward and held-out accuracy (Figures 1, 4, 5)",
            "entropy": "Policy entropy (Figure 2)",
        }
        body = "\n\n".join(f"![{captions[k]}]({p.name})" for k, p in figures.items())
        lines.append(_section("Figures", body))
    lines.append(_section(
        "Detector thresholds",
        "See `mgrpo_analysis.detectors.Thresholds` for what each means. A run's own "
        "`trainer.eval_size` / `data.heldout_size` param overrides `heldout_size`.\n\n"
        + tables.markdown(thresholds_table(a.thresholds)),
    ))
    return "\n".join(lines)


def write(analysis: Analysis, out_dir: Path | str) -> Path:
    """Write report.md, the figures and CSVs (runs, verdicts, best_vs_final, paired) to
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
    path = out / "report.md"
    path.write_text(render(analysis, figures))
    return path


def log_report_run(store: Store, analysis: Analysis, out_dir: Path | str) -> str:
    """Log the report folder as the artifacts of a new finished run in the first selected
    experiment, tagged `mgrpo.report=1`, with the report's text as the run description;
    return the run id."""
    experiment_id = next(iter(analysis.experiment_ids.values()))
    note = render(analysis, {}) + "\n_report.md, the figures and CSVs are in this run's artifacts._\n"
    client = store.client
    run = client.create_run(
        experiment_id,
        run_name=f"report: {analysis.selection.describe()}"[:250],
        tags={REPORT_TAG: "1", "mgrpo.report_selection": analysis.selection.describe()[:5000],
              "mlflow.note.content": note},
    )
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(out_dir))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
