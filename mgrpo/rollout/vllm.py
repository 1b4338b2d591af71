"""Rollouts with vLLM on GPUs (optional extra: `pip install mgrpo[vllm]`).

NOT RUN IN THIS PROJECT'S CI: our machines have no GPU. This engine is kept thin and written to
vLLM's documented offline API (`LLM`, `SamplingParams`, `LLM.generate`), with the same
`RolloutEngine` interface that the HF engine implements and the tests exercise.

Weight hand-off: vLLM keeps its own copy of the weights, so `sync_weights` must be called after
every policy update (and every EMA step for the momentum engine); the trainer does so. A stale
copy shows up in the `train/rollout_logprob_drift` metric (sampler vs trainer log-probs).
The colocated hand-off loads weights through the model runner's `load_weights`, as TRL's
colocate mode does; under FSDP the full tensors are gathered once for this, and only here.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from mgrpo.rollout.base import Rollouts, pad_responses


def _require_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "rollout.engine=vllm needs vLLM and a GPU: `pip install 'mgrpo[vllm]'`, "
            "or use rollout.engine=hf"
        ) from err
    return vllm


def _full_tensors(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, tensor in model.state_dict().items():
        full = getattr(tensor, "full_tensor", None)
        yield name, full() if callable(full) else tensor


class VLLMRolloutEngine:
    """`RolloutEngine` over an in-process `vllm.LLM` (one per model role)."""

    def __init__(self, model_path: str, tokenizer, dtype: str, gpu_memory_utilization: float, tensor_parallel_size: int, max_model_len: int) -> None:
        vllm = _require_vllm()
        self._vllm = vllm
        self.tokenizer = tokenizer
        self.llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
        )

    def sync_weights(self, model: torch.nn.Module) -> None:
        runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        runner_model.load_weights(_full_tensors(model))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int, seed: int) -> Rollouts:
        params = self._vllm.SamplingParams(
            n=n, temperature=temperature, top_p=1.0, top_k=-1, max_tokens=max_new_tokens, seed=seed, logprobs=0
        )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        token_lists, logprob_lists, texts = [], [], []
        for output in outputs:
            for completion in output.outputs:
                ids = list(completion.token_ids)
                token_lists.append(ids)
                logprob_lists.append([lp[t].logprob for lp, t in zip(completion.logprobs or [], ids)])
                texts.append(completion.text)
        pad = self.tokenizer.pad_token_id
        responses = pad_responses(token_lists, pad)
        response_mask = pad_responses([[1] * len(t) for t in token_lists], 0).bool()
        sampler_logprobs = torch.zeros(responses.shape, dtype=torch.float32)
        for i, lps in enumerate(logprob_lists):
            sampler_logprobs[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        prompt_ids = encoded["input_ids"].repeat_interleave(n, dim=0)
        prompt_mask = encoded["attention_mask"].repeat_interleave(n, dim=0)
        return Rollouts(
            sequences=torch.cat([prompt_ids, responses], dim=1),
            attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
            response_mask=response_mask,
            group_ids=torch.arange(len(prompts)).repeat_interleave(n),
            texts=texts,
            sampler_logprobs=sampler_logprobs,
        )
