"""What `mgrpo-eval` writes: the results table, results.json / results.csv / completions.jsonl,
and MLflow metrics and artifacts at the checkpoint's step (in the run that wrote it, or a new run)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

from mgrpo.config import Config
from mgrpo.eval_inputs import CheckpointInfo, EvalError
from mgrpo.evaluation import BenchmarkResult
from mgrpo.tasks.benchmarks import Benchmark


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def results_table(results: Sequence[BenchmarkResult], sizes: dict[str, int]) -> str:
    """An aligned text table: one row per benchmark."""
    header = ["benchmark", "problems", "n", "mean@n", "± se", "maj@n", "pass@k (k=1,2,4,..,n)", "no answer", "resp. tokens"]
    rows = []
    for res in results:
        m, n = res.metrics, res.n
        problems = f"{res.num_problems}" + (f"/{sizes[res.name]}" if sizes[res.name] != res.num_problems else "")
        passes = " ".join(f"{k.split('@')[1]}:{_fmt(v)}" for k, v in m.items() if k.startswith("pass@"))
        rows.append([
            res.name, problems, str(n), _fmt(m[f"mean@{n}"]), _fmt(m[f"mean@{n}_se"]), _fmt(m[f"maj@{n}"]),
            passes, _fmt(m["no_answer_frac"]), f"{m['response_length']:.1f}",
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_outputs(out_dir: Path, info: CheckpointInfo, cfg: Config, results: Sequence[BenchmarkResult], benchmarks: Sequence[Benchmark]) -> dict[str, Path]:
    """results.json, results.csv and completions.jsonl in `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {b.name: b for b in benchmarks}
    r = cfg.rollout
    summary = {
        "checkpoint": info.model_path,
        "step": info.step,
        "run_dir": str(info.run_dir) if info.run_dir else None,
        "run_id": info.run_id,
        "settings": {
            "engine": r.engine,
            "dtype": cfg.model.dtype,
            "eval_temperature": r.eval_temperature,
            "max_new_tokens": r.max_new_tokens,
            "max_prompt_tokens": r.max_prompt_tokens,
            "seed": cfg.trainer.seed,
            "chat_template": cfg.data.chat_template,
            "prompt_template": cfg.data.resolved_prompt_template(),
        },
        "benchmarks": {
            res.name: {
                "source": by_name[res.name].source,
                "kind": by_name[res.name].kind,
                "n": res.n,
                "problems": res.num_problems,
                "size": by_name[res.name].size,
                "metrics": res.metrics,
            }
            for res in results
        },
    }
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "completions": out_dir / "completions.jsonl"}
    paths["json"].write_text(json.dumps(summary, indent=1, default=str))
    columns = ["benchmark", "problems", "size", "n"]
    for res in results:
        columns += [k for k in res.metrics if k not in columns]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for res in results:
            writer.writerow({"benchmark": res.name, "problems": res.num_problems, "size": by_name[res.name].size, "n": res.n, **res.metrics})
    with paths["completions"].open("w") as f:
        for res in results:
            for row in res.completions:
                f.write(json.dumps(row) + "\n")
    return paths


def default_out_dir(info: CheckpointInfo) -> Path:
    if info.run_dir is not None:
        return info.run_dir / "eval" / f"step_{info.step:06d}"
    return Path("eval") / re.sub(r"[^\w.\-]+", "_", Path(info.model_path).name or info.model_path)


def log_to_mlflow(args: argparse.Namespace, info: CheckpointInfo, cfg: Config, results: Sequence[BenchmarkResult], paths: dict[str, Path]) -> str:
    """Metrics at the checkpoint's step and the output files as artifacts, in the checkpoint's run
    (or a new one); returns the run id. The existing run's status is restored."""
    from mlflow import MlflowClient

    from mgrpo.tracking import Tracker, resolve_tracking_uri, sanitize_key

    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    step = info.step if args.step is None else args.step
    metrics = {k: v for res in results for k, v in res.tracking_metrics().items() if not math.isnan(v)}
    client = MlflowClient(tracking_uri=uri)
    run_id = None if args.new_run else info.run_id
    status = None
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as e:
            raise EvalError(
                f"the checkpoint's MLflow run {run_id} is not in {uri} ({str(e).splitlines()[0][:200]}); pass the "
                "tracking URI the run used (--tracking-uri), or --new-run to log into a new run"
            ) from e
        status = run.info.status
        existing = [k for k in metrics if sanitize_key(k) in run.data.metrics and any(p.step == step for p in client.get_metric_history(run_id, sanitize_key(k)))]
        if existing:
            print(
                f"[mgrpo-eval] {len(existing)} metrics already logged at step {step} in run {run_id} are kept, not "
                f"overwritten (e.g. {existing[0]}); use --new-run for a separate record",
                file=sys.stderr,
            )
    tracker = Tracker(uri, args.experiment, args.run_name or f"eval-{info.label}", enabled=True)
    tracker.run_id = run_id
    if run_id is None:
        r = cfg.rollout
        tracker.log_params(
            {
                "eval.checkpoint": info.model_path,
                "eval.step": step,
                "eval.benchmarks": ",".join(res.name for res in results),
                "eval.engine": r.engine,
                "eval.temperature": r.eval_temperature,
                "eval.max_new_tokens": r.max_new_tokens,
                "eval.seed": cfg.trainer.seed,
                "eval.dtype": cfg.model.dtype,
            }
        )
        tracker.set_tags({"mgrpo.eval_of": info.model_path, "mgrpo.source_run_id": info.run_id})
    tracker.log_metrics(metrics, step)
    for path in paths.values():
        tracker.log_artifact(path, f"eval/step_{step:06d}")
    if run_id is None:
        if not tracker.finish("FINISHED", wait_seconds=30.0):
            raise EvalError(f"MLflow store {uri} unreachable; the results are in {paths['json'].parent}")
        return tracker.run_id
    if not tracker.flush():
        raise EvalError(f"MLflow store {uri} unreachable; the results are in {paths['json'].parent}")
    if status is not None and status != "RUNNING":
        client.update_run(run_id, status=status)
    return run_id
