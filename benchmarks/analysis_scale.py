"""How long `mgrpo-analyze` takes on a sweep-sized SQLite MLflow store.

Builds a store of RUNS runs x STEPS steps x 10 training metrics (plus
`collapse/selection_accuracy` every 25 steps), logged with `log_batch` as the trainer does:
2 methods x 5 learning rates x RUNS/10 seeds, with SRT collapsing at the higher learning rates.
Then it runs the `mgrpo-analyze` console script in a subprocess (so imports count) from a cold
cache and again from the warm cache, and prints the times. Target: cold analysis of 100 runs x 2,000 steps under 30 s.

    python benchmarks/analysis_scale.py [--runs 100] [--steps 2000] [--rebuild]

The store is kept in --workdir and reused while its shape is unchanged, because building it
takes minutes (about 0.13 s per log_batch of 1,000 points).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

EXPERIMENT = "analysis-scale"
LEARNING_RATES = ("1e-05", "2e-05", "5e-05", "0.0001", "0.0003")


def specs(runs: int, steps: int) -> list:
    """The sweep: method x learning rate x seed; SRT collapses at lr >= 5e-5."""
    from mgrpo_analysis.synthetic import RunSpec

    seeds = max(runs // (2 * len(LEARNING_RATES)), 1)
    out = []
    for method in ("srt", "mgrpo"):
        for i, lr in enumerate(LEARNING_RATES):
            for seed in range(seeds):
                collapse = method == "srt" and i >= 2
                out.append(RunSpec(
                    method=method, seed=seed, steps=steps, peak_step=steps // 5,
                    collapse_to=0.1 if collapse else None, entropy_collapse=collapse and i == 4,
                    params={"optim.lr": lr},
                    tags={"mgrpo.sweep_id": "scale", "mgrpo.swept_params": "algo.name,optim.lr,trainer.seed"},
                    name=f"{method}-lr{lr}-s{seed}",
                ))
    return out[:runs]


def _log_part(uri: str, experiment_id: str, part: list) -> int:
    from mlflow import MlflowClient

    from mgrpo_analysis.synthetic import log_runs

    return len(log_runs(MlflowClient(uri), experiment_id, part))


def build(db: Path, runs: int, steps: int, workers: int) -> float:
    """Create the store (schema and experiment once, in this process), then log the runs from
    `workers` processes. Returns seconds."""
    from mlflow import MlflowClient

    start = time.perf_counter()
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(db.parent / "artifacts").as_uri())
    todo = specs(runs, steps)
    parts = [todo[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        logged = sum(pool.map(_log_part, [uri] * workers, [experiment_id] * workers, parts))
    assert logged == len(todo)
    return time.perf_counter() - start


def analyze(db: Path, cache: Path, out: Path) -> float:
    """Seconds for one `mgrpo-analyze` subprocess, report run included."""
    exe = shutil.which("mgrpo-analyze", path=str(Path(sys.executable).parent)) or "mgrpo-analyze"
    cmd = [exe, "--tracking-uri", f"sqlite:///{db}", "--experiment", EXPERIMENT,
           "--out", str(out), "--cache-dir", str(cache)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"mgrpo-analyze failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def load_curves(db: Path, cache: Path) -> tuple[float, int]:
    """Seconds for selecting the runs and loading every curve in this process, and the number
    of points: the part of the command that the cache is for."""
    import mlflow  # noqa: F401  (imported before the clock starts: its import is not loading)

    from mgrpo_analysis.store import Selection, Store

    start = time.perf_counter()
    store = Store.open(f"sqlite:///{db}")
    curves = store.curves(store.select(Selection((EXPERIMENT,))).runs, cache)
    return time.perf_counter() - start, len(curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="processes logging the store")
    parser.add_argument("--workdir", type=Path, default=Path(".mgrpo_cache/bench_analysis_scale"))
    parser.add_argument("--rebuild", action="store_true", help="build the store even if one exists")
    args = parser.parse_args()

    store_dir = args.workdir / f"runs{args.runs}_steps{args.steps}"
    db, stamp = store_dir / "mlflow.db", store_dir / "built.json"
    if args.rebuild or not stamp.is_file():
        shutil.rmtree(store_dir, ignore_errors=True)
        store_dir.mkdir(parents=True)
        seconds = build(db.resolve(), args.runs, args.steps, args.workers)
        stamp.write_text(json.dumps({"build_seconds": seconds}))
        print(f"build: {args.runs} runs x {args.steps} steps in {seconds:.1f} s")
    else:
        seconds = json.loads(stamp.read_text())["build_seconds"]
        print(f"build: reused {db} (built in {seconds:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "report"
        cold = analyze(db.resolve(), cache, out)
        warm = analyze(db.resolve(), cache, out)
        pngs = sorted(p.name for p in out.glob("*.png"))
        load_cold, points = load_curves(db.resolve(), Path(tmp) / "cache2")
        load_warm, _ = load_curves(db.resolve(), Path(tmp) / "cache2")
    print(f"mgrpo-analyze, cold cache: {cold:.1f} s ({args.runs / cold:.1f} runs/s)")
    print(f"mgrpo-analyze, warm cache: {warm:.1f} s (warm/cold = {warm / cold:.2f})")
    print(f"  of which select + load {points:,} curve points: cold {load_cold:.1f} s, "
          f"warm {load_warm:.2f} s (warm/cold = {load_warm / load_cold:.2f})")
    print(f"report: report.md + {', '.join(pngs)}")
    print(f"target: cold < 30 s -> {'met' if cold < 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
