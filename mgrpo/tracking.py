"""MLflow tracking that never kills training and never loses or duplicates a point.

- One MLflow run per job. Its id is stored in the checkpoint, so a resumed job continues the same
  run. On resume, the (metric, step) pairs already in the store are read once and skipped when
  the replayed steps log them again: every step appears exactly once.
- Every write goes through a buffer. When the store is unreachable (at start or mid-run) the
  trainer keeps going: points stay in the buffer, a warning is printed once per outage, and the
  buffer is retried at most every `retry_seconds`. Whatever is still buffered is saved in each
  checkpoint and flushed by the next start in that output directory.
- Metric and param names are sanitised to MLflow's allowed characters.
- Dataset inputs (`log_inputs`, records of `mgrpo.run_datasets`) are sent once per run: a record
  the run already has (same name, digest and context) is skipped, so a resumed run adds none.
- With `system_metrics`, MLflow's own monitor (`SystemMetricsMonitor`, a thread) logs `system/*`
  into the run from the moment the run exists; a resumed run's samples continue its count. The
  monitor stops when the store is unreachable and is started again once it is reachable.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

_BATCH_LIMIT = 1000
_PARAM_VALUE_LIMIT = 6000
_UNSAFE = re.compile(r"[^\w\-. /:]")


def sanitize_key(key: str) -> str:
    """MLflow accepts letters, digits, '_', '-', '.', ' ', '/' and ':'; other characters become '_'."""
    return _UNSAFE.sub("_", key)


def resolve_tracking_uri(uri: str, base_dir: Path) -> str:
    """Make a relative `sqlite:///` or file path absolute against `base_dir`, so every job of a
    sweep (each in its own directory) writes to the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((base_dir / uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:
        return str((base_dir / uri).resolve())
    return uri


def artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment's artifacts go: beside a SQLite store (`<db dir>/mlartifacts`),
    rather than MLflow's default `./mlruns` under whatever directory the job happened to start in.
    None (the server's choice) for other stores."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(client, uri: str, name: str) -> str:
    """The id of experiment `name`, created (with `artifact_location(uri)`) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(uri))


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists -> {"a.b.c": "value"}; values are strings cut to MLflow's limit."""
    items: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            items.update(flatten(value, f"{prefix}{key}."))
    else:
        items[prefix[:-1]] = str(tree)[:_PARAM_VALUE_LIMIT]
    return items


def _input_key(record: dict[str, str]) -> tuple[str, str, str]:
    return record["name"], record["digest"], record["context"]


def _unique_inputs(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """The records without repeats (same name, digest and context), first kept."""
    unique: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in records:
        unique.setdefault(_input_key(r), r)
    return list(unique.values())


@dataclass
class _Pending:
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    inputs: list[dict[str, str]] = field(default_factory=list)


class Tracker:
    """Buffered MLflow client for one run."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: Optional[str],
        retry_seconds: float = 30.0,
        enabled: bool = True,
        run_id_file: Optional[Path] = None,
        system_metrics: bool = False,
        on_gpus: bool = False,
    ) -> None:
        """`system_metrics`: log MLflow's system metrics (`tracking.system_metrics`); `on_gpus`: the
        run trains on GPUs, so a missing GPU library is worth a warning."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.retry_seconds = retry_seconds
        self.enabled = enabled
        self.run_id: Optional[str] = None
        self.pending = _Pending()
        self._logged: set[tuple[str, int]] = set()
        self._down_since: Optional[float] = None
        self._last_attempt = 0.0
        self._client = None
        self._run_checked = False
        self._status: Optional[str] = None
        self.run_id_file = run_id_file
        self.system_metrics = system_metrics and enabled
        self.on_gpus = on_gpus
        self._monitor = None
        if run_id_file is not None and run_id_file.exists():
            self.run_id = run_id_file.read_text().strip() or None

    # ---- state carried in checkpoints -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pending_metrics": self.pending.metrics,
            "pending_params": self.pending.params,
            "pending_tags": self.pending.tags,
            "pending_artifacts": self.pending.artifacts,
            "pending_inputs": self.pending.inputs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id
        self.pending.metrics = [tuple(m) for m in state.get("pending_metrics", [])] + self.pending.metrics
        self.pending.params = {**state.get("pending_params", {}), **self.pending.params}
        self.pending.tags = {**state.get("pending_tags", {}), **self.pending.tags}
        self.pending.artifacts = [tuple(a) for a in state.get("pending_artifacts", [])] + self.pending.artifacts
        self.pending.inputs = _unique_inputs(state.get("pending_inputs", []) + self.pending.inputs)
        self._run_checked = False

    # ---- public API ------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self.pending.params.update({sanitize_key(k): str(v)[:_PARAM_VALUE_LIMIT] for k, v in params.items()})
        self.flush()

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.pending.tags.update({sanitize_key(k): str(v) for k, v in tags.items() if v is not None})
        self.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            name = sanitize_key(key)
            if (name, step) in self._logged:
                continue
            self.pending.metrics.append((name, float(value), now, step))
        self.flush()

    def log_artifact(self, local_path: str | Path, artifact_path: str = "") -> None:
        self.pending.artifacts.append((str(local_path), artifact_path))
        self.flush()

    def log_inputs(self, datasets: list[dict[str, str]]) -> None:
        """Dataset inputs (records of `mgrpo.run_datasets`); those the run already has are skipped."""
        self.pending.inputs = _unique_inputs(self.pending.inputs + list(datasets))
        self.flush()

    def finish(self, status: str = "FINISHED", wait_seconds: float = 0.0) -> bool:
        """Flush (retrying up to `wait_seconds`) and close the run. True when nothing is pending."""
        self._status = status
        deadline = time.monotonic() + wait_seconds
        while True:
            self._last_attempt = 0.0
            if self.flush() and self._terminate():
                return True
            if time.monotonic() >= deadline:
                log.warning(
                    "MLflow store %s unreachable: %d metric points are kept in the checkpoint and "
                    "will be sent when this command is run again in the same output directory.",
                    self.uri,
                    len(self.pending.metrics),
                )
                return False
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    @property
    def pending_count(self) -> int:
        """Records (metric points, params, tags, artifacts, dataset inputs) not yet in the store."""
        p = self.pending
        return len(p.metrics) + len(p.params) + len(p.tags) + len(p.artifacts) + len(p.inputs)

    @property
    def url_hint(self) -> str:
        if self.uri.startswith("sqlite:///"):
            return f"mlflow ui --backend-store-uri {self.uri}"
        return f"open {self.uri}"

    # ---- internals -------------------------------------------------------------------------
    def flush(self) -> bool:
        """Send everything buffered; False (and keep it) when the store is unreachable."""
        if not self.enabled:
            self.pending = _Pending()
            return True
        if self._down_since is not None and time.monotonic() - self._last_attempt < self.retry_seconds:
            return False
        self._last_attempt = time.monotonic()
        try:
            self._ensure_run()
            self._send()
            self._watch_system()
        except Exception as err:  # any failure of the store: keep the data, keep training
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("MLflow store %s unreachable (%s); buffering and retrying every %.0fs", self.uri, str(err).splitlines()[0][:200], self.retry_seconds)
            return False
        if self._down_since is not None:
            log.warning("MLflow store %s reachable again; buffered data sent", self.uri)
            self._down_since = None
            self._stop_system()  # its thread ended when the store went away
            self._watch_system()
        return True

    def _ensure_run(self) -> None:
        from mlflow import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        client = self._client
        if self.run_id is None:
            experiment_id = get_or_create_experiment(client, self.uri, self.experiment)
            run = client.create_run(experiment_id, run_name=self.run_name)
            self.run_id = run.info.run_id
            self._run_checked = True
            if self.run_id_file is not None:
                # Recorded at once, so a job killed before its first checkpoint keeps its run.
                tmp = self.run_id_file.with_suffix(".tmp")
                tmp.write_text(self.run_id)
                os.replace(tmp, self.run_id_file)
        elif not self._run_checked:
            run = client.get_run(self.run_id)
            for key in run.data.metrics:
                for point in client.get_metric_history(self.run_id, key):
                    self._logged.add((key, point.step))
            if run.info.status != "RUNNING":
                client.update_run(self.run_id, status="RUNNING")
            self._run_checked = True
            self.pending.metrics = [m for m in self.pending.metrics if (m[0], m[3]) not in self._logged]

    def _send(self) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client, run_id = self._client, self.run_id
        if self.pending.params:
            existing = client.get_run(run_id).data.params
            new = {k: v for k, v in self.pending.params.items() if k not in existing}
            items = list(new.items())
            for start in range(0, len(items), 100):
                client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
            self.pending.params = {}
        if self.pending.tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.pending.tags.items()])
            self.pending.tags = {}
        while self.pending.metrics:
            chunk = self.pending.metrics[:_BATCH_LIMIT]
            client.log_batch(run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in chunk])
            self._logged.update((k, s) for k, _, _, s in chunk)
            del self.pending.metrics[:_BATCH_LIMIT]
        if self.pending.inputs:
            self._send_inputs()
        while self.pending.artifacts:
            path, artifact_path = self.pending.artifacts[0]
            if Path(path).exists():
                client.log_artifact(run_id, path, artifact_path or None)
            self.pending.artifacts.pop(0)

    def _send_inputs(self) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        run = self._client.get_run(self.run_id)
        have = {
            (d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}.get(MLFLOW_DATASET_CONTEXT))
            for d in (run.inputs.dataset_inputs if run.inputs else [])
        }
        new = [
            DatasetInput(
                Dataset(r["name"], r["digest"], r["source_type"], r["source"], profile=r.get("profile")),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, r["context"])],
            )
            for r in self.pending.inputs
            if _input_key(r) not in have
        ]
        if new:
            self._client.log_inputs(self.run_id, datasets=new)
        self.pending.inputs = []

    def _watch_system(self) -> None:
        """Start MLflow's system-metrics monitor on the run (once the run exists)."""
        if not self.system_metrics or self._monitor is not None:
            return
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as err:  # psutil, which its CPU metrics read (a dependency of accelerate)
            log.warning("tracking.system_metrics: MLflow's monitor cannot start (%s); no system metrics", err)
            self.system_metrics = False
            return
        self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.uri)
        if self.on_gpus and not any(isinstance(m, GPUMonitor) for m in self._monitor.monitors):
            log.warning(
                "tracking.system_metrics: no GPU metrics (NVIDIA's library is missing or found no GPU); "
                "install it with `pip install 'mgrpo[gpu-metrics]'`"
            )
        self._monitor.start()

    def _stop_system(self) -> None:
        """Stop the monitor and send its last samples."""
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    def _terminate(self) -> bool:
        if not self.enabled:
            return True
        try:
            self._ensure_run()
            self._stop_system()  # before the run ends, so its last samples land in a running run
            self._client.set_terminated(self.run_id, status=self._status or "FINISHED")
            return True
        except Exception:
            return False
