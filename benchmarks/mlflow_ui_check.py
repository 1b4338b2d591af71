"""What a user sees in the MLflow UI: screenshots of a small store, taken with headless Chromium.

Not a test (nothing is asserted about pixels): a script to look at the layout after changing
metric names, tags, dataset inputs or system metrics. It

1. writes a small store in --workdir: a synthetic sweep (`mgrpo_analysis.synthetic`: M-GRPO and
   SRT at two learning rates, SRT collapsing at the higher one) and, unless --no-training-run,
   one real 2-step run of the tiny model (dataset inputs, `system/*` metrics turned on);
2. runs `mgrpo-analyze` on it, which writes the verdict tags and descriptions onto the runs;
3. starts `mlflow ui` on the store and saves, in --out:
   - `chart_view.png`: the experiment's chart view, the link `mgrpo-train` prints;
   - `collapsed_runs.png`: the runs table under the search tags.`mgrpo.verdict` = 'collapsed';
   - `collapsed_run.png`: the page of the collapsed run (description, tags);
   - `training_run.png`: the page of the real run (datasets, system metrics), when there is one.

    .venv/bin/python benchmarks/mlflow_ui_check.py --out /tmp/ui-shots [--workdir /tmp/ui-store]

Needs Debian's `chromium` (`apt-get install chromium`). Chromium runs once per screenshot with
the flags of the recipes (virtual time, so charts are drawn rather than left as spinners).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

EXPERIMENT = "ui-check"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--run-all-compositor-stages-before-draw",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_run(workdir: Path, uri: str) -> None:
    """Two steps of the default recipe on the tiny model, system metrics on (1 s samples)."""
    overrides = [
        f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}", "tracking.system_metrics=true",
        f"trainer.output_dir={workdir / 'run'}", "trainer.total_steps=2", "trainer.prompts_per_step=4",
        "trainer.eval_every=2", "trainer.progress=false", "algo.num_rollouts=8", "data.heldout_size=48",
    ]
    env = {**os.environ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mgrpo.train", *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        sys.exit(f"training run failed:\n{done.stderr[-3000:]}")


def build_store(workdir: Path, with_training: bool) -> str:
    """The store (built once per --workdir): the synthetic sweep and the real run; analysed
    every time, so a changed analysis shows."""
    from mlflow import MlflowClient

    from mgrpo.tracking import get_or_create_experiment
    from mgrpo_analysis import cli
    from mgrpo_analysis.synthetic import RunSpec, log_runs

    db = workdir / "mlflow.db"
    uri = f"sqlite:///{db}"
    if not db.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(uri)
        experiment_id = get_or_create_experiment(client, uri, EXPERIMENT)
        sweep = {"mgrpo.sweep_id": "lr", "mgrpo.swept_params": "algo,optim.lr"}
        log_runs(client, experiment_id, [
            RunSpec(method=m, seed=0, steps=150, eval_every=10, peak_step=40,
                    collapse_to=0.1 if (m, lr) == ("srt", "3e-05") else None,
                    params={"optim.lr": lr}, tags=sweep, name=f"{m}-lr{lr}")
            for lr in ("1e-05", "3e-05") for m in ("srt", "mgrpo")
        ])
        if with_training:
            training_run(workdir, uri)
    code = cli.main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(workdir / "report"), "--no-cache"])
    if code:
        sys.exit(f"mgrpo-analyze exited with {code}")
    return uri


def start_ui(uri: str, port: int, log_path: Path) -> subprocess.Popen:
    """`mlflow ui` on the store, once /health answers (about 15 s)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).with_name("mlflow")
    log = log_path.open("w")
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(1)
    stop_ui(proc)
    sys.exit(f"mlflow ui did not answer on port {port} within 120 s; see {log_path}")


def stop_ui(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def screenshot(chromium: str, url: str, path: Path, window: str, budget_ms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
             f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url],
            capture_output=True, timeout=300, check=False,
        )
    print(f"{path}: {'saved' if path.is_file() else 'MISSING'}  ({url})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the screenshots (keep it out of git)")
    p.add_argument("--workdir", type=Path, help="where the store is built and kept (default: a temporary folder)")
    p.add_argument("--no-training-run", action="store_true", help="synthetic runs only (no 2-step tiny run)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    p.add_argument("--window", default="1600,1400", help="browser window, WIDTH,HEIGHT")
    p.add_argument("--budget-ms", type=int, default=60000, help="Chromium's virtual time per page")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="take only this screenshot (e.g. chart_view); repeatable")
    args = p.parse_args()
    if not shutil.which(args.chromium):
        sys.exit(f"no {args.chromium!r}: install Debian's chromium (apt-get install chromium) or pass --chromium")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlflow-ui-check-"))
    uri = build_store(workdir.resolve(), not args.no_training_run)
    args.out.mkdir(parents=True, exist_ok=True)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    collapsed = client.search_runs([experiment_id], "tags.`mgrpo.verdict` = 'collapsed'")
    trained = client.search_runs([experiment_id], "tags.`mgrpo.git_commit` != 'synthetic'")
    port = free_port()
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    search = urllib.parse.quote("tags.`mgrpo.verdict` = 'collapsed'")
    pages = {"chart_view.png": f"{base}/runs?compareRunsMode=CHART",
             "collapsed_runs.png": f"{base}/runs?searchFilter={search}"}
    if collapsed:
        pages["collapsed_run.png"] = f"{base}/runs/{collapsed[0].info.run_id}"
    if trained:
        pages["training_run.png"] = f"{base}/runs/{trained[0].info.run_id}"
    unknown = {n.removesuffix(".png") for n in args.only} - {n.removesuffix(".png") for n in pages}
    if unknown:
        sys.exit(f"--only {', '.join(sorted(unknown))}: not among {', '.join(pages)}")
    if args.only:
        pages = {n: u for n, u in pages.items() if n.removesuffix(".png") in {o.removesuffix(".png") for o in args.only}}
    proc = start_ui(uri, port, args.out / "mlflow_ui.log")
    try:
        for name, url in pages.items():
            screenshot(args.chromium, url, args.out / name, args.window, args.budget_ms)
    finally:
        stop_ui(proc)
    print(f"store: {uri} (serve it again with: mlflow ui --backend-store-uri {uri})")


if __name__ == "__main__":
    main()
