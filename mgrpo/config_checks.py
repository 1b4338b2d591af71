"""Checks of a composed `Config`, run before any work starts: each raises `ConfigError` naming
the key, the value and how to fix it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mgrpo.algos.losses import KL_ESTIMATORS, LOSS_AGG_MODES
from mgrpo.algos.registry import ALGORITHM_PRESETS, REWARD_SOURCES
from mgrpo.config import (
    DTYPES,
    ENGINE_WEIGHTS,
    ENTROPY_ESTIMATORS,
    LR_SCHEDULES,
    MONITOR_MODES,
    OBJECTIVES,
    ROLLOUT_ENGINES,
    STD_MODES,
    TASKS,
    Config,
    ConfigError,
)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}. Fix it with `{key}=<value>`.")


def _one_of(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        _fail(key, value, "allowed values are " + ", ".join(map(str, allowed)))


def validate(cfg: Config) -> None:
    """Raise ConfigError on the first invalid setting, before any work is done."""
    a = cfg.algo
    if a.name not in ALGORITHM_PRESETS:
        _one_of("algo", a.name, sorted(ALGORITHM_PRESETS))
    _one_of("algo.reward", a.reward, sorted(REWARD_SOURCES))
    if not (0.0 <= a.momentum < 1.0):
        _fail("algo.momentum", a.momentum, "m must be in [0, 1)")
    if a.iqr_k is not None and not (a.iqr_k >= 0 and math.isfinite(a.iqr_k)):
        _fail("algo.iqr_k", a.iqr_k, "k must be >= 0, or null to disable the filter")
    if a.num_rollouts < 2:
        _fail("algo.num_rollouts", a.num_rollouts, "G must be >= 2 (GRPO needs a group)")
    n = a.resolved_num_momentum_rollouts()
    if n < 0 or n >= a.num_rollouts:
        _fail(
            "algo.num_momentum_rollouts",
            n,
            f"N must be in [0, G) with G={a.num_rollouts}: at least one policy sample is needed",
        )
    if a.reward == "pseudo" and a.num_policy_rollouts() < 2:
        _fail("algo.num_rollouts", a.num_rollouts, "G - N must be >= 2 for a GRPO advantage")
    if not (0.0 < a.trained_fraction <= 1.0):
        _fail("algo.trained_fraction", a.trained_fraction, "must be in (0, 1]")
    if a.trained_fraction < 1.0 and a.num_trained_rollouts() < 2:
        _fail(
            "algo.trained_fraction", a.trained_fraction,
            f"it trains on floor(f * (G - N)) = {a.num_trained_rollouts()} samples per prompt; a GRPO advantage needs >= 2",
        )
    if a.reward == "self_certainty" and n != 0:
        _fail(
            "algo.num_momentum_rollouts", n,
            "the self_certainty reward has no vote for momentum samples to join; use 0",
        )
    if not (0.0 <= a.min_vote_share <= 1.0):
        _fail("algo.min_vote_share", a.min_vote_share, "must be in [0, 1]")
    _one_of("algo.entropy_estimator", a.entropy_estimator, ENTROPY_ESTIMATORS)
    if a.clip_ratio <= 0:
        _fail("algo.clip_ratio", a.clip_ratio, "must be > 0")
    if a.clip_ratio_dual is not None and a.clip_ratio_dual <= 1.0:
        _fail("algo.clip_ratio_dual", a.clip_ratio_dual, "dual-clip c must be > 1, or null")
    if a.kl_coef < 0:
        _fail("algo.kl_coef", a.kl_coef, "must be >= 0")
    _one_of("algo.kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    _one_of("algo.loss_agg_mode", a.loss_agg_mode, LOSS_AGG_MODES)
    if a.adv_eps < 0:
        _fail("algo.adv_eps", a.adv_eps, "must be >= 0")
    _one_of("algo.adv_std", a.adv_std, STD_MODES)
    if a.ppo_epochs < 1:
        _fail("algo.ppo_epochs", a.ppo_epochs, "must be >= 1")
    if a.mini_batches < 1:
        _fail("algo.mini_batches", a.mini_batches, "must be >= 1")
    if a.tis_cap is not None and not (a.tis_cap >= 1.0 and math.isfinite(a.tis_cap)):
        _fail(
            "algo.tis_cap", a.tis_cap,
            "the truncation C must be a finite number >= 1 (below 1 it would scale down even the tokens where sampler "
            "and trainer agree), or null to disable TIS",
        )

    _one_of("model.dtype", cfg.model.dtype, DTYPES)
    path = cfg.model.name_or_path
    if path not in ("tiny", "tiny_bpe") and (path.startswith((".", "/", "~")) or Path(path).expanduser().exists()):
        if not Path(path).expanduser().is_dir():
            _fail("model.name_or_path", path, "no such model directory; use 'tiny', 'tiny_bpe' or an HF checkpoint dir")
    if path == "tiny_bpe":
        from mgrpo.models.bpe import check_tiny_bpe_settings

        try:
            check_tiny_bpe_settings(cfg.model.tiny_bpe)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        corpus = cfg.model.tiny_bpe.corpus_path
        if corpus is None and cfg.data.task not in ("jsonl", "parquet"):
            _fail(
                "model.tiny_bpe.corpus_path", corpus,
                f"tiny_bpe trains its tokenizer on MATH text; give a JSONL or Parquet file (data.task={cfg.data.task} has none)",
            )
        if corpus is not None and not Path(corpus).expanduser().exists():
            _fail("model.tiny_bpe.corpus_path", corpus, "no such file")

    d = cfg.data
    _one_of("data.task", d.task, TASKS)
    if d.task == "arithmetic":
        if d.num_operands < 2:
            _fail("data.num_operands", d.num_operands, "must be >= 2")
        if not (1 <= d.num_digits <= 6):
            _fail("data.num_digits", d.num_digits, "must be in [1, 6]")
    else:
        if not d.train_path:
            _fail("data.train_path", d.train_path, f"data.task={d.task} needs a file or dataset name")
        if d.task in ("jsonl", "parquet"):
            for key in ("train_path", "eval_path"):
                p = getattr(d, key)
                if p and not Path(p).expanduser().exists():
                    _fail(f"data.{key}", p, "no such file")
    if d.heldout_size < 1:
        _fail("data.heldout_size", d.heldout_size, "must be >= 1")
    if d.prompt_template is not None and "{problem}" not in d.prompt_template:
        _fail("data.prompt_template", d.prompt_template, "must contain {problem} (or be null for the task's default)")

    r = cfg.rollout
    _one_of("rollout.engine", r.engine, ROLLOUT_ENGINES)
    if not (r.temperature > 0 and math.isfinite(r.temperature)):
        _fail("rollout.temperature", r.temperature, "must be > 0 (sampling is required for GRPO)")
    if r.eval_temperature < 0:
        _fail("rollout.eval_temperature", r.eval_temperature, "must be >= 0 (0 = greedy)")
    if r.eval_samples < 1 or (r.eval_samples > 1 and r.eval_temperature == 0):
        _fail("rollout.eval_samples", r.eval_samples, "must be 1 with greedy eval, >= 1 when sampling")
    for key in ("max_new_tokens", "max_prompt_tokens", "eval_batch_size", "score_chunk_size", "logits_chunk_tokens", "vllm_tensor_parallel_size"):
        if getattr(r, key) < 1:
            _fail(f"rollout.{key}", getattr(r, key), "must be >= 1")
    if r.max_logprob_drift is not None:
        raise ConfigError(
            f"rollout.max_logprob_drift={r.max_logprob_drift!r}: this setting was removed. Stale weights are now caught "
            "by checking the engine's own copy of the weights after every hand-off (always on), and the sampler-vs-"
            "trainer log-prob gap is only logged (train/rollout_logprob_drift); to correct for it in the loss, use "
            "algo.tis_cap (e.g. algo.tis_cap=2). Remove rollout.max_logprob_drift from the command or preset."
        )
    _one_of("rollout.engine_weights", r.engine_weights, ENGINE_WEIGHTS)
    if r.engine == "vllm" and r.engine_weights == "separate" and r.vllm_sleep_mode:
        _fail(
            "rollout.engine_weights", r.engine_weights,
            "with rollout.vllm_sleep_mode=true it would build two sleep-mode vLLM engines in one process, and vLLM "
            "allows one (vLLM issue 18975). Use rollout.engine_weights=shared (one engine swaps the two roles' weights: "
            "the same 2 hand-offs per step, half the memory), or keep separate engines with rollout.vllm_sleep_mode=false",
        )
    if not 0 < r.vllm_gpu_memory_utilization <= 1:
        _fail("rollout.vllm_gpu_memory_utilization", r.vllm_gpu_memory_utilization, "must be in (0, 1]")
    if r.vllm_kv_cache_gb is not None and not r.vllm_kv_cache_gb > 0:
        _fail("rollout.vllm_kv_cache_gb", r.vllm_kv_cache_gb, "must be > 0 (GiB), or null")

    o = cfg.optim
    if not (o.lr > 0 and math.isfinite(o.lr)):
        _fail("optim.lr", o.lr, "must be > 0")
    if not (0.0 <= o.warmup_ratio < 1.0):
        _fail("optim.warmup_ratio", o.warmup_ratio, "must be in [0, 1)")
    _one_of("optim.schedule", o.schedule, LR_SCHEDULES)
    if o.grad_clip < 0:
        _fail("optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables)")
    if o.micro_batch_size < 1:
        _fail("optim.micro_batch_size", o.micro_batch_size, "must be >= 1")

    t = cfg.trainer
    for key in ("total_steps", "prompts_per_step", "eval_every", "checkpoint_every", "keep_last", "num_threads"):
        if getattr(t, key) < 1:
            _fail(f"trainer.{key}", getattr(t, key), "must be >= 1")
    if t.export_every < 0:
        _fail("trainer.export_every", t.export_every, "must be >= 0 (0: export only the final step)")
    _one_of("trainer.device", t.device, ("auto", "cpu", "cuda"))
    for key in ("collective_timeout_s", "heartbeat_timeout_s"):
        if not getattr(t, key) > 0:
            _fail(f"trainer.{key}", getattr(t, key), "must be > 0 (seconds)")
    _one_of("trainer.objective", t.objective, OBJECTIVES)
    if t.vote_check_size < 0:
        _fail("trainer.vote_check_size", t.vote_check_size, "must be >= 0 (0 turns the vote check off)")
    validate_benchmarks(cfg)

    if cfg.monitor.every < 1:
        _fail("monitor.every", cfg.monitor.every, "must be >= 1")
    _one_of("monitor.mode", cfg.monitor.mode, MONITOR_MODES)
    if cfg.monitor.label_free_rule is not None:
        from mgrpo_analysis.label_free import LABEL_FREE_DETECTORS

        names = list(cfg.monitor.label_free_rule)
        if not names or any(n not in LABEL_FREE_DETECTORS for n in names):
            _fail("monitor.label_free_rule", names, "a non-empty list of label-free detectors, from: " + ", ".join(LABEL_FREE_DETECTORS))


def validate_benchmarks(cfg: Config) -> None:
    """Benchmark names and counts, and the rule that the selection set is no reported benchmark."""
    from mgrpo.tasks.benchmarks import benchmark_source, check_benchmark_names, same_source

    t, d = cfg.trainer, cfg.data
    try:
        check_benchmark_names(t.eval_benchmarks, d)
    except ValueError as e:
        raise ConfigError(f"trainer.eval_benchmarks={list(t.eval_benchmarks)!r} is invalid: {e}") from None
    for key in ("eval_benchmark_samples", "eval_benchmark_limit"):
        value = getattr(t, key)
        if value is not None and value < 1:
            _fail(f"trainer.{key}", value, "must be >= 1, or null")
    if t.eval_benchmark_samples is not None and t.eval_benchmark_samples > 1 and cfg.rollout.eval_temperature == 0:
        _fail(
            "trainer.eval_benchmark_samples", t.eval_benchmark_samples,
            "greedy evaluation (rollout.eval_temperature=0) gives n identical samples; use 1, or set rollout.eval_temperature > 0",
        )
    for name in t.eval_benchmarks:
        try:
            source = benchmark_source(name, d)  # local files are checked; hub names when loaded
        except FileNotFoundError as e:
            raise ConfigError(f"trainer.eval_benchmarks: {e}") from None
        if d.eval_path and same_source(d.eval_path, source):
            _fail(
                "data.eval_path", d.eval_path,
                f"it is the benchmark {name} that the run reports, and the selection set chooses runs and steps; "
                "set data.eval_path=null (a seeded slice of the training data is held out) or another file",
            )
