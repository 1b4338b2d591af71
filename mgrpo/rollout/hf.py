"""Rollouts with Hugging Face `generate`: the embedded default, on CPU or any device.

The engine shares the model object, so it always samples from current weights. Sampling is pure
ancestral sampling at the given temperature (top_k=0, top_p=1), because the trainer measures
entropy and log-probs of that exact distribution. Each call runs under its own seed in a forked
RNG, so policy and momentum samples use separate random streams and a resumed run draws the same
samples as an uninterrupted one.
"""

from __future__ import annotations

import torch

from mgrpo.rollout.base import Rollouts, response_mask_from_tokens


class HFRolloutEngine:
    """`RolloutEngine` over a transformers causal LM."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 1024, max_prompt_tokens: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        if tokenizer.padding_side != "left":
            raise ValueError("HFRolloutEngine needs a left-padding tokenizer (tokenizer.padding_side='left')")

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int, seed: int) -> Rollouts:
        device = next(self.model.parameters()).device
        self.tokenizer.truncation_side = "left"
        encoded = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_prompt_tokens,
        )
        prompt_ids = encoded["input_ids"].repeat_interleave(n, dim=0).to(device)
        prompt_mask = encoded["attention_mask"].repeat_interleave(n, dim=0).to(device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
        eos_id = self.tokenizer.eos_token_id
        was_training = self.model.training
        self.model.eval()
        outputs = []
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            for start in range(0, prompt_ids.shape[0], self.batch_size):
                rows = slice(start, start + self.batch_size)
                out = self.model.generate(
                    input_ids=prompt_ids[rows],
                    attention_mask=prompt_mask[rows],
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos_id,
                    num_beams=1,
                    **sampling,
                )
                outputs.append(out[:, prompt_ids.shape[1] :])
        self.model.train(was_training)
        width = max(o.shape[1] for o in outputs)
        responses = torch.cat(
            [torch.nn.functional.pad(o, (0, width - o.shape[1]), value=self.tokenizer.pad_token_id) for o in outputs]
        ).cpu()
        response_mask = response_mask_from_tokens(responses, eos_id)
        responses = torch.where(response_mask, responses, torch.full_like(responses, self.tokenizer.pad_token_id))
        sequences = torch.cat([prompt_ids.cpu(), responses], dim=1)
        attention_mask = torch.cat([prompt_mask.cpu(), response_mask.long()], dim=1)
        texts = self.tokenizer.batch_decode(
            [row[mask].tolist() for row, mask in zip(responses, response_mask)], skip_special_tokens=True
        )
        group_ids = torch.arange(len(prompts)).repeat_interleave(n)
        return Rollouts(sequences, attention_mask, response_mask, group_ids, texts)
