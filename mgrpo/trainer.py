"""The M-GRPO training loop, as short named phases.

One step: rollout -> score -> filter -> vote -> advantages -> update -> ema -> log, then periodic
evaluation, collapse monitoring and checkpointing. SRT and ground-truth GRPO run this same loop;
they differ only in config (see `mgrpo.algos.registry`).

Where this departs from the paper's Algorithm 1 (each is a config setting):
- momentum samples only vote; they are never trained on (they come from another policy);
- the reference model is loaded only when the KL coefficient is > 0;
- hidden labels, when the data has them, are read only by the diagnostics
  (train/label_accuracy, train/true_accuracy, val/*) unless algo.reward=ground_truth.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import transformers

from mgrpo import checkpoint as ckpt
from mgrpo.algos.answers import AnswerEquivalence, extract_answer
from mgrpo.algos.ema import ema_update_
from mgrpo.algos.entropy import logprobs_and_entropy, masked_mean, sampled_entropy_estimate, trajectory_entropy
from mgrpo.algos.filtering import iqr_keep_mask
from mgrpo.algos.losses import policy_loss
from mgrpo.algos.registry import REWARD_SOURCES
from mgrpo.algos.rewards import grpo_advantages
from mgrpo.algos.voting import VoteResult, majority_vote
from mgrpo.config import Config
from mgrpo.evaluation import evaluate
from mgrpo.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from mgrpo.rollout import make_engine
from mgrpo.rollout.base import Rollouts
from mgrpo.tasks import Problem, load_task
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
    "model.tiny.cache_dir",
    "rollout.eval_batch_size",
    "rollout.score_chunk_size",
}


def stream_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one random stream of one step: independent of other streams and of resumes."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0])


@dataclass
class Scores:
    """Per-sample quantities from one forward pass of the model that generated the samples."""

    logprobs: torch.Tensor
    """(B, R) float32 log-probs of the response tokens at the sampling temperature."""
    entropy: torch.Tensor
    """(B,) trajectory entropy."""


@contextmanager
def timed(metrics: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    metrics[f"time/{phase}"] = time.perf_counter() - start


# ---- phases (each callable on its own) ------------------------------------------------------


@torch.no_grad()
def score_phase(
    model: torch.nn.Module,
    rollouts: Rollouts,
    temperature: float,
    chunk_size: int,
    entropy_estimator: str = "full",
) -> Scores:
    """Log-probs of the response tokens and trajectory entropy, under `model`, in chunks."""
    was_training = model.training
    model.eval()
    logprobs, entropy = [], []
    for start in range(0, len(rollouts), chunk_size):
        rows = slice(start, start + chunk_size)
        lp, ent = response_logprobs(model, rollouts, rows, temperature, with_entropy=entropy_estimator == "full")
        mask = rollouts.response_mask[rows].to(lp.device)
        logprobs.append(lp.cpu())
        h = trajectory_entropy(ent, mask) if ent is not None else sampled_entropy_estimate(lp, mask)
        entropy.append(h.cpu())
    model.train(was_training)
    return Scores(torch.cat(logprobs), torch.cat(entropy))


def response_logprobs(
    model: torch.nn.Module, rollouts: Rollouts, rows: slice | torch.Tensor, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(b, R) log-probs (and token entropies) of the response tokens of the selected rows."""
    device = next(model.parameters()).device
    sequences = rollouts.sequences[rows].to(device)
    attention = rollouts.attention_mask[rows].to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=sequences, attention_mask=attention, position_ids=positions).logits
    start = rollouts.prompt_length
    response_logits = logits[:, start - 1 : -1]
    return logprobs_and_entropy(response_logits, sequences[:, start:], temperature, with_entropy=with_entropy)


def filter_phase(entropy: torch.Tensor, group_ids: torch.Tensor, iqr_k: Optional[float]) -> torch.Tensor:
    """(B,) keep mask over the pooled samples (see `mgrpo.algos.filtering`)."""
    return iqr_keep_mask(entropy, group_ids, iqr_k)


def vote_phase(
    texts: list[str], group_ids: torch.Tensor, keep: torch.Tensor, equivalent: AnswerEquivalence, min_vote_share: float
) -> tuple[list[Optional[str]], VoteResult]:
    """Extract answers and vote over the kept pooled samples."""
    answers = [extract_answer(t) for t in texts]
    vote = majority_vote(answers, group_ids.tolist(), equivalent, voters=keep.tolist(), min_vote_share=min_vote_share)
    return answers, vote


def update_phase(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    old_logprobs: torch.Tensor,
    ref_logprobs: Optional[torch.Tensor],
    advantages: torch.Tensor,
    members: torch.Tensor,
    cfg: Config,
    shuffle_seed: int = 0,
) -> dict[str, float]:
    """Clipped PG (+ KL) over the kept policy samples: epochs x mini-batches x micro-batches.

    With one mini-batch per epoch (the default) this is a single on-policy gradient step, where
    the importance ratio is 1 and clipping is inactive; with several, samples are shuffled into
    mini-batches with `shuffle_seed` and later ones are off-policy."""
    a, o = cfg.algo, cfg.optim
    loss_mask = rollouts.response_mask & members.unsqueeze(-1)
    trainable = torch.nonzero(loss_mask.any(-1)).squeeze(-1)
    totals: dict[str, float] = {"loss": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "kl": 0.0, "pg_loss": 0.0}
    if trainable.numel() == 0:
        return {**totals, "trained_samples": 0.0}
    device = next(model.parameters()).device
    model.train()
    updates = 0
    generator = torch.Generator().manual_seed(shuffle_seed)
    for _ in range(a.ppo_epochs):
        order = trainable[torch.randperm(trainable.numel(), generator=generator)] if a.mini_batches > 1 else trainable
        for mini in order.chunk(a.mini_batches):
            optimizer.zero_grad(set_to_none=True)
            num_tokens = float(loss_mask[mini].sum())
            num_seqs = float(mini.numel())
            for micro in mini.split(o.micro_batch_size):
                logprobs, _ = response_logprobs(model, rollouts, micro, cfg.rollout.temperature)
                loss, metrics = policy_loss(
                    logprobs,
                    old_logprobs[micro].to(device),
                    None if ref_logprobs is None else ref_logprobs[micro].to(device),
                    advantages[micro].to(device),
                    loss_mask[micro].to(device),
                    clip_ratio=a.clip_ratio,
                    clip_ratio_dual=a.clip_ratio_dual,
                    kl_coef=a.kl_coef,
                    kl_estimator=a.kl_estimator,
                    agg_mode=a.loss_agg_mode,
                    num_tokens=num_tokens,
                    num_seqs=num_seqs,
                    norm_length=float(cfg.rollout.max_new_tokens),
                )
                loss.backward()
                weight = float(loss_mask[micro].sum()) / max(num_tokens, 1.0)
                totals["loss"] += float(loss.detach())
                totals["clip_frac"] += metrics["clip_frac"] * weight
                totals["pg_loss"] += metrics["pg_loss"]
                totals["kl"] += metrics.get("kl", 0.0) * weight
            max_norm = o.grad_clip if o.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            totals["grad_norm"] += float(grad_norm)
            updates += 1
    result = {k: v / updates for k, v in totals.items()}
    result["trained_samples"] = float(trainable.numel())
    return result


def lr_lambda(step: int, total_steps: int, warmup_ratio: float, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the base lr after `step` scheduler steps: linear warmup, then cosine or constant."""
    warmup = int(round(warmup_ratio * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- the trainer ----------------------------------------------------------------------------


class Trainer:
    """Holds the models and state of one run; `fit()` runs it to the end (or resumes it)."""

    def __init__(self, cfg: Config, output_dir: Path, tracker: Tracker) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.tracker = tracker
        torch.set_num_threads(cfg.trainer.num_threads)
        transformers.utils.logging.disable_progress_bar()
        device = cfg.trainer.device
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        self.data = load_task(cfg.data)
        self.model_path = resolve_model_path(cfg.model, cfg.data)
        self.tokenizer = load_tokenizer(self.model_path)
        dtype = getattr(torch, cfg.model.dtype)
        self.policy = load_causal_lm(self.model_path, dtype, self.device)
        a = cfg.algo
        self.num_momentum = a.resolved_num_momentum_rollouts()
        self.num_policy = a.num_policy_rollouts()
        self.momentum = None
        if self.num_momentum > 0:
            self.momentum = copy.deepcopy(self.policy).float().requires_grad_(False)
        self.reference = None
        if a.kl_coef > 0:
            self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        total = cfg.trainer.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, total, o.warmup_ratio, o.schedule, o.min_lr_ratio)
        )
        r = cfg.rollout
        self.policy_engine = make_engine(r.engine, self.policy, self.tokenizer, self.model_path, cfg.model.dtype, r)
        self.momentum_engine = (
            make_engine(r.engine, self.momentum, self.tokenizer, self.model_path, "float32", r) if self.momentum is not None else None
        )
        self.equivalent = AnswerEquivalence()
        self.step = 0
        self.history: dict[str, list[tuple[int, float]]] = {k: [] for k in MONITORED}
        self.collapse: Optional[dict[str, Any]] = None
        self.finished = False

    # ---- bookkeeping ---------------------------------------------------------------------
    def fingerprint(self) -> dict[str, str]:
        flat = flatten(asdict(self.cfg))
        keep = ("algo.", "model.", "data.", "rollout.", "optim.", "trainer.")
        return {k: v for k, v in flat.items() if k.startswith(keep) and k not in FINGERPRINT_EXCLUDE}

    def resume(self) -> bool:
        """Load the newest checkpoint of this output dir, if any. True when resumed."""
        found = ckpt.latest_checkpoint(self.output_dir)
        if found is None:
            return False
        ckpt.check_compatible(found, self.fingerprint())
        ckpt.load_model_weights(self.policy, found.path / "policy")
        if self.momentum is not None:
            ckpt.load_model_weights(self.momentum, found.path / "momentum")
        ckpt.load_training_state(found, self.optimizer, self.scheduler)
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
        return ckpt.save_checkpoint(
            self.output_dir,
            self.step,
            self.policy,
            self.momentum,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            state,
            self.cfg.trainer.keep_last,
        )

    def batch_problems(self, step: int) -> list[Problem]:
        """Prompts of step `step` (1-based): consecutive slices of a seeded permutation per epoch."""
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
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        for key in MONITORED:
            if key in clean:
                self.history[key].append((step, clean[key]))
        self.tracker.log_metrics(clean, step)

    # ---- one step --------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        cfg, a, r = self.cfg, self.cfg.algo, self.cfg.rollout
        metrics: dict[str, float] = {}
        problems = self.batch_problems(step)
        prompts = [p.prompt for p in problems]

        with timed(metrics, "rollout"):
            self.policy_engine.sync_weights(self.policy)
            policy_ro = self.policy_engine.generate(prompts, self.num_policy, r.temperature, r.max_new_tokens, stream_seed(cfg.trainer.seed, step, 0))
            momentum_ro = None
            if self.momentum_engine is not None:
                self.momentum_engine.sync_weights(self.momentum)
                momentum_ro = self.momentum_engine.generate(prompts, self.num_momentum, r.temperature, r.max_new_tokens, stream_seed(cfg.trainer.seed, step, 1))

        with timed(metrics, "score"):
            policy_scores = score_phase(self.policy, policy_ro, r.temperature, r.score_chunk_size, a.entropy_estimator)
            ref_logprobs = None
            if self.reference is not None:
                ref_logprobs = score_phase(self.reference, policy_ro, r.temperature, r.score_chunk_size, "sampled").logprobs
        entropies, groups, texts = [policy_scores.entropy], [policy_ro.group_ids], list(policy_ro.texts)
        with timed(metrics, "entropy"):
            if momentum_ro is not None:
                momentum_scores = score_phase(self.momentum, momentum_ro, r.temperature, r.score_chunk_size, a.entropy_estimator)
                entropies.append(momentum_scores.entropy)
                groups.append(momentum_ro.group_ids)
                texts += momentum_ro.texts
                metrics["train/entropy_momentum"] = float(momentum_scores.entropy.mean())
        pooled_entropy, pooled_groups = torch.cat(entropies), torch.cat(groups)
        num_policy_samples = len(policy_ro)

        with timed(metrics, "filter"):
            keep = filter_phase(pooled_entropy, pooled_groups, a.iqr_k)

        with timed(metrics, "vote"):
            answers, vote = vote_phase(texts, pooled_groups, keep, self.equivalent, a.min_vote_share)

        with timed(metrics, "advantages"):
            gold = [problems[g].answer for g in pooled_groups.tolist()]
            rewards = REWARD_SOURCES[a.reward](answers, pooled_groups.tolist(), vote, gold, self.equivalent)
            policy_rewards = rewards[:num_policy_samples]
            members = keep[:num_policy_samples]
            advantages, adv_metrics = grpo_advantages(policy_rewards, policy_ro.group_ids, members, a.adv_eps, a.adv_std)

        with timed(metrics, "update"):
            update = update_phase(
                self.policy,
                self.optimizer,
                policy_ro,
                policy_scores.logprobs,
                ref_logprobs,
                advantages,
                members,
                cfg,
                shuffle_seed=stream_seed(cfg.trainer.seed, step, 3),
            )
            self.scheduler.step()

        with timed(metrics, "ema"):
            if self.momentum is not None:
                metrics["train/ema_param_distance"] = ema_update_(
                    self.momentum.named_parameters(), self.policy.named_parameters(), a.momentum
                )["ema_param_distance"]

        metrics.update(self.step_metrics(problems, policy_ro, policy_scores, answers, vote, keep, policy_rewards, advantages, adv_metrics, update))
        if policy_ro.sampler_logprobs is not None:
            drift = (policy_ro.sampler_logprobs - policy_scores.logprobs).abs()
            metrics["train/rollout_logprob_drift"] = float(masked_mean(drift, policy_ro.response_mask).mean())
        return metrics

    def step_metrics(self, problems, policy_ro, policy_scores, answers, vote, keep, rewards, advantages, adv_metrics, update) -> dict[str, float]:
        """The per-step signals of DESIGN.md section 4. Gold answers are read here only."""
        n_policy = len(policy_ro)
        policy_answers = answers[:n_policy]
        group_votes = [vote.groups[g] for g in range(len(problems))]
        labeled = [g for g, v in enumerate(group_votes) if v.label is not None]
        m = {
            "train/reward": float(rewards.mean()),
            "train/pseudo_reward": float(np.mean(vote.agrees[:n_policy])),
            "train/entropy": float(policy_scores.entropy.mean()),
            "train/vote_share": float(np.mean([v.vote_share for v in group_votes])),
            "train/num_answer_classes": float(np.mean([v.num_classes for v in group_votes])),
            "train/unlabeled_frac": 1.0 - len(labeled) / len(problems),
            "train/filtered_frac": float(1.0 - keep.float().mean()),
            "train/zero_std_frac": adv_metrics["zero_std_frac"],
            "train/no_answer_frac": float(np.mean([a is None for a in policy_answers])),
            "train/response_length": float(policy_ro.response_lengths.float().mean()),
            "train/advantage_abs_mean": float(advantages.abs().mean()),
            "train/loss": update["loss"],
            "train/pg_loss": update["pg_loss"],
            "train/grad_norm": update["grad_norm"],
            "train/clip_frac": update["clip_frac"],
            "train/trained_samples": update["trained_samples"],
            "train/lr": self.scheduler.get_last_lr()[0],
        }
        if self.reference is not None:
            m["train/kl"] = update["kl"]
        if all(p.answer is not None for p in problems):
            group_ids = policy_ro.group_ids.tolist()
            m["train/true_accuracy"] = float(
                np.mean([a is not None and self.equivalent(problems[g].answer, a) for a, g in zip(policy_answers, group_ids)])
            )
            m["train/label_accuracy"] = (
                float(np.mean([self.equivalent(problems[g].answer, group_votes[g].label) for g in labeled])) if labeled else 0.0
            )
        return m

    # ---- evaluation, monitoring ------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        cfg, r = self.cfg, self.cfg.rollout
        heldout = self.data.heldout[: cfg.trainer.eval_size] if cfg.trainer.eval_size else self.data.heldout
        result = evaluate(
            self.policy_engine,
            [p.prompt for p in heldout],
            [p.answer for p in heldout],
            self.equivalent,
            r.eval_temperature,
            r.eval_samples,
            r.max_new_tokens,
            stream_seed(cfg.trainer.seed, step, 2),
            cfg.trainer.log_completions,
        )
        path = self.output_dir / "completions" / f"step_{step:06d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.samples, indent=1))
        self.tracker.log_artifact(path, "completions")
        metrics = {f"val/{k}": v for k, v in result.metrics.items()}
        if r.eval_samples == 1:
            metrics.pop("val/maj_accuracy")
        return metrics

    def monitor(self, step: int) -> bool:
        """Run the collapse detectors on the curves so far; True when the run should stop."""
        mon = self.cfg.monitor
        if not mon.enabled or (step % mon.every != 0 and step != self.cfg.trainer.total_steps):
            return False
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
        return verdict.collapsed and mon.stop_on_collapse

    def objective(self) -> float:
        curve = [v for _, v in self.history["val/accuracy"]]
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
        if t.progress:
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
