"""The M-GRPO training loop, as short named phases, on one or many ranks.

One step: rollout -> score -> filter -> vote -> advantages -> update -> ema -> log, then periodic
evaluation, collapse monitoring and checkpointing. SRT and ground-truth GRPO run this same loop;
they differ only in config (see `mgrpo.algos.registry`).

Ranks: the step's prompts are split evenly over the ranks and each prompt's whole pool (policy
and momentum samples) stays on one rank, so filter, vote and advantages need no communication.
What crosses ranks lives beside the phases: FSDP inside the models (`mgrpo.sharding`), the
update plan's global counts, the metric reduction, the drift guard, the evaluation gather and
the monitor's decision (`mgrpo.parallel`), and the weight hand-off (`mgrpo.rollout.handoff`).

Where this departs from the paper's Algorithm 1 (each is a config setting):
- momentum samples only vote; they are never trained on (they come from another policy);
- the reference model is loaded only when the KL coefficient is > 0;
- hidden labels, when the data has them, are read only by the diagnostics
  (train/label_accuracy, train/true_accuracy, val/*) unless algo.reward=ground_truth.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import transformers

from mgrpo import checkpoint as ckpt
from mgrpo.algos.answers import AnswerEquivalence
from mgrpo.algos.ema import ema_update_
from mgrpo.algos.registry import REWARD_SOURCES
from mgrpo.algos.rewards import grpo_advantages
from mgrpo.config import Config
from mgrpo.evaluation import EvalSamples, eval_seeds, evaluation_report, prepare_benchmarks, sample_answers, score_benchmark
from mgrpo.models.loading import load_tokenizer, resolve_model_path
from mgrpo.models.setup import build_training_models
from mgrpo.parallel import Ranks
from mgrpo.phases import LossSettings, filter_phase, pad_plan, plan_update, score_phase, stream_seed, timed, update_phase, vote_phase
from mgrpo.rollout import build_engines, encode_prompts, sample_seed
from mgrpo.rollout.base import Rollouts
from mgrpo.rollout.handoff import StaleWeightsError
from mgrpo.sharding import compute_context, full_parameters
from mgrpo.step_metrics import logprob_drift, step_metrics
from mgrpo.tasks import Problem, load_task, prepare_task
from mgrpo.tasks.benchmarks import Benchmark, samples_for
from mgrpo.tracking import Tracker, flatten
from mgrpo_analysis.detectors import ACCURACY, USED_METRICS
from mgrpo_analysis.monitor import Thresholds, check_history

log = logging.getLogger(__name__)

MONITORED = (ACCURACY, *USED_METRICS)
"""The curves the online collapse monitor reads (kept in memory and in checkpoints)."""
FINGERPRINT_EXCLUDE = {
    "trainer.eval_every",
    "trainer.checkpoint_every",
    "trainer.keep_last",
    "trainer.output_dir",
    "trainer.num_threads",
    "trainer.device",
    "trainer.log_completions",
    "trainer.progress",
    "trainer.objective",
    "trainer.objective_drop_penalty",
    "trainer.collective_timeout_s",
    "trainer.heartbeat_timeout_s",
    "model.tiny.cache_dir",
    "model.gradient_checkpointing",
    "model.reference_cpu_offload",
    "rollout.eval_batch_size",
    "rollout.score_chunk_size",
    "rollout.logits_chunk_tokens",
    "rollout.max_logprob_drift",
    "rollout.engine_weights",
    "trainer.eval_benchmarks",
    "trainer.eval_benchmark_samples",
    "trainer.eval_benchmark_limit",
    "data.benchmarks_dir",
    "model.tiny_bpe.cache_dir",
}
"""Settings that change how fast or where a run goes, not what it trains: a resume may change them."""
SHUFFLE_STREAM = 3


class Trainer:
    """Holds the models and state of one run on this rank; `fit()` runs it to the end (or resumes it)."""

    def __init__(self, cfg: Config, output_dir: Path, tracker: Tracker, ranks: Optional[Ranks] = None) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.tracker = tracker
        self.ranks = ranks or Ranks(device=torch.device("cuda" if cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available()) else "cpu"))
        torch.set_num_threads(cfg.trainer.num_threads)
        transformers.utils.logging.disable_progress_bar()
        self.model_path = resolve_model_path(cfg.model, cfg.data)
        self.tokenizer = load_tokenizer(self.model_path)
        # Prompts as the model sees them (chat template), over-long ones dropped and counted.
        self.prepared = prepare_task(load_task(cfg.data), self.tokenizer, cfg.data.chat_template, cfg.rollout.max_prompt_tokens)
        self.data = self.prepared.data
        t = cfg.trainer
        self.benchmarks = prepare_benchmarks(t.eval_benchmarks, cfg.data, self.tokenizer, cfg.rollout.max_prompt_tokens, t.eval_benchmark_limit)
        self.compute_dtype = getattr(torch, cfg.model.dtype)
        self.context = compute_context(self.ranks, self.compute_dtype)
        models = build_training_models(cfg, self.model_path, self.ranks)
        self.policy, self.momentum, self.reference = models.policy, models.momentum, models.reference
        self.optimizer, self.scheduler = models.optimizer, models.scheduler
        a = cfg.algo
        self.num_momentum = a.resolved_num_momentum_rollouts()
        self.num_policy = a.num_policy_rollouts()
        self.engines = build_engines(
            cfg.rollout,
            self.ranks,
            {"policy": self.policy.lm, "momentum": self.momentum.lm if self.momentum is not None else None},
            self.tokenizer,
            self.model_path,
            self.compute_dtype,
            self.context,
            cfg.trainer.seed,
        )
        self.versions = {"policy": 0, "momentum": 0}
        self.equivalent = AnswerEquivalence()
        self.step = 0
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in MONITORED}
        self.collapse: Optional[dict[str, Any]] = None
        self.finished = False

    # ---- bookkeeping ---------------------------------------------------------------------
    def fingerprint(self) -> dict[str, str]:
        flat = flatten(asdict(self.cfg))
        keep = ("algo.", "model.", "data.", "rollout.", "optim.", "trainer.")
        return {
            k: v
            for k, v in flat.items()
            if k.startswith(keep)
            and k not in FINGERPRINT_EXCLUDE
            and not k.startswith(("rollout.vllm_", "data.benchmark_paths."))
        }

    def training_state(self) -> ckpt.TrainingState:
        return ckpt.TrainingState(self.policy, self.optimizer, self.scheduler, self.momentum, self.compute_dtype, self.tokenizer)

    def resume(self) -> bool:
        """Load the newest checkpoint of this output dir, if any. True when resumed."""
        found = ckpt.latest_checkpoint(self.output_dir)
        if found is None:
            return False
        ckpt.check_compatible(found, self.fingerprint())
        ckpt.load_checkpoint(found, self.ranks, self.training_state())
        self.step = int(found.state["step"])
        self.history.update({k: [tuple(p) for p in v] for k, v in found.state.get("history", {}).items()})
        self.collapse = found.state.get("collapse")
        self.finished = bool(found.state.get("finished", False))
        self.tracker.load_state_dict(found.state.get("tracking", {}))
        log.info("resumed from %s at step %d (MLflow run %s)", found.path, self.step, self.tracker.run_id)
        return True

    def save(self) -> Path:
        state = {
            "fingerprint": self.fingerprint(),
            "tracking": self.tracker.state_dict(),
            "history": self.history,
            "collapse": self.collapse,
            "finished": self.finished,
            "data_position": self.step * self.cfg.trainer.prompts_per_step,
        }
        return ckpt.save_checkpoint(self.output_dir, self.step, self.ranks, self.training_state(), state, self.cfg.trainer.keep_last)

    def batch_problems(self, step: int) -> list[Problem]:
        """All prompts of step `step` (1-based), over all ranks: consecutive slices of a seeded
        permutation per epoch."""
        n = self.cfg.trainer.prompts_per_step
        pool = self.data.train
        out: list[Problem] = []
        position = (step - 1) * n
        while len(out) < n:
            epoch, offset = divmod(position, len(pool))
            order = np.random.default_rng([self.cfg.trainer.seed, epoch]).permutation(len(pool))
            take = min(n - len(out), len(pool) - offset)
            out.extend(pool[i] for i in order[offset : offset + take])
            position += take
        return out

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.ranks.is_main:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        for key in MONITORED:
            if key in clean:
                self.history[key].append((step, clean[key]))
        self.tracker.log_metrics(clean, step)

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, role: str, prompts: list[list[int]], n: int, temperature: float, seeds: list[int]) -> Rollouts:
        """n samples per prompt from the current weights of `role` (handed off first if needed)."""
        model = self.policy if role == "policy" else self.momentum
        engine = self.engines.acquire(role, self.versions[role], lambda: full_parameters(model, self.compute_dtype))
        return engine.generate(prompts, n, temperature, self.cfg.rollout.max_new_tokens, seeds)

    def guard_drift(self, role: str, rollouts: Rollouts, trainer_logprobs: torch.Tensor) -> float:
        """Global sampler-vs-trainer drift for `role`; stops the run (on every rank) when stale."""
        drift, tokens = logprob_drift(rollouts, trainer_logprobs)
        total, count = self.ranks.all_reduce([drift * tokens, tokens])
        drift = total / count if count else 0.0
        limit = self.cfg.rollout.max_logprob_drift
        if drift > limit:
            raise StaleWeightsError(
                f"the {role} samples were drawn with weights other than the trainer's: mean |sampler - trainer| "
                f"log-prob = {drift:.4f} nats per token after the weight hand-off, above rollout.max_logprob_drift={limit} "
                f"(rollout.engine={self.cfg.rollout.engine}). The engine holds stale weights (a failed hand-off or a stale "
                "prefix cache); this step was not trained on. If the engine computes in a lower precision than the "
                "trainer, raise rollout.max_logprob_drift."
            )
        return drift

    # ---- one step --------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        cfg, a, r = self.cfg, self.cfg.algo, self.cfg.rollout
        times: dict[str, float] = {}
        problems = self.batch_problems(step)
        mine = self.ranks.shard(len(problems))
        problems, indices = problems[mine], list(range(mine.start, mine.stop))
        prompts = encode_prompts(self.tokenizer, [p.prompt for p in problems], r.max_prompt_tokens)

        with timed(times, "rollout"):
            policy_ro = self.sample("policy", prompts, self.num_policy, r.temperature, [sample_seed(cfg.trainer.seed, step, "policy", i) for i in indices])
            momentum_ro = None
            if self.momentum is not None:
                momentum_ro = self.sample("momentum", prompts, self.num_momentum, r.temperature, [sample_seed(cfg.trainer.seed, step, "momentum", i) for i in indices])

        with timed(times, "score"):
            policy_scores = score_phase(self.policy, policy_ro, r.temperature, r.score_chunk_size, a.entropy_estimator, self.context)
            ref_logprobs = None
            if self.reference is not None:
                ref_logprobs = score_phase(self.reference, policy_ro, r.temperature, r.score_chunk_size, "sampled", self.context).logprobs
        drifts = {"train/rollout_logprob_drift": self.guard_drift("policy", policy_ro, policy_scores.logprobs)}
        entropies, groups, texts = [policy_scores.entropy], [policy_ro.group_ids], list(policy_ro.texts)
        extra = {}
        with timed(times, "entropy"):
            if momentum_ro is not None:
                momentum_scores = score_phase(self.momentum, momentum_ro, r.temperature, r.score_chunk_size, a.entropy_estimator, self.context)
                drifts["train/rollout_logprob_drift_momentum"] = self.guard_drift("momentum", momentum_ro, momentum_scores.logprobs)
                entropies.append(momentum_scores.entropy)
                groups.append(momentum_ro.group_ids)
                texts += momentum_ro.texts
                extra["train/entropy_momentum"] = (float(momentum_scores.entropy.mean()), len(momentum_ro))
        pooled_entropy, pooled_groups = torch.cat(entropies), torch.cat(groups)
        num_policy_samples = len(policy_ro)

        with timed(times, "filter"):
            keep = filter_phase(pooled_entropy, pooled_groups, a.iqr_k)

        with timed(times, "vote"):
            answers, vote = vote_phase(texts, pooled_groups, keep, self.equivalent, a.min_vote_share)

        with timed(times, "advantages"):
            gold = [problems[g].answer for g in pooled_groups.tolist()]
            rewards = REWARD_SOURCES[a.reward](answers, pooled_groups.tolist(), vote, gold, self.equivalent)
            policy_rewards = rewards[:num_policy_samples]
            members = keep[:num_policy_samples]
            advantages, adv_metrics = grpo_advantages(policy_rewards, policy_ro.group_ids, members, a.adv_eps, a.adv_std)

        lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses
        with timed(times, "update"):
            self.engines.sleep_all()
            update = update_phase(
                self.policy,
                self.optimizer,
                policy_ro,
                policy_scores.logprobs,
                ref_logprobs,
                advantages,
                members,
                self.global_plan(policy_ro, members, step),
                self.loss_settings(),
                self.context,
            )
            self.scheduler.step()
            self.versions["policy"] += 1

        ema_squared_distance = None
        with timed(times, "ema"):
            if self.momentum is not None:
                distance = ema_update_(self.momentum.named_parameters(), self.policy.named_parameters(), a.momentum)["ema_param_distance"]
                ema_squared_distance = distance**2
                self.versions["momentum"] += 1

        local = step_metrics(problems, policy_ro, policy_scores.entropy, answers, vote, keep, policy_rewards, advantages, members, adv_metrics, update, self.equivalent)
        local.weighted.update(extra)
        local.maxed.update(times)
        if ema_squared_distance is not None:
            local.summed["train/ema_param_distance"] = ema_squared_distance
        metrics = self.ranks.reduce_metrics(local.weighted, local.summed, local.maxed)
        if "train/ema_param_distance" in metrics:
            metrics["train/ema_param_distance"] = metrics["train/ema_param_distance"] ** 0.5
        if self.reference is None:
            metrics.pop("train/kl", None)
        metrics["train/lr"] = lr
        if policy_ro.sampler_logprobs is not None:
            metrics.update(drifts)
        return metrics

    def loss_settings(self) -> LossSettings:
        a = self.cfg.algo
        return LossSettings(
            self.cfg.rollout.temperature, a.clip_ratio, a.clip_ratio_dual, a.kl_coef, a.kl_estimator,
            a.loss_agg_mode, float(self.cfg.rollout.max_new_tokens), self.cfg.optim.grad_clip,
        )

    def global_plan(self, policy_ro: Rollouts, members: torch.Tensor, step: int):
        """This rank's update plan with loss normalisers counted over all ranks, padded so every
        rank runs as many micro-batches as the busiest (none trains on nothing silently)."""
        a = self.cfg.algo
        loss_mask = policy_ro.response_mask & members.unsqueeze(-1)
        plan = plan_update(loss_mask, a.ppo_epochs, a.mini_batches, self.cfg.optim.micro_batch_size, stream_seed(self.cfg.trainer.seed, step, SHUFFLE_STREAM) + self.ranks.rank)
        counts = self.ranks.all_reduce(plan.num_tokens + plan.num_seqs)
        plan.num_tokens, plan.num_seqs = counts[: len(plan.num_tokens)], counts[len(plan.num_tokens) :]
        most = self.ranks.all_reduce([len(m) for m in plan.micro_batches], op="max")
        return pad_plan(plan, [int(c) for c in most])

    # ---- evaluation, monitoring ------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """Selection-set metrics (val/accuracy, ...: what the monitor and the objective read) and
        benchmark metrics (val/<benchmark>/...: reported only), sampled by all ranks (a
        contiguous share of each set), scored on rank 0. Step 0 also logs the data's counts."""
        out = self.evaluate_selection(step)
        for benchmark in self.benchmarks:
            out.update(self.evaluate_benchmark(benchmark, step))
        if step == 0 and self.ranks.is_main:
            out.update({f"data/{k}": float(v) for k, v in self.prepared.summary().items()})
        return out if self.ranks.is_main else {}

    def evaluate_selection(self, step: int) -> dict[str, float]:
        """val/accuracy (mean over rollout.eval_samples), val/maj_accuracy, ... on the selection set."""
        cfg, r = self.cfg, self.cfg.rollout
        heldout = self.data.heldout[: cfg.trainer.eval_size] if cfg.trainer.eval_size else self.data.heldout
        share = np.array_split(np.arange(len(heldout)), self.ranks.world_size)[self.ranks.rank].tolist()
        prompts = encode_prompts(self.tokenizer, [heldout[i].prompt for i in share], r.max_prompt_tokens)
        engine = self.engines.acquire("policy", self.versions["policy"], lambda: full_parameters(self.policy, self.compute_dtype))
        seeds = eval_seeds(cfg.trainer.seed, step, share)
        mine = sample_answers(engine, prompts, share, r.eval_samples, r.eval_temperature, r.max_new_tokens, seeds) if share else EvalSamples([], [], [], [])
        gathered = self.ranks.all_gather_objects(mine)
        if not self.ranks.is_main:
            return {}
        samples = EvalSamples([], [], [], [])
        for part in gathered:
            samples.extend(part)
        metrics, kept = evaluation_report(samples, [p.prompt for p in heldout], [p.answer for p in heldout], self.equivalent, cfg.trainer.log_completions)
        path = self.output_dir / "completions" / f"step_{step:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kept, indent=1))
        self.tracker.log_artifact(path, "completions")
        out = {f"val/{k}": v for k, v in metrics.items()}
        if r.eval_samples == 1:
            out.pop("val/maj_accuracy")
        return out

    def evaluate_benchmark(self, benchmark: Benchmark, step: int) -> dict[str, float]:
        """val/<benchmark>/mean_at_<n>, _se, maj_at_<n>, pass_at_<k>, ... (see `mgrpo.evaluation`),
        with the same seeds as `mgrpo-eval` on this step's checkpoint. Never enters the history
        the monitor and the objective read."""
        cfg, r = self.cfg, self.cfg.rollout
        n = samples_for(benchmark, cfg.trainer.eval_benchmark_samples, r.eval_temperature)
        extract, equivalent = benchmark.grader(self.equivalent)
        problems = benchmark.problems
        share = np.array_split(np.arange(len(problems)), self.ranks.world_size)[self.ranks.rank].tolist()
        prompts = encode_prompts(self.tokenizer, [problems[i].prompt for i in share], r.max_prompt_tokens)
        engine = self.engines.acquire("policy", self.versions["policy"], lambda: full_parameters(self.policy, self.compute_dtype))
        seeds = eval_seeds(cfg.trainer.seed, step, share, benchmark.name)
        mine = sample_answers(engine, prompts, share, n, r.eval_temperature, r.max_new_tokens, seeds, extract) if share else EvalSamples([], [], [], [])
        gathered = self.ranks.all_gather_objects(mine)
        if not self.ranks.is_main:
            return {}
        samples = EvalSamples([], [], [], [])
        for part in gathered:
            samples.extend(part)
        result = score_benchmark(benchmark.name, samples, problems, n, equivalent, cfg.trainer.log_completions)
        path = self.output_dir / "completions" / f"step_{step:06d}_{benchmark.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(c) + "\n" for c in result.completions))
        self.tracker.log_artifact(path, "completions")
        return result.tracking_metrics()

    def monitor(self, step: int) -> bool:
        """Run the collapse detectors on the curves so far (rank 0); True on every rank when the
        run should stop. They read the selection set's val/accuracy and the train/* curves
        (`MONITORED`), never a benchmark's val/<benchmark>/* metrics."""
        mon = self.cfg.monitor
        if not mon.enabled or (step % mon.every != 0 and step != self.cfg.trainer.total_steps):
            return False
        stop = False
        if self.ranks.is_main:
            heldout_size = min(len(self.data.heldout), self.cfg.trainer.eval_size or len(self.data.heldout))
            verdict = check_history(self.history, Thresholds(heldout_size=heldout_size))
            tags = verdict.tags()
            if verdict.collapsed and self.collapse is None:
                self.collapse = {"step": verdict.collapse_step, "detectors": list(verdict.fired)}
                log.warning("collapse detected: %s", verdict.summary())
            if self.collapse is not None:
                # The verdict may later clear if the run recovers; the first detection is kept.
                tags["mgrpo.first_collapse_step"] = str(self.collapse["step"])
                tags["mgrpo.first_collapse_detectors"] = ",".join(self.collapse["detectors"])
            self.tracker.set_tags(tags)
            stop = verdict.collapsed and mon.stop_on_collapse
        return bool(self.ranks.broadcast_object(stop))

    def objective(self) -> float:
        """trainer.objective over the selection set's val/accuracy curve (never a benchmark)."""
        curve = [v for _, v in self.history[ACCURACY]]
        if not curve:
            return float("nan")
        final, peak = curve[-1], max(curve)
        if self.cfg.trainer.objective == "stable_accuracy":
            return final - self.cfg.trainer.objective_drop_penalty * (peak - final)
        return final

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> float:
        t = self.cfg.trainer
        if self.finished or self.step >= t.total_steps:
            if self.ranks.is_main:
                print(
                    f"[mgrpo] the run in {self.output_dir} already finished at step {self.step}; nothing to do "
                    "(use another trainer.output_dir, or other overrides, for a new run)",
                    file=sys.stderr,
                )
            return self.objective()
        if self.step == 0:
            self.log_metrics(self.evaluate(0), 0)
            self.save()
        progress = None
        if t.progress and self.ranks.is_main:
            from tqdm.auto import tqdm

            progress = tqdm(total=t.total_steps, initial=self.step, desc=f"{self.cfg.algo.name}", unit="step", dynamic_ncols=True)
        stop_early = False
        while self.step < t.total_steps and not stop_early:
            step = self.step + 1
            start = time.perf_counter()
            metrics = self.train_step(step)
            self.step = step
            if step % t.eval_every == 0 or step == t.total_steps:
                with timed(metrics, "eval"):
                    metrics.update(self.evaluate(step))
            metrics["time/step"] = time.perf_counter() - start
            self.log_metrics(metrics, step)
            stop_early = self.monitor(step)
            self.finished = stop_early or step == t.total_steps
            if step % t.checkpoint_every == 0 or self.finished:
                self.save()
            if progress is not None:
                progress.update(1)
                shown = {"reward": metrics["train/pseudo_reward"], "H": metrics["train/entropy"]}
                if self.history["val/accuracy"]:
                    shown["val"] = self.history["val/accuracy"][-1][1]
                progress.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
        if progress is not None:
            progress.close()
        if stop_early:
            self.tracker.set_tags({"mgrpo.stopped_early": "collapse"})
        return self.objective()

    def close(self) -> None:
        self.engines.close()
        self.equivalent.close()
