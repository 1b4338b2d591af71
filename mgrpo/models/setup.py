"""The trainer's models on this rank: policy (float32 master weights), momentum, reference, and
the optimizer and schedule over the policy. See `mgrpo.sharding` for the precision rules."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from mgrpo.models.loading import load_causal_lm
from mgrpo.models.scorer import ResponseScorer
from mgrpo.parallel import Ranks
from mgrpo.phases import lr_lambda
from mgrpo.sharding import shard

if TYPE_CHECKING:
    from mgrpo.config import Config


@dataclass
class TrainingModels:
    policy: ResponseScorer
    """Trainable, float32 master weights (sharded on several ranks)."""
    momentum: Optional[ResponseScorer]
    """The EMA of the policy, float32, sharded like the policy; None when no sample comes from it."""
    reference: Optional[ResponseScorer]
    """Frozen copy of the initial policy in the compute dtype, for the KL term; None when kl_coef is 0."""
    optimizer: torch.optim.Optimizer
    scheduler: Any


def build_training_models(cfg: Config, model_path: str, ranks: Ranks) -> TrainingModels:
    compute = getattr(torch, cfg.model.dtype)
    mixed = None if compute == torch.float32 else compute
    chunk = cfg.rollout.logits_chunk_tokens
    lm = load_causal_lm(model_path, torch.float32, ranks.device)
    momentum_lm = copy.deepcopy(lm).requires_grad_(False) if cfg.algo.resolved_num_momentum_rollouts() > 0 else None
    reference_lm = copy.deepcopy(lm).to(compute).requires_grad_(False).eval() if cfg.algo.kl_coef > 0 else None
    if cfg.model.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = shard(ResponseScorer(lm, chunk), ranks, mixed)
    momentum = shard(ResponseScorer(momentum_lm, chunk), ranks, mixed) if momentum_lm is not None else None
    reference = None
    if reference_lm is not None:
        # On CPU runs every shard is in CPU memory already: offloading applies to GPUs only.
        offload = cfg.model.reference_cpu_offload and ranks.device.type == "cuda"
        reference = shard(ResponseScorer(reference_lm, chunk), ranks, None, cpu_offload=offload)
    o = cfg.optim
    optimizer = torch.optim.AdamW(policy.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    total = cfg.trainer.total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, total, o.warmup_ratio, o.schedule, o.min_lr_ratio))
    return TrainingModels(policy, momentum, reference, optimizer, scheduler)
