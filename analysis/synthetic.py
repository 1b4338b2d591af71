"""Synthetic runs that follow the run data contract, for tests, benchmarks and demos.

A `RunSpec` describes the shape of a run (stable, collapsing, entropy or consensus collapse);
`history` turns it into curves with realistic noise (binomial noise of a held-out set for
`collapse/selection_accuracy`, batch noise for the per-step signals); `log_runs` writes runs into
an MLflow store with `log_batch`, the way the trainer does.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import numpy as np

from mgrpo import metric_names as names

TRAIN_METRICS = (
    names.PSEUDO_REWARD,
    names.LABEL_ACCURACY,
    names.TRUE_ACCURACY,
    names.ENTROPY,
    names.VOTE_SHARE,
    names.ZERO_STD_FRAC,
    names.KL,
    names.LOSS,
    names.GRAD_NORM,
    names.RESPONSE_LENGTH,
)
"""Training metrics the generator logs every step (with `collapse/selection_accuracy` at eval
steps)."""


@dataclass(frozen=True)
class RunSpec:
    """Shape and identity of one synthetic run."""

    method: str = "mgrpo"
    """`algo.name` param."""
    seed: int = 0
    """`trainer.seed` param; with the method and params, it seeds the noise."""
    steps: int = 400
    eval_every: int = 25
    evaluate: bool = True
    """False: no `collapse/selection_accuracy` curve at all, as from a run logged without
    evaluation."""
    heldout_size: int = 1000
    base: float = 0.43
    """Held-out accuracy at step 0."""
    peak: float = 0.55
    """Accuracy reached by `peak_step` (rising linearly from `base`)."""
    peak_step: int = 100
    collapse_to: Optional[float] = None
    """When set, accuracy falls from `peak` to this value after `peak_step` (and the
    pseudo-reward keeps rising, pseudo-label accuracy falls, vote share goes to 1)."""
    entropy_collapse: bool = False
    """Entropy falls to a tenth of its start within the first fifth of the run."""
    params: dict[str, str] = field(default_factory=dict)
    """Extra params (e.g. swept ones)."""
    tags: dict[str, str] = field(default_factory=dict)
    name: Optional[str] = None


def history(spec: RunSpec) -> dict[str, list[tuple[int, float]]]:
    """Curves of one run: metric name -> [(step, value)]; training metrics at steps 1..steps,
    `collapse/selection_accuracy` (if `evaluate`) at step 0, every `eval_every` steps and at the
    last step."""
    identity = json.dumps([spec.method, sorted(spec.params.items())])
    rng = np.random.default_rng([spec.seed, zlib.crc32(identity.encode())])
    t = np.arange(0, spec.steps + 1, dtype=float)
    rise = np.clip(t / max(spec.peak_step, 1), 0.0, 1.0)
    acc = spec.base + (spec.peak - spec.base) * rise
    collapsing = spec.collapse_to is not None
    fall = np.clip((t - spec.peak_step) / max(spec.steps - spec.peak_step, 1), 0.0, 1.0)
    if collapsing:
        acc = acc - (spec.peak - spec.collapse_to) * np.sqrt(fall)
    progress = t / spec.steps
    reward = 0.5 + (0.47 if collapsing else 0.25) * (1.0 - np.exp(-4.0 * progress))
    label_acc = np.clip(acc + 0.15, 0.0, 1.0)
    vote = 0.5 + 0.2 * progress
    if collapsing:
        vote = vote + 0.5 * np.clip(2.0 * fall, 0.0, 1.0)
    if spec.entropy_collapse:
        entropy = 0.1 + 0.9 * np.exp(-t / (0.04 * spec.steps))
    else:
        entropy = 1.0 - 0.3 * progress

    batch = 128  # policy samples per step: the noise of a per-step training fraction

    def noisy_fraction(p: np.ndarray, n: int) -> np.ndarray:
        return rng.binomial(n, np.clip(p, 0.0, 1.0)) / n

    train = {
        names.PSEUDO_REWARD: noisy_fraction(reward, batch),
        names.LABEL_ACCURACY: noisy_fraction(label_acc, 16),
        names.TRUE_ACCURACY: noisy_fraction(acc - 0.05, batch),
        names.ENTROPY: entropy * (1.0 + 0.03 * rng.standard_normal(t.size)),
        names.VOTE_SHARE: noisy_fraction(vote, batch),
        names.ZERO_STD_FRAC: noisy_fraction(np.clip(vote, 0, 1) ** 4, 16),
        names.KL: 1e-3 * progress + 1e-4 * np.abs(rng.standard_normal(t.size)),
        names.LOSS: 0.01 * rng.standard_normal(t.size),
        names.GRAD_NORM: 0.5 + 0.1 * np.abs(rng.standard_normal(t.size)),
        names.RESPONSE_LENGTH: 30.0 + rng.standard_normal(t.size),
    }
    steps = t.astype(int)
    out = {name: list(zip(steps[1:].tolist(), values[1:].tolist())) for name, values in train.items()}
    if spec.evaluate:
        evals = sorted(set(range(0, spec.steps + 1, spec.eval_every)) | {spec.steps})
        out[names.SELECTION_ACCURACY] = [(s, float(rng.binomial(spec.heldout_size, acc[s]) / spec.heldout_size))
                                         for s in evals]
    return out


def run_params(spec: RunSpec) -> dict[str, str]:
    """Params as the trainer logs them (flattened config, values as strings)."""
    params = {
        "algo.name": spec.method,
        "trainer.seed": str(spec.seed),
        "trainer.total_steps": str(spec.steps),
        "trainer.eval_every": str(spec.eval_every),
        "trainer.eval_size": "None",
        "data.heldout_size": str(spec.heldout_size),
        "algo.iqr_k": "0.75" if spec.method == "mgrpo" else "None",
        "algo.num_momentum_rollouts": "None" if spec.method == "mgrpo" else "0",
    }
    params.update(spec.params)
    return params


def log_runs(client, experiment_id: str, specs: Iterable[RunSpec], batch_size: int = 1000,
             rename: Optional[Mapping[str, str]] = None) -> list[str]:
    """Create one finished run per spec with `client.log_batch`; return the run ids.

    rename: metric name -> the name to log it under instead (e.g. the names of runs logged
    before `mgrpo.metric_names`' layout, to test that analysis still reads them).
    """
    rename = rename or {}
    from mlflow.entities import Metric, Param, RunTag

    run_ids = []
    for spec in specs:
        run = client.create_run(experiment_id, run_name=spec.name, tags=spec.tags)
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in run_params(spec).items()])
        t0 = run.info.start_time
        points = [Metric(rename.get(name, name), value, t0 + step, step)
                  for name, curve in history(spec).items() for step, value in curve]
        for i in range(0, len(points), batch_size):
            client.log_batch(run_id, metrics=points[i : i + batch_size])
        client.log_batch(run_id, tags=[RunTag("mgrpo.git_commit", "synthetic")])
        client.set_terminated(run_id, "FINISHED")
        run_ids.append(run_id)
    return run_ids
