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
- hidden labels, when the data has them, are read only by the diagnostics (collapse/label_accuracy,
  collapse/true_accuracy, collapse/selection_accuracy, eval/*) unless algo.reward=ground_truth.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import transformers

from mgrpo import checkpoint as ckpt
from mgrpo import metric_names as names
from mgrpo.algos.answers import extract_answer
from mgrpo.algos.ema import ema_update_
from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.algos.registry import NEEDS_SELF_CERTAINTY, REWARD_SOURCES
from mgrpo.algos.rewards import first_per_group, grpo_advantages
from mgrpo.config import Config
from mgrpo.evaluation import prepare_benchmarks
from mgrpo.exports import export_run_models
from mgrpo.in_training_eval import InTrainingEvaluator
from mgrpo.models.loading import load_tokenizer, resolve_model_path
from mgrpo.models.setup import build_training_models
from mgrpo.parallel import Ranks
from mgrpo.phases import (
    LossSettings,
    filter_phase,
    pad_plan,
    plan_update,
    sampler_entropy,
    sampler_self_certainty,
    score_phase,
    stream_seed,
    take_pad_ratio,
    timed,
    update_phase,
    vote_phase,
)
from mgrpo.requeue import JobStopped, StopRequest
from mgrpo.rollout import build_engines, encode_prompts, sample_seed
from mgrpo.rollout.base import Rollouts
from mgrpo.run_monitor import RunMonitor
from mgrpo.sampled_scores import global_drift, momentum_entropy, policy_drift_hook, policy_self_certainty
from mgrpo.sharding import compute_context, full_parameters
from mgrpo.step_metrics import PseudoLabelMemory, role_signals, step_metrics, step_pseudo_labels
from mgrpo.tasks import Problem, load_task, prepare_task
from mgrpo.tracking import Tracker
from mgrpo.vote_check import vote_check

log = logging.getLogger(__name__)

SHUFFLE_STREAM = 3


class Trainer:
    """Holds the models and state of one run on this rank; `fit()` runs it to the end (or resumes it)."""

    def __init__(
        self, cfg: Config, output_dir: Path, tracker: Tracker, ranks: Optional[Ranks] = None, stop: Optional[StopRequest] = None
    ) -> None:
        """`stop`: SLURM's warning, checked after every step (`mgrpo.requeue`); None outside SLURM."""
        self.cfg = cfg
        self.stop = stop
        self.output_dir = output_dir
        self.tracker = tracker
        self.ranks = ranks or Ranks(device=torch.device("cuda" if cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available()) else "cpu"))
        torch.set_num_threads(cfg.trainer.num_threads)
        transformers.utils.logging.disable_progress_bar()
        self.model_path = resolve_model_path(cfg.model, cfg.data)
        self.tokenizer = load_tokenizer(self.model_path)
        # Prompts as the model sees them (chat template), over-long ones dropped and counted.
        prepared = prepare_task(load_task(cfg.data), self.tokenizer, cfg.data.chat_template, cfg.rollout.max_prompt_tokens)
        self.prepared = prepared  # with the counts dropped for length, for the run's dataset inputs
        self.data = prepared.data
        t = cfg.trainer
        benchmarks = prepare_benchmarks(t.eval_benchmarks, cfg.data, self.tokenizer, cfg.rollout.max_prompt_tokens, t.eval_benchmark_limit)
        self.compute_dtype = getattr(torch, cfg.model.dtype)
        self.context = compute_context(self.ranks, self.compute_dtype)
        models = build_training_models(cfg, self.model_path, self.ranks)
        self.policy, self.momentum, self.reference = models.policy, models.momentum, models.reference
        self.optimizer, self.scheduler = models.optimizer, models.scheduler
        a = cfg.algo
        self.num_momentum = a.resolved_num_momentum_rollouts()
        self.num_policy = a.num_policy_rollouts()
        self.num_trained = a.num_trained_rollouts()  # the first of each prompt's policy samples; all vote
        self.engines = build_engines(
            cfg.rollout,
            self.ranks,
            {"policy": self.policy.lm, "momentum": self.momentum.lm if self.momentum is not None else None},
            self.tokenizer,
            self.model_path,
            self.compute_dtype,
            self.context,
            cfg.trainer.seed,
            chat_template=cfg.data.chat_template,
        )
        self.versions = {"policy": 0, "momentum": 0}
        self.equivalent = AnswerEquivalence()
        self.evaluator = InTrainingEvaluator(
            cfg, self.ranks, self.tokenizer, self.equivalent, output_dir, tracker, self.data.heldout, benchmarks
        )
        self.step = 0
        self.monitor = RunMonitor(cfg.monitor, cfg.trainer, len(self.evaluator.selection))
        self.label_memory = PseudoLabelMemory()  # rank 0: uid -> last pseudo-label, in checkpoints
        self.finished = False

    # ---- bookkeeping ---------------------------------------------------------------------
    def fingerprint(self) -> dict[str, str]:
        return ckpt.config_fingerprint(asdict(self.cfg))

    def training_state(self) -> ckpt.TrainingState:
        return ckpt.TrainingState(self.policy, self.optimizer, self.scheduler, self.momentum)

    def resume(self) -> bool:
        """Load the newest checkpoint of this output dir, if any. True when resumed."""
        found = ckpt.latest_checkpoint(self.output_dir)
        if found is None:
            return False
        ckpt.check_compatible(found, self.fingerprint())
        if ckpt.has_resume_state(found):  # else a finished run's, with only its record left
            ckpt.load_checkpoint(found, self.ranks, self.training_state())
        self.step = int(found.state["step"])
        self.monitor.load_state_dict(found.state)
        self.label_memory.load_state_dict(found.state)
        self.finished = bool(found.state.get("finished", False))
        self.tracker.load_state_dict(found.state.get("tracking", {}))
        log.info("resumed from %s at step %d (MLflow run %s)", found.path, self.step, self.tracker.run_id)
        return True

    def save(self) -> Path:
        state = {
            "fingerprint": self.fingerprint(),
            "tracking": self.tracker.state_dict(),
            **self.monitor.state_dict(),
            **self.label_memory.state_dict(),
            "finished": self.finished,
            "data_position": self.step * self.cfg.trainer.prompts_per_step,
        }
        return ckpt.save_checkpoint(self.output_dir, self.step, self.ranks, self.training_state(), state, self.cfg.trainer.keep_last)

    def export(self) -> Path:
        """The Hugging Face export of this step (`mgrpo.exports`), on every rank."""
        momentum = self.momentum if self.cfg.trainer.export_momentum else None
        return export_run_models(self.output_dir, self.step, self.ranks, self.policy, momentum, self.compute_dtype, self.tokenizer, self.tracker.run_id)

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
        self.monitor.record(clean, step)
        self.tracker.log_metrics(clean, step)

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, role: str, prompts: list[list[int]], n: int, temperature: float, seeds: list[int]) -> Rollouts:
        """n samples per prompt from the current weights of `role` (handed off first if needed)."""
        model = self.policy if role == "policy" else self.momentum
        engine = self.engines.acquire(role, self.versions[role], lambda: full_parameters(model, self.compute_dtype))
        return engine.generate(prompts, n, temperature, self.cfg.rollout.max_new_tokens, seeds)

    # ---- one step --------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        cfg, a, r = self.cfg, self.cfg.algo, self.cfg.rollout
        times: dict[str, float] = {}
        scorers = [m for m in (self.policy, self.reference, self.momentum) if m is not None]
        take_pad_ratio(scorers)  # count this step's passes only, not the evaluation's before it
        problems = self.batch_problems(step)
        mine = self.ranks.shard(len(problems))
        problems, indices = problems[mine], list(range(mine.start, mine.stop))
        prompts = encode_prompts(self.tokenizer, [p.prompt for p in problems], r.max_prompt_tokens)

        with timed(times, "rollout"):
            # Each role's answers are parsed by the grader's worker while the next phases run.
            policy_ro = self.sample("policy", prompts, self.num_policy, r.temperature, [sample_seed(cfg.trainer.seed, step, "policy", i) for i in indices])
            self.equivalent.prefetch(extract_answer(t) for t in policy_ro.texts)
            momentum_ro = None
            if self.momentum is not None:
                momentum_ro = self.sample("momentum", prompts, self.num_momentum, r.temperature, [sample_seed(cfg.trainer.seed, step, "momentum", i) for i in indices])
                self.equivalent.prefetch(extract_answer(t) for t in momentum_ro.texts)

        on_policy = a.ppo_epochs == 1 and a.mini_batches == 1
        drifts: dict[str, tuple[float, float]] = {}
        with timed(times, "score"):
            policy_entropy = sampler_entropy(policy_ro, a.entropy_estimator)
            old_logprobs = None
            if policy_entropy is None or not on_policy:
                scores = score_phase(self.policy, policy_ro, r.temperature, r.score_chunk_size, a.entropy_estimator, self.context)
                policy_entropy = scores.entropy if policy_entropy is None else policy_entropy
                old_logprobs = None if on_policy else scores.logprobs
                drifts[names.ROLLOUT_LOGPROB_DRIFT] = global_drift(self.ranks, policy_ro, scores.logprobs)
            ref_logprobs = None
            if self.reference is not None:
                ref_logprobs = score_phase(self.reference, policy_ro, r.temperature, r.score_chunk_size, "sampled", self.context).logprobs
        entropies, groups, texts = [policy_entropy], [policy_ro.group_ids], list(policy_ro.texts)
        extra = {}
        with timed(times, "entropy"):
            if momentum_ro is not None:
                probe_every = None if self.engines.engines["momentum"].shares_weights else self.num_momentum
                momentum_entropies = momentum_entropy(self.momentum, momentum_ro, a.entropy_estimator, r, self.context, self.ranks, drifts, probe_every)
                entropies.append(momentum_entropies)
                groups.append(momentum_ro.group_ids)
                texts += momentum_ro.texts
                extra[names.ENTROPY_MOMENTUM] = (float(momentum_entropies.mean()), len(momentum_ro))
        pooled_entropy, pooled_groups = torch.cat(entropies), torch.cat(groups)
        num_policy_samples = len(policy_ro)

        with timed(times, "filter"):
            keep = filter_phase(pooled_entropy, pooled_groups, a.iqr_k)

        with timed(times, "vote"):
            answers, vote = vote_phase(texts, pooled_groups, keep, self.equivalent, a.min_vote_share)

        with timed(times, "advantages"):
            gold = [problems[g].answer for g in pooled_groups.tolist()]
            needs_pass = a.reward in NEEDS_SELF_CERTAINTY
            certainty = policy_self_certainty(self.policy, policy_ro, r, self.context, len(self.tokenizer)) if needs_pass else sampler_self_certainty(policy_ro)
            if certainty is not None:
                extra[names.SELF_CERTAINTY] = (float(certainty.mean()), len(certainty))
            rewards = REWARD_SOURCES[a.reward](answers, pooled_groups.tolist(), vote, gold, self.equivalent, self_certainty=certainty)
            policy_rewards = rewards[:num_policy_samples]
            members = keep[:num_policy_samples] & first_per_group(policy_ro.group_ids, self.num_trained)
            advantages, adv_metrics = grpo_advantages(policy_rewards, policy_ro.group_ids, members, a.adv_eps, a.adv_std)

        lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses
        with timed(times, "update"):
            self.engines.sleep_all()
            # Without a scoring pass the policy's drift is checked on the update's own forward,
            # before its optimizer step.
            guard = None
            if names.ROLLOUT_LOGPROB_DRIFT not in drifts and policy_ro.sampler_logprobs is not None:
                guard = policy_drift_hook(self.ranks, policy_ro, drifts)
            update = update_phase(
                self.policy,
                self.optimizer,
                policy_ro,
                old_logprobs,
                ref_logprobs,
                advantages,
                members,
                self.global_plan(policy_ro, members, step),
                self.loss_settings(),
                self.context,
                guard,
            )
            self.scheduler.step()
            self.versions["policy"] += 1

        ema_squared_distance = None
        with timed(times, "ema"):
            if self.momentum is not None:
                distance = ema_update_(self.momentum.named_parameters(), self.policy.named_parameters(), a.momentum)["ema_param_distance"]
                ema_squared_distance = distance**2
                self.versions["momentum"] += 1

        local = step_metrics(problems, policy_ro, policy_entropy, answers, vote, keep, policy_rewards, advantages, members, adv_metrics, update, self.equivalent)
        local.weighted.update(extra)
        local.weighted[names.PAD_RATIO] = take_pad_ratio(scorers)
        with timed(times, "signals"):  # label-free health signals that need more than one vote
            if momentum_ro is not None:
                local.weighted.update(role_signals(answers, pooled_groups.tolist(), num_policy_samples, vote, self.equivalent))
            step_labels = self.ranks.all_gather_objects(step_pseudo_labels(problems, vote))
            label_signals = self.label_memory.observe([p for part in step_labels for p in part], self.equivalent) if self.ranks.is_main else {}
        local.maxed.update(times)
        if ema_squared_distance is not None:
            local.summed[names.EMA_PARAM_DISTANCE] = ema_squared_distance
        metrics = self.ranks.reduce_metrics(local.weighted, local.summed, local.maxed)
        if names.EMA_PARAM_DISTANCE in metrics:
            metrics[names.EMA_PARAM_DISTANCE] = metrics[names.EMA_PARAM_DISTANCE] ** 0.5
        if self.reference is None:
            metrics.pop(names.KL, None)
        metrics[names.LR] = lr
        metrics.update(label_signals)
        metrics.update({key: drift for key, (drift, tokens) in drifts.items() if tokens > 0})
        return metrics

    def loss_settings(self) -> LossSettings:
        a = self.cfg.algo
        return LossSettings(
            self.cfg.rollout.temperature, a.clip_ratio, a.clip_ratio_dual, a.kl_coef, a.kl_estimator,
            a.loss_agg_mode, float(self.cfg.rollout.max_new_tokens), self.cfg.optim.grad_clip, a.tis_cap,
        )

    def global_plan(self, policy_ro: Rollouts, members: torch.Tensor, step: int):
        """This rank's update plan with loss normalisers counted over all ranks, padded so every
        rank runs as many micro-batches as the busiest (none trains on nothing silently)."""
        a = self.cfg.algo
        loss_mask = policy_ro.response_mask & members.unsqueeze(-1)
        plan = plan_update(loss_mask, a.ppo_epochs, a.mini_batches, self.cfg.optim.micro_batch_size, stream_seed(self.cfg.trainer.seed, step, SHUFFLE_STREAM) + self.ranks.rank, policy_ro.attention_mask.sum(-1))
        counts = self.ranks.all_reduce(plan.num_tokens + plan.num_seqs)
        plan.num_tokens, plan.num_seqs = counts[: len(plan.num_tokens)], counts[len(plan.num_tokens) :]
        most = self.ranks.all_reduce([len(m) for m in plan.micro_batches], op="max")
        return pad_plan(plan, [int(c) for c in most])

    # ---- evaluation, monitoring ------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """Selection set and benchmarks (`mgrpo.in_training_eval`) with the current policy, and
        the vote check (`mgrpo.vote_check`)."""
        engine = self.engines.acquire("policy", self.versions["policy"], lambda: full_parameters(self.policy, self.compute_dtype))
        metrics = self.evaluator.evaluate(step, engine)
        metrics.update(vote_check(self, step))
        return metrics

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
            return self.monitor.objective()
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
            metrics[names.STEP_TIME] = time.perf_counter() - start
            self.log_metrics(metrics, step)
            stop_early = False
            if self.monitor.due(step):
                stop_early = bool(self.ranks.broadcast_object(self.monitor.check(self.tracker) if self.ranks.is_main else False))
            self.finished = stop_early or step == t.total_steps
            # Every rank asks at the same point, so all stop after the same step.
            warned = not self.finished and self.stop is not None and self.stop.agreed(self.ranks)
            exporting = self.finished or (t.export_every > 0 and step % t.export_every == 0)
            if exporting:
                # Before the checkpoint: a kill in between resumes before this step and exports it again.
                self.export()
            if step % t.checkpoint_every == 0 or exporting or warned:
                saved = self.save()
            if self.finished and not t.keep_finished_state and self.ranks.is_main:
                freed = ckpt.drop_resume_state(self.output_dir)
                log.info("finished: deleted %.2f GB of resume state (trainer.keep_finished_state=false)", freed / 1e9)
            if warned:
                if progress is not None:
                    progress.close()
                raise JobStopped(step, saved)
            if progress is not None:
                progress.update(1)
                shown = {"reward": metrics[names.PSEUDO_REWARD], "H": metrics[names.ENTROPY]}
                if self.monitor.latest(names.SELECTION_ACCURACY) is not None:
                    shown["val"] = self.monitor.latest(names.SELECTION_ACCURACY)
                progress.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
        if progress is not None:
            progress.close()
        if stop_early:
            self.tracker.set_tags({"mgrpo.stopped_early": "collapse"})
        return self.monitor.objective()

    def close(self) -> None:
        self.engines.close()
        self.equivalent.close()
