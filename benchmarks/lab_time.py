"""Where a collapse-lab run's time goes: each phase's share of a 200-step M-GRPO run.

    python benchmarks/lab_time.py [--steps 10] [--warmup 2] [overrides ...]

Builds the trainer of `experiment=collapse_lab` (M-GRPO, the shipped base), runs `--steps` training
steps and times, on this machine, in one run (shares, not seconds, are the point):
- the policy's and the momentum's `generate` calls separately (the rollout phase is their sum);
- the update and every other phase;
- one evaluation, split into the greedy selection-set evaluation and the vote check
  (`mgrpo.vote_check`), which samples the training pool on `trainer.vote_check_size` problems.
It then extrapolates a 200-step run with an evaluation every `trainer.eval_every` steps and prints
each part's share of it, and a digest of the policy's and the momentum's weights after the steps:
two versions of the code learn the same thing for this seed exactly when their digests agree.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mgrpo.metric_names import phase_time
from mgrpo.tracking import Tracker
from mgrpo.train import compose_config
from mgrpo.trainer import Trainer
from mgrpo.vote_check import vote_check

PHASES = ("score", "entropy", "filter", "vote", "advantages", "update", "ema", "signals")


def weights_digest(models) -> str:
    """sha256 (first 16 hex digits) of every parameter's bytes, in name order, of each model."""
    h = hashlib.sha256()
    for model in models:
        if model is None:
            continue
        for name, p in sorted(model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose_config(["experiment=collapse_lab", "algo=mgrpo", "trainer.progress=false", "tracking.enabled=false", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), Tracker("", "", None, enabled=False))
        generate_times: dict[str, list[float]] = {"policy": [], "momentum": []}
        sample = trainer.sample

        def timed_sample(role, *a, **k):
            start = time.perf_counter()
            out = sample(role, *a, **k)
            generate_times.setdefault(role, []).append(time.perf_counter() - start)
            return out

        trainer.sample = timed_sample
        phases: dict[str, list[float]] = {p: [] for p in PHASES}
        steps = []
        for step in range(1, args.warmup + args.steps + 1):
            start = time.perf_counter()
            metrics = trainer.train_step(step)
            trainer.step = step
            if step <= args.warmup:
                generate_times = {"policy": [], "momentum": []}
                continue
            steps.append(time.perf_counter() - start)
            for p in PHASES:
                phases[p].append(metrics.get(phase_time(p), 0.0))
        per_step = {f"generate ({role})": statistics.median(v) for role, v in generate_times.items() if v}
        per_step.update({p: statistics.median(v) for p, v in phases.items()})
        step_total = statistics.median(steps)
        per_step["other"] = max(0.0, step_total - sum(per_step.values()))

        digest = weights_digest([trainer.policy, trainer.momentum])
        engine = trainer.engines.acquire("policy", trainer.versions["policy"], lambda: None)
        start = time.perf_counter()
        trainer.evaluator.evaluate(trainer.step, engine)
        greedy_eval = time.perf_counter() - start
        trainer.sample = sample
        start = time.perf_counter()
        vote_check(trainer, trainer.step)
        check = time.perf_counter() - start
        trainer.close()

    t = cfg.trainer
    evals = t.total_steps // t.eval_every + 1
    run = {k: v * t.total_steps for k, v in per_step.items()}
    run["evaluation (greedy, selection set)"] = greedy_eval * evals
    run["vote check"] = check * evals
    total = sum(run.values())
    print(f"collapse_lab M-GRPO, median step {step_total:.3f} s over {args.steps} steps; one evaluation "
          f"{greedy_eval:.2f} s + vote check {check:.2f} s ({t.vote_check_size} problems)")
    print(f"extrapolated {t.total_steps}-step run with {evals} evaluations: {total:.0f} s")
    for name, seconds in sorted(run.items(), key=lambda kv: -kv[1]):
        print(f"  {name:38s} {seconds:7.1f} s  {100 * seconds / total:5.1f}%")
    print(f"weights after {args.warmup + args.steps} steps: sha256 {digest}")
    if per_step.get("generate (momentum)"):
        print(f"momentum generate / policy generate: {per_step['generate (momentum)'] / per_step['generate (policy)']:.2f} "
              f"(rows {trainer.num_momentum} vs {trainer.num_policy} per prompt)")


if __name__ == "__main__":
    main()
