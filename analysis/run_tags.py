"""The verdict of `mgrpo-analyze`, written back to every training run it judged, so the MLflow UI
can list, sort and filter a sweep's runs by it (e.g. ``tags.`mgrpo.verdict` = 'collapsed'``).

Tags, all under `mgrpo.verdict` (the online monitor's own tags, `mgrpo.collapsed`,
`mgrpo.collapse_step`, `mgrpo.first_*` and `mgrpo.label_free_*`, say what it saw during training
and are left alone):

- `mgrpo.verdict`: collapsed | healthy | unjudged (the run has no held-out accuracy curve);
- `mgrpo.verdict.collapse_onset_step`: the labelled detectors' earliest detection, and
  `mgrpo.verdict.detectors` the ones that fired (collapsed runs only);
- `mgrpo.verdict.label_free_onset_step`: the label-free rule's onset at its first alarm (only
  when it alarmed);
- `mgrpo.verdict.best_step`, `mgrpo.verdict.final_step`: the best and the last evaluated step of
  the held-out accuracy;
- `mgrpo.verdict.label_free_checkpoint_step`: the checkpoint step the label-free rule keeps;
- `mgrpo.verdict.report_run`: the id of the report run these come from.

The run's description (`mlflow.note.content`) gets a short section that says the same and links
the report run; text above that section (a user's own note) is kept. A new analysis replaces the
section and every `mgrpo.verdict*` tag of the runs it judges (a tag that no longer applies, such
as the onset of a run now judged healthy, is deleted): no duplicates.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd

VERDICT_TAG = "mgrpo.verdict"
"""collapsed | healthy | unjudged; the other tags are `VERDICT_TAG + '.<name>'`."""
NOTE_TAG = "mlflow.note.content"
NOTE_HEADING = "#### Verdict of mgrpo-analyze"
"""Starts the description's section written here (a heading that ends in the link to the report
run, so the UI's preview of the description shows it); the section runs to the end."""


def _step(value) -> Optional[str]:
    return None if value is None or pd.isna(value) else str(int(value))


def verdict_tags(row: dict, label_free: Optional[dict], report_run_id: str) -> dict[str, str]:
    """The tags of one run, from its row of `Analysis.results` and of `Analysis.label_free`."""
    judged = not pd.isna(row.get("final"))
    verdict = ("collapsed" if row["collapsed"] else "healthy") if judged else "unjudged"
    lf = label_free or {}
    named = {
        "collapse_onset_step": _step(row.get("collapse_step")) if row["collapsed"] else None,
        "detectors": (row.get("detectors") or None) if row["collapsed"] else None,
        "label_free_onset_step": _step(lf.get("rule_onset")),
        "best_step": _step(row.get("peak_step")),
        "final_step": _step(row.get("final_step")),
        "label_free_checkpoint_step": _step(lf.get("lf_step")),
        "report_run": report_run_id,
    }
    return {VERDICT_TAG: verdict, **{f"{VERDICT_TAG}.{k}": v for k, v in named.items() if v is not None}}


def _accuracy(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.3f}"


def verdict_note(row: dict, tags: dict[str, str], report_link: str, report_name: str) -> str:
    """The description's section: a heading linking the report run, then the verdict in a few lines."""
    t = {k.removeprefix(VERDICT_TAG + "."): v for k, v in tags.items()}
    verdict = t[VERDICT_TAG]
    if verdict == "collapsed":
        head = f"**collapsed** at step {t.get('collapse_onset_step', '?')} ({t.get('detectors', '').replace(',', ', ')})"
    elif verdict == "healthy":
        head = "**healthy**: no collapse detector fired"
    else:
        head = "**unjudged**: no held-out accuracy curve"
    lines = [f"{NOTE_HEADING} ([{report_name}]({report_link}))", "", head + "."]
    if verdict != "unjudged":
        lines.append(
            f"Held-out accuracy: best {_accuracy(row.get('peak'))} at step {t.get('best_step', '?')}, "
            f"final {_accuracy(row.get('final'))} at step {t.get('final_step', '?')}."
        )
    if "label_free_checkpoint_step" in t:
        onset = t.get("label_free_onset_step")
        alarm = f"alarm with onset at step {onset}" if onset else "no alarm"
        lines.append(f"Label-free rule: {alarm}; the checkpoint it keeps: step {t['label_free_checkpoint_step']}.")
    return "\n".join(lines) + "\n"


def replace_section(note: Optional[str], section: str) -> str:
    """`note` with its verdict section (from `NOTE_HEADING` to the end) replaced by `section`."""
    kept = (note or "").split(NOTE_HEADING, 1)[0].rstrip()
    return f"{kept}\n\n{section}" if kept else section


def write_verdicts(client, analysis, report_run_id: str, report_link: str, report_name: str) -> int:
    """Tag every judged run of `analysis` (an `report.Analysis`) with its verdict and replace its
    description's verdict section; returns the number of runs written."""
    from mlflow.entities import RunTag

    lf = analysis.label_free.set_index("run_id").to_dict("index") if not analysis.label_free.empty else {}
    old_tags = analysis.runs.set_index("run_id")
    written = 0
    for row in analysis.results.to_dict("records"):
        run_id = row["run_id"]
        tags = verdict_tags(row, lf.get(run_id), report_run_id)
        previous = old_tags.loc[run_id] if run_id in old_tags.index else pd.Series(dtype=object)
        stale = [c.removeprefix("tags.") for c, v in previous.items()
                 if c.startswith(f"tags.{VERDICT_TAG}.") and isinstance(v, str) and c.removeprefix("tags.") not in tags]
        note = previous.get(f"tags.{NOTE_TAG}")
        section = verdict_note(row, tags, report_link, report_name)
        tags[NOTE_TAG] = replace_section(note if isinstance(note, str) else None, section)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for key in stale:
            client.delete_tag(run_id, key)
        written += 1
    return written
