"""Runs and whole metric curves from an MLflow tracking store, as tidy frames, with a disk cache.

`Store.open(uri)` checks the URI first and fails fast with an error naming it. `Store.select`
returns one row per run (params, tags, status) for an experiment, sweep ids, tags and a filter
string. `Store.curves` returns the long frame `run_id, step, metric, value`, with the metrics of
runs logged before the names of `mgrpo.metric_names` under their current names (`current_name`),
so old and new runs are read alike.

Whole curves are the expensive part: MLflow's API needs one `get_metric_history` call per run
and key. For a SQLite store they are read instead with one SQL query per 500 runs straight from
MLflow's `metrics` table (read-only); any other store goes through the client API on a thread
pool. Either way each run's curves are cached as one parquet file whose name holds a
fingerprint of the run's status, end time and latest metrics, so a run that logs anything new
(or is resumed) gets a new fingerprint and is fetched again, and unchanged runs are read from
disk without touching MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from mgrpo.metric_names import current_name

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_CACHE_DIR = ".mgrpo_cache/analysis"
REPORT_TAG = "mgrpo.report"
SWEEP_TAG = "mgrpo.sweep_id"
SWEPT_TAG = "mgrpo.swept_params"
METHOD_PARAM = "algo.name"
SEED_PARAM = "trainer.seed"

_SQL_CHUNK = 500  # run ids per query, well under SQLite's limit on bound parameters
_PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class TrackingError(RuntimeError):
    """The tracking URI cannot be read; the message names the URI and the reason."""


class SelectionError(ValueError):
    """The selection itself is invalid (e.g. a filter string MLflow cannot parse)."""


@dataclass(frozen=True)
class Selection:
    """Which runs to analyse. Report runs (tag `mgrpo.report=1`) are always left out."""

    experiments: tuple[str, ...]
    """Experiment names; runs of all of them are pooled."""
    sweep_ids: tuple[str, ...] = ()
    """Values of tag `mgrpo.sweep_id`; empty means any run of the experiments."""
    filter_string: str = ""
    """An MLflow search filter, e.g. "params.algo.name = 'srt'"."""
    tags: tuple[tuple[str, str], ...] = ()
    """Exact tag values every run must have."""

    def describe(self) -> str:
        """A short human-readable label, for titles and run names."""
        parts = [", ".join(self.experiments)]
        if self.sweep_ids:
            parts.append("sweep " + ", ".join(self.sweep_ids))
        parts += [f"{k}={v}" for k, v in self.tags]
        if self.filter_string:
            parts.append(self.filter_string)
        return " | ".join(parts)


@dataclass
class RunSet:
    """Selected runs, one row each, and what went wrong while selecting them."""

    runs: pd.DataFrame
    """Columns: run_id, run_name, experiment, experiment_id, status, start_time, end_time,
    method (param algo.name), seed (param trainer.seed, numeric), sweep_id, then
    `params.<key>` and `tags.<key>` as `mlflow.search_runs` names them."""
    experiment_ids: dict[str, str] = field(default_factory=dict)
    """Name -> id of the experiments that exist."""
    messages: list[str] = field(default_factory=list)
    """Problems to show the reader: unknown experiments or sweep ids."""


@contextmanager
def _fail_fast_http() -> Iterator[None]:
    """No retries and a short timeout for MLflow's HTTP client, so a dead server fails in
    seconds rather than after minutes of backoff."""
    saved = {k: os.environ.get(k) for k in _PROBE_ENV}
    os.environ.update(_PROBE_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite://` URI (absolute), or None for other schemes."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        raise TrackingError(f"tracking URI {uri!r} names no database file")
    return Path(database).expanduser().resolve()


def _quote(value: str) -> str:
    return "'" + value + "'" if "'" not in value else '"' + value + '"'


def _millis(ms: Optional[int]) -> pd.Timestamp:
    return pd.to_datetime(ms, unit="ms", utc=True) if ms else pd.NaT


class Store:
    """A tracking store opened for reading (and for logging report runs)."""

    def __init__(self, uri: str, client, db_path: Optional[Path]):
        self.uri = uri
        self.client = client
        self.db_path = db_path
        """The SQLite file when the store is one; enables the direct SQL fast path."""
        self._metric_keys: dict[str, list[str]] = {}
        self._latest: dict[str, dict[str, float]] = {}

    @classmethod
    def open(cls, uri: str = DEFAULT_TRACKING_URI) -> "Store":
        """Connect and probe the store; raise TrackingError naming the URI if it is unusable.

        A SQLite or file URI must point at an existing store: analysis never creates one.
        """
        db_path = sqlite_path(uri)
        if db_path is not None and not db_path.is_file():
            raise TrackingError(f"tracking URI {uri!r}: no such database file {db_path}")
        if uri.startswith(("file:", ".", "/", "~")):
            local = Path(uri.removeprefix("file://")).expanduser()
            if not local.is_dir():
                raise TrackingError(f"tracking URI {uri!r}: no such directory {local.resolve()}")
        from mlflow import MlflowClient

        try:
            with _fail_fast_http():
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)
        except Exception as err:  # any failure of the probe means the URI is unusable
            root = err
            while root.__cause__ or root.__context__:  # the root cause reads best
                root = root.__cause__ or root.__context__
            reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
            raise TrackingError(f"cannot read tracking URI {uri!r}: {reason[:300]}") from err
        return cls(uri, client, db_path)

    # ---- runs -------------------------------------------------------------------------------

    def select(self, selection: Selection) -> RunSet:
        """Runs matching `selection`, one row each. Unknown experiments or sweep ids become
        messages, and the runs that do match are still returned."""
        messages: list[str] = []
        experiments: dict[str, str] = {}
        for name in selection.experiments:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                known = sorted(e.name for e in self.client.search_experiments(max_results=50))
                messages.append(
                    f"experiment {name!r} not found at {self.uri} "
                    f"(experiments there: {', '.join(known) or 'none'})"
                )
            else:
                experiments[name] = exp.experiment_id
        if not experiments:
            return RunSet(_runs_frame([], {}), experiments, messages)

        clauses = [c for c in [selection.filter_string.strip()] if c]
        clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in selection.tags]
        runs = []
        for sweep_id in selection.sweep_ids or (None,):
            sweep_clause = [f"tags.`{SWEEP_TAG}` = {_quote(sweep_id)}"] if sweep_id is not None else []
            found = self._search(list(experiments.values()), " and ".join(clauses + sweep_clause))
            found = [r for r in found if r.data.tags.get(REPORT_TAG) != "1"]
            if sweep_id is not None and not found:
                messages.append(self._unknown_sweep_message(sweep_id, experiments))
            runs += found
        names = {v: k for k, v in experiments.items()}
        for run in runs:
            self._metric_keys[run.info.run_id] = sorted(run.data.metrics)
            self._latest[run.info.run_id] = dict(run.data.metrics)
        return RunSet(_runs_frame(runs, names), experiments, messages)

    def _search(self, experiment_ids: list[str], filter_string: str) -> list:
        from mlflow.exceptions import MlflowException

        found, token = [], None
        while True:
            try:
                page = self.client.search_runs(
                    experiment_ids, filter_string, max_results=1000, page_token=token
                )
            except MlflowException as err:
                raise SelectionError(f"searching runs with filter {filter_string!r} failed: {err.message}") from err
            found += list(page)
            token = page.token
            if not token:
                return found

    def _unknown_sweep_message(self, sweep_id: str, experiments: dict[str, str]) -> str:
        sweeps = sorted({r.data.tags[SWEEP_TAG] for r in self._search(list(experiments.values()), "")
                         if SWEEP_TAG in r.data.tags})
        where = ", ".join(repr(e) for e in experiments)
        shown = ", ".join(sweeps[:20]) + (" ..." if len(sweeps) > 20 else "")
        return (f"sweep id {sweep_id!r} matched no runs in experiment {where} with this selection "
                f"(sweep ids there: {shown or 'none'})")

    # ---- curves -----------------------------------------------------------------------------

    def curves(self, runs: pd.DataFrame, cache_dir: Optional[Path | str] = DEFAULT_CACHE_DIR) -> pd.DataFrame:
        """Every metric curve of `runs` as a long frame `run_id, step, metric, value`
        (run_id and metric categorical), sorted by run (in the order of `runs`), metric, step.

        One value per (run, metric, step): the last one logged, as a resumed run may log a
        step twice, and for a run resumed across a renaming, the one under the current name.
        NaN values stay NaN. With `cache_dir=None` nothing is cached (the cache keeps the names
        as logged).
        """
        run_ids = list(runs["run_id"])
        if not run_ids:
            return _assemble([], {})
        prints = self._fingerprints(runs)
        folder = None if cache_dir is None else Path(cache_dir) / _uri_key(self.uri)
        parts: dict[str, pd.DataFrame] = {}
        for run_id in run_ids:
            cached = folder / f"{run_id}.{prints[run_id]}.parquet" if folder else None
            if cached is not None and cached.is_file():
                parts[run_id] = pd.read_parquet(cached)
        missing = [r for r in run_ids if r not in parts]
        if missing:
            fetched = self._fetch_sql(missing) if self.db_path else self._fetch_client(missing)
            for run_id in missing:
                parts[run_id] = fetched[run_id]
                if folder is not None:
                    _write_cache(folder, run_id, prints[run_id], fetched[run_id])
        return _current_names(_assemble(run_ids, parts))

    def _fingerprints(self, runs: pd.DataFrame) -> dict[str, str]:
        """Per run: a hash of status, end time and latest metrics. In a SQLite store the
        latest metrics come with their step and timestamp, so even a new step with unchanged
        values is seen; through the API, latest values stand in for them."""
        latest = self._latest_sql(list(runs["run_id"])) if self.db_path else {}
        prints = {}
        for row in runs[["run_id", "status", "end_time"]].itertuples(index=False):
            if row.run_id in latest:
                metrics = latest[row.run_id]
            else:
                if row.run_id not in self._latest:
                    self._remember(row.run_id)
                metrics = self._latest[row.run_id]
            payload = json.dumps([row.status, str(row.end_time), sorted(metrics.items())], default=str)
            prints[row.run_id] = hashlib.sha1(payload.encode()).hexdigest()[:16]
        return prints

    def _remember(self, run_id: str) -> None:
        metrics = self.client.get_run(run_id).data.metrics
        self._metric_keys[run_id] = sorted(metrics)
        self._latest[run_id] = dict(metrics)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path.as_uri() + "?mode=ro", uri=True)

    def _latest_sql(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple]]:
        """Run -> key -> (step, timestamp, value, is_nan) from MLflow's `latest_metrics`."""
        out: dict[str, dict[str, tuple]] = {r: {} for r in run_ids}
        with closing(self._connect()) as con:
            for chunk in _chunks(run_ids, _SQL_CHUNK):
                rows = con.execute(
                    "SELECT run_uuid, key, step, timestamp, value, is_nan FROM latest_metrics "
                    f"WHERE run_uuid IN ({','.join('?' * len(chunk))})", chunk,
                )
                for run_id, key, *rest in rows:
                    out[run_id][key] = tuple(rest)
        return out

    def _fetch_sql(self, run_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
        """Curves straight from MLflow's `metrics` table: one query per run and key over the
        (run_uuid, key, step) index, selecting only numbers (fetching a key and run id string
        per point would take twice as long)."""
        keys = self._latest_sql(run_ids)
        query = ("SELECT step, CASE WHEN is_nan THEN NULL ELSE value END FROM metrics "
                 "WHERE run_uuid = ? AND key = ? ORDER BY step, timestamp")
        out = {}
        with closing(self._connect()) as con:
            for run_id in run_ids:
                curves = {}
                for key in sorted(keys[run_id]):
                    points = np.array(con.execute(query, (run_id, key)).fetchall(), dtype="float64")
                    curves[key] = points.reshape(-1, 2)
                out[run_id] = _run_frame(curves)
        return out

    def _fetch_client(self, run_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
        """One `get_metric_history` call per run and key, on a thread pool (the calls wait on
        the server, not the CPU)."""
        jobs = []
        for run_id in run_ids:
            if run_id not in self._metric_keys:
                self._remember(run_id)
            jobs += [(run_id, key) for key in self._metric_keys[run_id]]

        def history(job: tuple[str, str]) -> np.ndarray:
            points = sorted(self.client.get_metric_history(*job), key=lambda m: (m.step, m.timestamp))
            return np.array([(m.step, m.value) for m in points], dtype="float64").reshape(-1, 2)

        with ThreadPoolExecutor(max_workers=8) as pool:
            histories = dict(zip(jobs, pool.map(history, jobs)))
        return {
            run_id: _run_frame({key: histories[(run_id, key)] for key in self._metric_keys[run_id]})
            for run_id in run_ids
        }


def _run_frame(curves: dict[str, np.ndarray]) -> pd.DataFrame:
    """One run's curves, from metric -> array of (step, value) rows sorted by step and then
    log time, as a frame step, metric (categorical), value with the last value of each step."""
    keys = sorted(curves)
    steps, values, codes = [], [], []
    for code, key in enumerate(keys):
        points = curves[key]
        step = points[:, 0].astype("int64")
        last = np.append(step[1:] != step[:-1], True) if step.size else np.zeros(0, bool)
        steps.append(step[last])
        values.append(points[last, 1])
        codes.append(np.full(int(last.sum()), code, dtype="int32"))
    return pd.DataFrame({
        "step": np.concatenate(steps) if steps else np.zeros(0, "int64"),
        "metric": pd.Categorical.from_codes(np.concatenate(codes) if codes else np.zeros(0, "int32"), keys),
        "value": np.concatenate(values) if values else np.zeros(0, "float64"),
    })


def _assemble(run_ids: list[str], parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The long frame from per-run frames, without materialising a string per point."""
    frames = [parts[r] for r in run_ids]
    lengths = [len(f) for f in frames]
    metric = (union_categoricals([f["metric"].astype("category") for f in frames], sort_categories=True)
              if frames else pd.Categorical([]))
    return pd.DataFrame({
        "run_id": pd.Categorical.from_codes(np.repeat(np.arange(len(run_ids)), lengths), run_ids),
        "step": np.concatenate([f["step"].to_numpy("int64") for f in frames]) if frames else np.zeros(0, "int64"),
        "metric": metric,
        "value": np.concatenate([f["value"].to_numpy("float64") for f in frames]) if frames else np.zeros(0),
    })


def _current_names(curves: pd.DataFrame) -> pd.DataFrame:
    """The long frame with every metric under `current_name`, sorted again by run, metric, step.
    Where a run has a step under both names, the point under the current name is kept."""
    logged = list(curves["metric"].cat.categories)
    names = [current_name(m) for m in logged]
    if names == logged:
        return curves
    categories = sorted(set(names))
    position = {name: i for i, name in enumerate(categories)}
    codes = curves["metric"].cat.codes.to_numpy()
    metric = np.array([position[n] for n in names], dtype="int32")[codes]
    current = np.array([n == m for n, m in zip(names, logged)])[codes]
    run = curves["run_id"].cat.codes.to_numpy()
    step = curves["step"].to_numpy()
    order = np.lexsort((current, step, metric, run))  # the last key sorts first
    run, step, metric = run[order], step[order], metric[order]
    last = np.append((run[1:] != run[:-1]) | (metric[1:] != metric[:-1]) | (step[1:] != step[:-1]), True)
    rows = order[last]
    return pd.DataFrame({
        "run_id": pd.Categorical.from_codes(run[last], curves["run_id"].cat.categories),
        "step": step[last],
        "metric": pd.Categorical.from_codes(metric[last], categories),
        "value": curves["value"].to_numpy()[rows],
    })


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _uri_key(uri: str) -> str:
    """Cache folder of one store: a hash of its URI, with a SQLite path made absolute."""
    path = sqlite_path(uri)
    return hashlib.sha1((str(path) if path else uri).encode()).hexdigest()[:12]


def _write_cache(folder: Path, run_id: str, fingerprint: str, curves: pd.DataFrame) -> None:
    """Replace the run's cache file atomically (write then rename), dropping stale versions."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{run_id}.*.parquet"):
        stale.unlink(missing_ok=True)
    target = folder / f"{run_id}.{fingerprint}.parquet"
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    curves.to_parquet(tmp, index=False)
    tmp.replace(target)


def _runs_frame(runs: list, experiment_names: dict[str, str]) -> pd.DataFrame:
    rows = []
    for run in runs:
        info, data = run.info, run.data
        rows.append({
            "run_id": info.run_id,
            "run_name": info.run_name,
            "experiment": experiment_names.get(info.experiment_id, info.experiment_id),
            "experiment_id": info.experiment_id,
            "status": info.status,
            "start_time": _millis(info.start_time),
            "end_time": _millis(info.end_time),
            "method": data.params.get(METHOD_PARAM, "unknown"),
            "seed": data.params.get(SEED_PARAM),
            "sweep_id": data.tags.get(SWEEP_TAG, ""),
            **{f"params.{k}": v for k, v in sorted(data.params.items())},
            **{f"tags.{k}": v for k, v in sorted(data.tags.items())},
        })
    base = ["run_id", "run_name", "experiment", "experiment_id", "status", "start_time",
            "end_time", "method", "seed", "sweep_id"]
    frame = pd.DataFrame(rows, columns=None if rows else base)
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce")
    frame = frame.drop_duplicates("run_id").reset_index(drop=True)
    extra = sorted(c for c in frame.columns if c not in base)
    params = [c for c in extra if c.startswith("params.")]
    tags = [c for c in extra if c.startswith("tags.")]
    return frame[base + params + tags]
