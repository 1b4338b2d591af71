"""The rollout interface: generate n samples per prompt from one model.

Every engine returns a `Rollouts`: token ids laid out as [left-padded prompt | right-padded
response], the masks, and the response texts. The trainer scores log-probs and entropies itself
(one forward pass per role), so an engine only samples; the log-probs an engine reports are kept
as `sampler_logprobs` to measure rollout-vs-trainer drift, which is how stale weights in a
separate inference engine show up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass
class Rollouts:
    """A batch of B = len(prompts) * n samples."""

    sequences: torch.Tensor
    """(B, P + R) long: left-padded prompt tokens followed by right-padded response tokens."""
    attention_mask: torch.Tensor
    """(B, P + R) long: 1 on real prompt tokens and on response tokens up to and including EOS."""
    response_mask: torch.Tensor
    """(B, R) bool: the response tokens that count (up to and including the first EOS)."""
    group_ids: torch.Tensor
    """(B,) long: index of each sample's prompt in the prompt list."""
    texts: list[str]
    """(B,) decoded responses without special tokens."""
    sampler_logprobs: Optional[torch.Tensor] = None
    """(B, R) float32 log-probs reported by the engine, when it reports them."""

    @property
    def prompt_length(self) -> int:
        """P: the response starts at this column of `sequences`."""
        return self.sequences.shape[1] - self.response_mask.shape[1]

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) number of counted response tokens."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return self.sequences.shape[0]


class RolloutEngine(Protocol):
    """Samples responses from a model. One engine per model role (policy, momentum)."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (no-op when it shares them)."""

    def generate(
        self,
        prompts: list[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        seed: int,
    ) -> Rollouts:
        """n samples for each prompt (temperature 0 = greedy), reproducible from `seed`.

        Sample j of prompt i is row i * n + j, and group_ids[i * n + j] = i.
        """


def response_mask_from_tokens(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Tokens up to and including the first EOS (all tokens when there is none).

    Works when the pad token equals EOS, since it looks only at positions.

    Args:
        responses: (B, R) generated token ids.
    Returns:
        (B, R) bool.
    """
    is_eos = responses == eos_token_id
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    return eos_before == 0


def pad_responses(token_lists: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Right-pad ragged response token lists into a (B, R) tensor with R >= 1."""
    width = max([len(t) for t in token_lists] + [1])
    out = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out
