"""Every metric name a run logs, grouped into the sections of MLflow's chart view, and the names
runs logged before this layout, which analysis still reads.

How MLflow 3.17.2's UI lays out the chart view of an experiment (read in its built bundle,
`mlflow/server/js/build/static/js/main.*.js`: `getBaseChartAndSectionConfigs`,
`updateChartAndSectionConfigs`, `extractChartSectionName`; seen with
`benchmarks/mlflow_ui_check.py`):

- A metric's section is its name up to the last "/": `eval/math500/mean_at_8` is in section
  `eval/math500`. A name without "/" goes to "Model metrics", `system/<x>` to "System metrics".
- Sections are sorted by name (JavaScript's default string sort when the view is first built,
  `localeCompare` for a section a later metric adds), then come "Model metrics" and
  "System metrics". Every section starts expanded.
- In a section, charts are in the order of their full metric names (default sort at first; a
  metric that appears later is put before the first chart whose name `localeCompare`s greater).
  At 1600 px a row holds three charts, and the first screen about three rows.
- A metric with one point in every run is a bar chart; any other a line chart over steps.
- The browser keeps the view's state per experiment; a kept layout is updated, not rebuilt: a
  new metric is added in name order, or at the end of a section the reader has reordered.

So the names decide what the chart view opens on. They are chosen so that both orders agree
(where two names first differ, it is never '_' against a digit or '/', the only pairs on which
ICU's `localeCompare` and the default sort disagree; `tests/test_metric_names.py` checks it):

1. `collapse`: the nine curves that show a collapse, which `mgrpo_analysis` reads: the selection
   set's accuracy, pseudo-reward, pseudo-label and true accuracy (with labels), policy and
   momentum entropy, vote share, zero-variance and filtered fractions. Three rows: the first
   screen.
2. `eval/<set>`: the selection set's other metrics (`eval/selection`), each reported benchmark
   (`eval/<benchmark>`: mean@n, maj@n, pass@k, ...; `mgrpo.evaluation`) and the vote check
   (`eval/vote_check`), in the order of their names.
3. `train`: the rest of the per-step signals (DESIGN.md section 4).
4. `train/time`: seconds per phase and per step, and the padding ratio.
5. "System metrics" (`system/*`, MLflow's own, with `tracking.system_metrics`).

The step-0 counts of the data (prompts, labelled, dropped for length) are no metrics: they are
the profiles of the run's dataset inputs (`mgrpo.run_datasets`).
"""

from __future__ import annotations

COLLAPSE = "collapse"
EVAL = "eval"
TRAIN = "train"
TIME = "train/time"

# ---- collapse: the curves the detectors read ---------------------------------------------------
SELECTION_ACCURACY = "collapse/selection_accuracy"
"""Mean accuracy over rollout.eval_samples on the selection set: what the collapse monitor, the
objective and checkpoint choice read (never a reported benchmark)."""
PSEUDO_REWARD = "collapse/pseudo_reward"
LABEL_ACCURACY = "collapse/label_accuracy"
"""Pseudo-label equals the gold answer (labelled diagnostic)."""
TRUE_ACCURACY = "collapse/true_accuracy"
"""The policy samples' answers equal the gold answer (labelled diagnostic)."""
ENTROPY = "collapse/entropy"
ENTROPY_MOMENTUM = "collapse/entropy_momentum"
VOTE_SHARE = "collapse/vote_share"
ZERO_STD_FRAC = "collapse/zero_std_frac"
FILTERED_FRAC = "collapse/filtered_frac"

# ---- eval: the selection set's other metrics, benchmarks, the vote check -----------------------
SELECTION = "eval/selection"
SELECTION_MAJ_ACCURACY = "eval/selection/maj_accuracy"
SELECTION_NO_ANSWER_FRAC = "eval/selection/no_answer_frac"
SELECTION_RESPONSE_LENGTH = "eval/selection/response_length"
SELECTION_METRICS = {
    "accuracy": SELECTION_ACCURACY,
    "maj_accuracy": SELECTION_MAJ_ACCURACY,
    "no_answer_frac": SELECTION_NO_ANSWER_FRAC,
    "response_length": SELECTION_RESPONSE_LENGTH,
}
"""Key of `mgrpo.evaluation.evaluation_report` -> the selection set's metric."""
VOTE_CHECK = "eval/vote_check"

# ---- train: the rest of the per-step signals ---------------------------------------------------
REWARD = "train/reward"
NO_ANSWER_FRAC = "train/no_answer_frac"
RESPONSE_LENGTH = "train/response_length"
ADVANTAGE_ABS_MEAN = "train/advantage_abs_mean"
NUM_ANSWER_CLASSES = "train/num_answer_classes"
UNLABELED_FRAC = "train/unlabeled_frac"
ANSWER_LOG_MAGNITUDE = "train/answer_log_magnitude"
SELF_CERTAINTY = "train/self_certainty"
POLICY_MOMENTUM_DISAGREEMENT = "train/policy_momentum_disagreement"
MOMENTUM_AGREEMENT = "train/momentum_agreement"
LABEL_FLIP_FRAC = "train/label_flip_frac"
LABEL_MODE_FRAC = "train/label_mode_frac"
EMA_PARAM_DISTANCE = "train/ema_param_distance"
KL = "train/kl"
LOSS = "train/loss"
PG_LOSS = "train/pg_loss"
CLIP_FRAC = "train/clip_frac"
TRAINED_SAMPLES = "train/trained_samples"
TIS_WEIGHT_MEAN = "train/tis_weight_mean"
TIS_CLIP_FRAC = "train/tis_clip_frac"
GRAD_NORM = "train/grad_norm"
LR = "train/lr"
ROLLOUT_LOGPROB_DRIFT = "train/rollout_logprob_drift"
ROLLOUT_LOGPROB_DRIFT_MOMENTUM = "train/rollout_logprob_drift_momentum"

# ---- train/time ----------------------------------------------------------------------------------
STEP_TIME = "train/time/step"
PAD_RATIO = "train/time/pad_ratio"
"""Decoder positions the step's scoring and update passes ran over, per real token in them (1.0:
no compute on padding; `mgrpo.padding`). Depends on how rows fall into passes, hence on ranks."""


def phase_time(phase: str) -> str:
    """Seconds of one phase of a step (`mgrpo.phases.timed`): 'rollout' -> 'train/time/rollout'."""
    return f"{TIME}/{phase}"


def benchmark_metric(benchmark: str, key: str) -> str:
    """'mean@8' of aime24 -> 'eval/aime24/mean_at_8' (MLflow forbids '@')."""
    return f"{EVAL}/{benchmark}/{key.replace('@', '_at_')}"


def is_eval_metric(name: str) -> bool:
    """Measured on a held-out set at evaluation steps (binomial noise), not on a training step."""
    return name == SELECTION_ACCURACY or name.startswith(EVAL + "/")


# ---- names of runs logged before this layout -----------------------------------------------------
RENAMED = {
    "val/accuracy": SELECTION_ACCURACY,
    "val/maj_accuracy": SELECTION_MAJ_ACCURACY,
    "val/no_answer_frac": SELECTION_NO_ANSWER_FRAC,
    "val/response_length": SELECTION_RESPONSE_LENGTH,
    "train/pseudo_reward": PSEUDO_REWARD,
    "train/label_accuracy": LABEL_ACCURACY,
    "train/true_accuracy": TRUE_ACCURACY,
    "train/entropy": ENTROPY,
    "train/entropy_momentum": ENTROPY_MOMENTUM,
    "train/vote_share": VOTE_SHARE,
    "train/zero_std_frac": ZERO_STD_FRAC,
    "train/filtered_frac": FILTERED_FRAC,
}
"""Old name -> name, for the metrics that moved section or changed name."""
RENAMED_PREFIXES = (("val/", EVAL + "/"), ("time/", TIME + "/"))
"""Old prefix -> prefix, for the rest: benchmarks and the vote check (`val/<set>/...`), timings."""


def current_name(name: str) -> str:
    """The name a metric has now, given its name in a run logged before or after this layout."""
    if name in RENAMED:
        return RENAMED[name]
    for old, new in RENAMED_PREFIXES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name
