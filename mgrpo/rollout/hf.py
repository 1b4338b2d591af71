"""Rollouts with Hugging Face `generate`: the embedded default, on CPU or any device.

Sampling is pure ancestral sampling at the given temperature (no top-k, no top-p), because the
trainer measures entropy and log-probs of that exact distribution. It is done by Gumbel-max: each
step, every sample adds Gumbel noise from its *own* generator to log softmax(logits / T) and takes
the argmax, which draws exactly from softmax(logits / T). Sample j of prompt i owns a generator
seeded from (seeds[i], j), so what it draws depends on nothing else in the batch: not on the
other prompts, the batch size, or which rank runs it. The same step records the log-prob of the
drawn token, the full-distribution entropy at T and the self-certainty KL(U || p) at T, U uniform
over the tokenizer's vocabulary (`Rollouts.sampler_logprobs`, `Rollouts.sampler_entropy`,
`Rollouts.sampler_self_certainty`): two reductions over a log-softmax the sampler computes anyway.

The engine either shares the trainer's model (one rank: `shares_weights`, no hand-off) or owns a
copy (several ranks, where the trainer's model is sharded) that `load_weights` refreshes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterable, Optional, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mgrpo.algos.self_certainty import self_certainty_from_log_probs
from mgrpo.rollout.base import Rollouts, assemble_rollouts, left_pad, sample_seed_of
from mgrpo.rollout.handoff import tensor_checksum
from mgrpo.rollout.stops import stop_token_ids

_TINY = torch.finfo(torch.float32).tiny
NOISE_BLOCK_BYTES = 64 * 2**20
"""Memory for the sampler's pre-drawn uniforms (rows x steps x vocabulary float32)."""


def sample_generators(seeds: Sequence[int], n: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample, row i * n + j seeded with `sample_seed_of(seeds[i], j)`."""
    return [torch.Generator(device=device).manual_seed(sample_seed_of(seed, j)) for seed in seeds for j in range(n)]


class GumbelMaxSampler(LogitsProcessor):
    """Turns greedy decoding into per-row seeded sampling at `temperature` (see the module
    docstring) and records each drawn token's log-prob, and the entropy of the distribution it was
    drawn from, and its self-certainty over the first `vocab_size` ids, at that temperature: the
    quantities the trainer would otherwise need a forward pass for (the IQR filter's trajectory
    entropy, the drift metric's and TIS's log-probs, Intuitor's reward)."""

    def __init__(self, generators: list[torch.Generator], temperature: float, vocab_size: Optional[int] = None) -> None:
        self.generators = generators
        self.temperature = temperature
        self.vocab_size = vocab_size
        self.logprobs: list[torch.Tensor] = []
        self.entropies: list[torch.Tensor] = []
        self.self_certainties: list[torch.Tensor] = []
        self._uniform: Optional[torch.Tensor] = None  # (rows, steps, V): the next steps' draws
        self._next = 0

    def _draws(self, vocab: int) -> torch.Tensor:
        """(rows, V) uniform draws for this step. A generator's draws for k steps at once are the
        same numbers as k successive per-step draws, so rows draw blocks of steps (bounded by
        NOISE_BLOCK_BYTES), one call per row per block instead of one per row per step."""
        if self._uniform is None or self._next == self._uniform.shape[1]:
            steps = max(1, min(32, NOISE_BLOCK_BYTES // (4 * vocab * len(self.generators))))
            self._uniform = torch.stack([torch.rand(steps, vocab, generator=g, device=g.device) for g in self.generators])
            self._next = 0
        self._next += 1
        return self._uniform[:, self._next - 1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        vocab = log_p.shape[-1]
        gumbel = -torch.log(-torch.log(self._draws(vocab).clamp(min=_TINY, max=1.0 - 1e-7)))
        perturbed = log_p + gumbel
        choice = perturbed.argmax(-1, keepdim=True)
        self.logprobs.append(log_p.gather(-1, choice).squeeze(-1).cpu())
        # A token with probability 0 (a -inf logit) contributes 0, not NaN.
        self.entropies.append(-torch.where(log_p > -torch.inf, log_p.exp() * log_p, 0.0).sum(-1).cpu())
        vocab = vocab if self.vocab_size is None else min(self.vocab_size, vocab)
        self.self_certainties.append(self_certainty_from_log_probs(log_p, vocab).cpu())
        return perturbed


class HFRolloutEngine:
    """`RolloutEngine` over a transformers causal LM."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        batch_size: int = 1024,
        shares_weights: bool = True,
        compute_context: Optional[Callable[[], AbstractContextManager]] = None,
        stop_ids: Optional[Sequence[int]] = None,
    ) -> None:
        """
        Args:
            model: the model to sample from (shared with the trainer, or the engine's own copy).
            batch_size: rows per `generate` call.
            shares_weights: False when `model` is the engine's own copy, refreshed by load_weights.
            compute_context: entered around generation, e.g. bf16 autocast over fp32 weights.
            stop_ids: the ids a response ends at (`mgrpo.rollout.stops.stop_token_ids`; the
                trainer passes the run's). None: the tokenizer's and the model's generation
                config's EOS, for prompts without a chat template.
        """
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.shares_weights = shares_weights
        self.compute_context = compute_context or nullcontext
        if stop_ids is None:
            stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None), chat_template=False)
        self.stop_ids = list(stop_ids)
        # The real vocabulary: the LM head may be padded past it (see mgrpo.algos.self_certainty).
        self.vocab_size = len(tokenizer)

    @property
    def checked_weights(self) -> dict[str, torch.dtype]:
        """Every parameter: the engine's copy is the HF model itself, read back as it is."""
        return {name: p.dtype for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"the engine's model has no parameter {name!r}")
            params[name].copy_(tensor)

    def weight_checksums(self, names: Sequence[str]) -> dict[str, int]:
        params = dict(self.model.named_parameters())
        return {name: tensor_checksum(params[name]) for name in names if name in params}

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, temperature: float, max_new_tokens: int, seeds: Sequence[int]
    ) -> Rollouts:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need as many seeds, got {len(seeds)}")
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = left_pad(prompts, self.tokenizer.pad_token_id)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0).to(device)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0).to(device)
        generators = sample_generators(seeds, n, device) if temperature > 0 else None
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_ids,
        )
        was_training = self.model.training
        self.model.eval()
        responses: list[list[int]] = []
        logprobs: Optional[list[list[float]]] = [] if generators is not None else None
        entropies: Optional[list[list[float]]] = [] if generators is not None else None
        self_certainties: Optional[list[list[float]]] = [] if generators is not None else None
        with self.compute_context():
            for start in range(0, prompt_ids.shape[0], self.batch_size):
                rows = slice(start, start + self.batch_size)
                processors = LogitsProcessorList()
                sampler = None
                if generators is not None:
                    sampler = GumbelMaxSampler(generators[rows], temperature, self.vocab_size)
                    processors.append(sampler)
                out = self.model.generate(
                    input_ids=prompt_ids[rows],
                    attention_mask=prompt_mask[rows],
                    generation_config=config,
                    logits_processor=processors,
                )
                responses += out[:, prompt_ids.shape[1] :].cpu().tolist()
                if sampler is not None:
                    logprobs += torch.stack(sampler.logprobs, dim=1).tolist()
                    entropies += torch.stack(sampler.entropies, dim=1).tolist()
                    self_certainties += torch.stack(sampler.self_certainties, dim=1).tolist()
        self.model.train(was_training)
        return assemble_rollouts(prompts, n, responses, self.tokenizer, self.stop_ids, logprobs, entropies, self_certainties)
