"""Links into the MLflow UI for a tracking URI (no MLflow import: the trainer uses this).

MLflow 3's UI opens an experiment on its GenAI overview page; the link that shows the training
curves is the runs page in chart view, `#/experiments/<id>/runs?compareRunsMode=CHART`. For a
local store (SQLite file or directory) the UI is the one `mlflow ui --backend-store-uri <uri>`
serves, at its default address.
"""

from __future__ import annotations

from typing import Optional

LOCAL_UI = "http://127.0.0.1:5000"
"""Where `mlflow ui` listens by default."""


def ui_base(uri: str) -> str:
    """The UI's address: the server itself for an http(s) tracking URI, else `LOCAL_UI`."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def ui_command(uri: str) -> Optional[str]:
    """The command that serves the UI for a local store; None when the URI is a server."""
    return None if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"


def chart_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs in chart view (the collapse curves: sections `train` and `val`)."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """One run's page."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def where_to_look(uri: str, experiment_id: str) -> str:
    """One line: how to open the UI (for a local store) and the chart-view link."""
    command = ui_command(uri)
    link = chart_url(uri, experiment_id)
    return f"{command}, then open {link}" if command else f"open {link}"
