"""The phases of one training step, each a function a test can call on its own.

rollout (the engines) -> score -> filter -> vote -> advantages -> update -> ema (`mgrpo.algos`).
Phases see one rank's share of the batch and know nothing of ranks: the numbers that must agree
across ranks (token counts, how many micro-batches every rank runs) come in through an
`UpdatePlan` that the trainer settles with the other ranks beforehand.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from mgrpo.algos.answers import extract_answer
from mgrpo.algos.entropy import sampled_entropy_estimate, trajectory_entropy
from mgrpo.algos.filtering import iqr_keep_mask
from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.algos.losses import policy_loss
from mgrpo.algos.self_certainty import trajectory_self_certainty
from mgrpo.config import ConfigError
from mgrpo.metric_names import phase_time
from mgrpo.algos.voting import VoteResult, majority_vote
from mgrpo.models.scorer import ResponseScorer
from mgrpo.padding import group_by_length, longest_first
from mgrpo.rollout.base import Rollouts
from mgrpo.sharding import reshard

ComputeContext = Callable[[], AbstractContextManager]


def stream_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one random stream of one step: independent of other streams and of resumes."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0])


@contextmanager
def timed(metrics: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    metrics[phase_time(phase)] = time.perf_counter() - start


@dataclass
class Scores:
    """Per-sample quantities from one forward pass of a model over samples."""

    logprobs: torch.Tensor
    """(B, R) float32 log-probs of the response tokens at the sampling temperature."""
    entropy: torch.Tensor
    """(B,) trajectory entropy."""
    self_certainty: Optional[torch.Tensor] = None
    """(B,) mean self-certainty over the response, when asked for (`self_certainty_vocab`)."""


@torch.no_grad()
def score_phase(
    scorer: ResponseScorer,
    rollouts: Rollouts,
    temperature: float,
    chunk_size: int,
    entropy_estimator: str = "full",
    context: ComputeContext = nullcontext,
    self_certainty_vocab: Optional[int] = None,
) -> Scores:
    """Log-probs of the response tokens and trajectory entropy under `scorer`, `chunk_size`
    sequences per forward pass, and each sample's self-certainty over the first
    `self_certainty_vocab` ids when that is given (in the same pass). The rows are scored
    longest first, so each pass holds rows of similar length (the outputs keep the rollouts'
    order). Under FSDP every rank must run it on the same number of rows."""
    was_training = scorer.training
    scorer.eval()
    device = compute_device(scorer)
    order = longest_first(rollouts.attention_mask.sum(-1))
    logprobs, entropy, certainty = [], [], []
    for rows in order.split(chunk_size):
        mask = rollouts.response_mask[rows].to(device)
        with context():
            lp, ent, *rest = scorer(
                rollouts.sequences[rows].to(device),
                rollouts.attention_mask[rows].to(device),
                mask,
                temperature,
                with_entropy=entropy_estimator == "full",
                self_certainty_vocab=self_certainty_vocab,
            )
        logprobs.append(lp.cpu())
        h = trajectory_entropy(ent, mask) if ent is not None else sampled_entropy_estimate(lp, mask)
        entropy.append(h.cpu())
        if rest:
            certainty.append(trajectory_self_certainty(rest[0], mask).cpu())
    reshard(scorer)
    scorer.train(was_training)
    back = torch.argsort(order)
    return Scores(torch.cat(logprobs)[back], torch.cat(entropy)[back], torch.cat(certainty)[back] if certainty else None)


def take_pad_ratio(scorers: list[ResponseScorer]) -> tuple[float, float]:
    """(decoder positions / real tokens, real tokens) over the passes `scorers` ran since the
    last call (`ResponseScorer.take_position_counts`): 1.0 when no pass ran over padding."""
    positions, tokens = (sum(c) for c in zip(*(s.take_position_counts() for s in scorers)))
    return (positions / tokens if tokens else 1.0), float(tokens)


def compute_device(model: torch.nn.Module) -> torch.device:
    """Where `model`'s forward runs and returns its outputs, hence where its inputs and every
    tensor combined with its outputs (masks, old and reference log-probs, advantages) go.

    For FSDP2-sharded parameters (DTensors) that is their mesh's device, to which FSDP gathers
    the shards and moves the inputs; not the shards' own device, which is the CPU under
    `CPUOffloadPolicy` (`model.reference_cpu_offload`). The device has no index: `.to()` then
    places tensors on the current device, as FSDP does. Unsharded, it is the parameters' device.
    """
    param = next(model.parameters())
    mesh = getattr(param, "device_mesh", None)
    return param.device if mesh is None else torch.device(mesh.device_type)


def sampler_entropy(rollouts: Rollouts, estimator: str) -> Optional[torch.Tensor]:
    """(B,) trajectory entropy from what the sampler recorded while it generated, or None when it
    did not record what `estimator` needs ('full': each step's full-distribution entropy, which
    the HF engine records; 'sampled': the sampled tokens' log-probs, which every engine reports).
    Either equals what `score_phase` computes from the same weights, without a forward pass."""
    if estimator == "full" and rollouts.sampler_entropy is not None:
        return trajectory_entropy(rollouts.sampler_entropy, rollouts.response_mask)
    if estimator == "sampled" and rollouts.sampler_logprobs is not None:
        return sampled_entropy_estimate(rollouts.sampler_logprobs, rollouts.response_mask)
    return None


def sampler_self_certainty(rollouts: Rollouts) -> Optional[torch.Tensor]:
    """(B,) each sample's self-certainty from what the sampler recorded (the HF engine does), or
    None (then `score_phase(..., self_certainty_vocab=...)` computes the same from the weights)."""
    if rollouts.sampler_self_certainty is None:
        return None
    return trajectory_self_certainty(rollouts.sampler_self_certainty, rollouts.response_mask)


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


# ---- the update ---------------------------------------------------------------------------------


@dataclass
class UpdatePlan:
    """Which local rows each optimizer step trains on, micro-batch by micro-batch.

    `micro_batches[s]` lists the row-index tensors of optimizer step s; an empty tensor is a
    padding micro-batch (a forward and backward that contribute nothing), so that every rank runs
    as many passes as the busiest one. `num_tokens[s]` / `num_seqs[s]` are the loss normalisers
    of step s: counts over *all* ranks, so that summing gradients over ranks gives the 1-rank
    gradient of the same samples.
    """

    micro_batches: list[list[torch.Tensor]]
    num_tokens: list[float]
    num_seqs: list[float]


def plan_update(
    loss_mask: torch.Tensor, epochs: int, mini_batches: int, micro_batch_size: int, shuffle_seed: int,
    lengths: Optional[torch.Tensor] = None,
) -> UpdatePlan:
    """This rank's plan, with local counts (see `UpdatePlan`; the trainer makes them global).

    Only rows with at least one trained token are planned. With one mini-batch per epoch the
    rows keep their order; with several, each epoch shuffles them with `shuffle_seed`'s stream
    and splits them into exactly `mini_batches` parts (some possibly empty). With `lengths`, each
    step's rows are then grouped by length into its micro-batches (`mgrpo.padding.group_by_length`):
    the same rows and as many micro-batches per step, so only the float summation order changes.

    Args:
        loss_mask: (B, R) bool, the tokens that carry loss.
        lengths: (B,) each row's real-token count (prompt and response).
    """
    trainable = torch.nonzero(loss_mask.any(-1)).squeeze(-1)
    generator = torch.Generator().manual_seed(shuffle_seed)
    steps: list[list[torch.Tensor]] = []
    tokens: list[float] = []
    seqs: list[float] = []
    for _ in range(epochs):
        order = trainable[torch.randperm(trainable.numel(), generator=generator)] if mini_batches > 1 else trainable
        for part in np.array_split(np.arange(order.numel()), mini_batches):
            rows = order[torch.as_tensor(part, dtype=torch.long)]
            split = rows.split(micro_batch_size) if lengths is None else group_by_length(rows, lengths, micro_batch_size)
            steps.append(list(split) if rows.numel() else [])
            tokens.append(float(loss_mask[rows].sum()))
            seqs.append(float(rows.numel()))
    return UpdatePlan(steps, tokens, seqs)


def pad_plan(plan: UpdatePlan, micro_batch_counts: list[int]) -> UpdatePlan:
    """`plan` with empty micro-batches appended so step s has `micro_batch_counts[s]` of them."""
    padded = [rows + [torch.zeros(0, dtype=torch.long)] * (count - len(rows)) for rows, count in zip(plan.micro_batches, micro_batch_counts)]
    return UpdatePlan(padded, plan.num_tokens, plan.num_seqs)


@dataclass
class LossSettings:
    """The loss's settings, as plain values (see `AlgoConfig` for each)."""

    temperature: float
    clip_ratio: float
    clip_ratio_dual: Optional[float]
    kl_coef: float
    kl_estimator: str
    agg_mode: str
    norm_length: float
    grad_clip: float
    tis_cap: Optional[float] = None


def update_phase(
    scorer: ResponseScorer,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    old_logprobs: Optional[torch.Tensor],
    ref_logprobs: Optional[torch.Tensor],
    advantages: torch.Tensor,
    members: torch.Tensor,
    plan: UpdatePlan,
    settings: LossSettings,
    context: ComputeContext = nullcontext,
    before_first_step: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
) -> dict[str, float]:
    """Clipped PG (+ KL) over the kept policy samples, one optimizer step per planned step.

    With one epoch and one mini-batch (the defaults) this is a single on-policy gradient step,
    where the importance ratio is 1 and clipping is inactive; later mini-batches are off-policy.
    On-policy, pass `old_logprobs=None`: the pass's own detached log-probs are then the old
    log-probs (they are those of the weights that sampled, bit for bit), so no separate scoring
    pass is needed. With `settings.tis_cap`, each token's PG term is weighted by TIS against
    `rollouts.sampler_logprobs` (`mgrpo.algos.losses.tis_weights`). Metrics are this rank's parts
    of global quantities: loss, pg_loss, kl, clip_frac and, with TIS, tis_weight_mean and
    tis_clip_frac are already divided by the global counts (sum them over ranks); grad_norm is
    global.

    Args:
        old_logprobs: (B, R) log-probs of the sampling weights, or None (on-policy, see above).
        ref_logprobs: (B, R); advantages: (B,); members: (B,) bool, the kept policy samples (the
            loss mask is response_mask & members).
        before_first_step: called with the first step's log-probs ((B, R), 0 on rows it did not
            forward) and its rows ((B,) bool) after its backward passes and before the optimizer
            step, e.g. to check them against the sampler's. It may raise to stop the update.
    """
    tis = settings.tis_cap is not None
    if tis and rollouts.sampler_logprobs is None:
        raise ConfigError(
            f"algo.tis_cap={settings.tis_cap} weights the loss by the sampler's log-probs, but these rollouts carry "
            "none (greedy decoding, or an engine that does not record them). Set algo.tis_cap=null, or sample "
            "with an engine that records log-probs (rollout.engine=hf or vllm, rollout.temperature > 0)."
        )
    loss_mask = rollouts.response_mask & members.unsqueeze(-1)
    weighted = ("clip_frac", "tis_weight_mean", "tis_clip_frac") if tis else ("clip_frac",)
    totals = {key: 0.0 for key in ("loss", "grad_norm", "kl", "pg_loss", *weighted)}
    device = compute_device(scorer)
    scorer.train()
    updates = 0
    for micro_batches, num_tokens, num_seqs in zip(plan.micro_batches, plan.num_tokens, plan.num_seqs):
        if num_tokens == 0:
            continue  # no rank has anything to train on in this step: no pass, no optimizer step
        optimizer.zero_grad(set_to_none=True)
        first_logprobs = torch.zeros(loss_mask.shape, dtype=torch.float32)
        forwarded = torch.zeros(loss_mask.shape[0], dtype=torch.bool)
        for rows in micro_batches:
            padding = rows.numel() == 0
            if padding:
                rows = torch.zeros(1, dtype=torch.long)
            mask = torch.zeros_like(loss_mask[rows]) if padding else loss_mask[rows]
            with context():
                logprobs, _ = scorer(
                    rollouts.sequences[rows].to(device),
                    rollouts.attention_mask[rows].to(device),
                    rollouts.response_mask[rows].to(device),
                    settings.temperature,
                )
            loss, metrics = policy_loss(
                logprobs,
                logprobs.detach() if old_logprobs is None else old_logprobs[rows].to(device),
                None if ref_logprobs is None else ref_logprobs[rows].to(device),
                advantages[rows].to(device),
                mask.to(device),
                clip_ratio=settings.clip_ratio,
                clip_ratio_dual=settings.clip_ratio_dual,
                kl_coef=settings.kl_coef,
                kl_estimator=settings.kl_estimator,
                agg_mode=settings.agg_mode,
                sampler_logprobs=rollouts.sampler_logprobs[rows].to(device) if tis else None,
                tis_cap=settings.tis_cap,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                norm_length=settings.norm_length,
            )
            loss.backward()
            if padding:
                continue
            first_logprobs[rows] = logprobs.detach().float().cpu()
            forwarded[rows] = True
            weight = float(mask.sum()) / num_tokens
            totals["loss"] += float(loss.detach())
            for key in weighted:  # this micro-batch's token means, weighted into the step's
                totals[key] += metrics[key] * weight
            totals["pg_loss"] += metrics["pg_loss"]
            totals["kl"] += metrics.get("kl", 0.0)  # already divided by the step's global count
        if before_first_step is not None and updates == 0:
            before_first_step(first_logprobs, forwarded)
        max_norm = settings.grad_clip if settings.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in scorer.parameters() if p.grad is not None], max_norm)
        full_norm = getattr(grad_norm, "full_tensor", None)
        totals["grad_norm"] += float(full_norm() if callable(full_norm) else grad_norm)
        optimizer.step()
        updates += 1
    if not updates:  # nothing was trained on any rank (the counts are global): no TIS weights to report
        for key in ("tis_weight_mean", "tis_clip_frac"):
            totals.pop(key, None)
    result = {k: v / max(updates, 1) for k, v in totals.items()}
    result["trained_samples"] = float(loss_mask.any(-1).sum()) if updates else 0.0
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
