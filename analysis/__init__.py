"""Collapse analysis over MLflow runs (installed as `mgrpo_analysis`).

- `detectors`: the four collapse detectors as pure functions, their `Thresholds`, `Verdict`.
- `monitor`: `check_history`, the same detectors on a trainer's in-memory history.
- `store`: runs and whole curves from a tracking URI as tidy frames, with a disk cache.
- `tables`, `plots`, `report`: best-vs-final and sweep tables, figures, the markdown report
  and its MLflow report run.
- `cli`: the `mgrpo-analyze` command.
- `synthetic`: runs that follow the run data contract, for tests and benchmarks.

Importing this package or `monitor` loads neither MLflow nor matplotlib, so the trainer can
call the detectors cheaply.
"""
