"""Step time of one run on 2 ranks vs 1 rank (CPU, gloo), on the same work.

    python benchmarks/ranks_step_time.py [--steps 10] [overrides ...]

Runs the trainer for `--steps` steps in one process, then as 2 ranks under torchrun, with the
same settings (16 prompts per step), and prints the median step time and per-phase times of
each, and their ratio. Information, not a target: on a 2-core machine the two ranks share the
cores with nothing to gain, and gloo's collectives (FSDP all-gathers and reduce-scatters of a
tiny model) cost more than they save; the point is the overhead the rank plumbing adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from mgrpo.metric_names import phase_time

PHASES = ("rollout", "score", "entropy", "update", "ema", "step")


def step_times(uri: str) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    out = {}
    for phase in PHASES:
        history = sorted(client.get_metric_history(run.info.run_id, phase_time(phase)), key=lambda m: m.step)
        out[phase] = statistics.median(m.value for m in history[1:])  # step 1 warms up
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            uri = f"sqlite:///{tmp}/r{ranks}.db"
            common = [
                "-m", "mgrpo.train", f"trainer.total_steps={args.steps}", "trainer.prompts_per_step=16",
                f"trainer.eval_every={args.steps}", "trainer.eval_size=100", "trainer.progress=false", "trainer.device=cpu",
                f"trainer.checkpoint_every={args.steps}", f"tracking.uri={uri}", "tracking.experiment=bench",
                f"trainer.output_dir={tmp}/r{ranks}", *args.overrides,
            ]
            launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            subprocess.run([*launcher, *common], check=True, env=env, cwd=tmp, capture_output=True)
            results[ranks] = step_times(uri)
    print(f"median over steps 2..{args.steps}, 16 prompts per step, seconds")
    print(f"{'phase':<10}{'1 rank':>10}{'2 ranks':>10}{'2/1':>8}")
    for phase in PHASES:
        one, two = results[1][phase], results[2][phase]
        print(f"{phase:<10}{one:>10.3f}{two:>10.3f}{two / one:>8.2f}")


if __name__ == "__main__":
    main()
