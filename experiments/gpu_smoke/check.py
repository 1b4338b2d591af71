"""Read a gpu_smoke run from MLflow and say whether the GPU path is healthy.

    python experiments/gpu_smoke/check.py [--tracking-uri sqlite:///mlflow.db] [--experiment gpu_smoke]

Checks the newest run of the experiment:
- it finished, and logged every step once;
- the rollout engine sampled with the trainer's weights: `train/rollout_logprob_drift` (policy)
  and `train/rollout_logprob_drift_momentum` at every step below --max-drift (bf16 engine vs bf16
  trainer: about 1e-2 is normal; a stale hand-off reads 0.2 and more);
- the momentum model moved away from the policy after the first update
  (`train/ema_param_distance` > 0) and the policy trained on something (`train/trained_samples`);
- evaluation ran (`collapse/selection_accuracy`).
Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys

from mgrpo import metric_names as names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="gpu_smoke")
    parser.add_argument("--max-drift", type=float, default=0.05)
    args = parser.parse_args()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"no experiment {args.experiment!r} in {args.tracking_uri}: run `mgrpo-train experiment=gpu_smoke` first")
        return 1
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        print(f"experiment {args.experiment!r} has no runs")
        return 1
    run = runs[0]

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    losses = history(names.LOSS)
    steps = [s for s, _ in losses]
    checks = [
        ("run finished", run.info.status == "FINISHED", run.info.status),
        ("every step logged once", bool(steps) and steps == list(range(1, len(steps) + 1)), f"steps {steps}"),
    ]
    for key in (names.ROLLOUT_LOGPROB_DRIFT, names.ROLLOUT_LOGPROB_DRIFT_MOMENTUM):
        points = history(key)
        worst = max((v for _, v in points), default=float("nan"))
        checks.append((f"{key} < {args.max_drift}", len(points) == len(steps) and worst < args.max_drift, f"max {worst:.2e} over {len(points)} steps"))
    distance = history(names.EMA_PARAM_DISTANCE)
    checks.append(("momentum differs from the policy after a step", bool(distance) and distance[0][1] > 0, f"{distance[:1]}"))
    trained = history(names.TRAINED_SAMPLES)
    checks.append(("the policy trained on samples", any(v > 0 for _, v in trained), f"{[v for _, v in trained]}"))
    accuracy = history(names.SELECTION_ACCURACY)
    checks.append(("evaluation logged", bool(accuracy), f"{accuracy}"))
    print(f"run {run.info.run_id} ({run.info.run_name}) in {args.tracking_uri}")
    for name, ok, detail in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
