"""Shared by the vLLM tests and their torchrun worker: the reference log-probs of an HF forward,
the drift between them and the sampler's, and reproducible weight changes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from mgrpo.algos.entropy import logprobs_and_entropy, masked_mean
from mgrpo.rollout.base import Rollouts

KV_CACHE_GB = 1 / 16
"""64 MiB: plenty for the tiny model (1.5 KB of KV per token in float32)."""
MAX_MODEL_LEN = 512


def load_hf(checkpoint: Path) -> PreTrainedModel:
    """The checkpoint as a float32 HF model in eval mode."""
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@torch.no_grad()
def perturb(model: PreTrainedModel, seed: int, scale: float = 0.05) -> None:
    """Add N(0, scale^2) noise to every parameter, the same for the same seed (a stand-in for an
    optimizer step that moves every weight)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * scale)


@torch.no_grad()
def reference_logprobs(model: PreTrainedModel, rollouts: Rollouts, temperature: float) -> torch.Tensor:
    """(B, R) log-probs of the response tokens under `model` at `temperature`, from one forward
    over the left-padded sequences (positions count real tokens only)."""
    positions = (rollouts.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=rollouts.sequences, attention_mask=rollouts.attention_mask, position_ids=positions
    ).logits
    start = rollouts.prompt_length
    logprobs, _ = logprobs_and_entropy(
        logits[:, start - 1 : -1], rollouts.sequences[:, start:], temperature, with_entropy=False
    )
    return logprobs


def drift(model: PreTrainedModel, rollouts: Rollouts, temperature: float) -> float:
    """Mean |sampler log-prob - reference log-prob| over all response tokens."""
    assert rollouts.sampler_logprobs is not None
    gap = (rollouts.sampler_logprobs - reference_logprobs(model, rollouts, temperature)).abs()
    return float(masked_mean(gap.flatten(), rollouts.response_mask.flatten()))


def response_tokens(rollouts: Rollouts, rows: Sequence[int]) -> list[list[int]]:
    """The counted response tokens (EOS included) of these rows."""
    return [rollouts.sequences[r, rollouts.prompt_length :][rollouts.response_mask[r]].tolist() for r in rows]
