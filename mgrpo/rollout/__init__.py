"""Rollout engines behind one interface (`RolloutEngine`), chosen by `rollout.engine`, and the
engines of one rank (`build_engines`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from mgrpo.rollout.base import RolloutEngine, Rollouts, encode_prompts, sample_seed
from mgrpo.rollout.handoff import EngineSlots
from mgrpo.rollout.hf import HFRolloutEngine
from mgrpo.rollout.stops import stop_token_ids

if TYPE_CHECKING:
    from mgrpo.config import RolloutConfig
    from mgrpo.parallel import Ranks


def build_engines(
    r: RolloutConfig,
    ranks: Ranks,
    models: dict[str, Optional[torch.nn.Module]],
    tokenizer,
    model_path: str,
    compute_dtype: torch.dtype,
    compute_context,
    seed: int,
    *,
    chat_template: bool,
) -> EngineSlots:
    """This rank's engines for the roles in `models` (role -> the trainer's HF model, or None
    when the role is unused).

    The HF engine shares the trainer's model on one rank. On several ranks the trainer's models
    are sharded, so it keeps its own full copy in the compute dtype, like vLLM does.
    `chat_template`: whether the prompts are chat-templated (`data.chat_template` and a tokenizer
    with a template), which adds the template's end-of-turn token to the stop ids.
    """
    from mgrpo.models.loading import load_generation_config
    from mgrpo.tasks.prompts import has_chat_template

    stops = stop_token_ids(tokenizer, load_generation_config(model_path), chat_template=chat_template and has_chat_template(tokenizer))
    roles = [role for role, model in models.items() if model is not None]
    if r.engine == "hf" and not ranks.distributed:
        return EngineSlots(
            {role: HFRolloutEngine(models[role], tokenizer, r.eval_batch_size, True, compute_context, stops) for role in roles}
        )

    def new_engine() -> RolloutEngine:
        if r.engine == "hf":
            from mgrpo.models.loading import load_causal_lm

            copy = load_causal_lm(model_path, compute_dtype, ranks.device).requires_grad_(False)
            return HFRolloutEngine(copy, tokenizer, r.eval_batch_size, shares_weights=False, stop_ids=stops)
        from mgrpo.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(
            model_path,
            tokenizer,
            dtype=compute_dtype,
            max_model_len=r.max_prompt_tokens + r.max_new_tokens,
            seed=seed,
            gpu_memory_utilization=r.vllm_gpu_memory_utilization,
            kv_cache_gb=r.vllm_kv_cache_gb,
            tensor_parallel_size=r.vllm_tensor_parallel_size,
            enforce_eager=r.vllm_enforce_eager,
            enable_sleep_mode=r.vllm_sleep_mode and ranks.device.type == "cuda",
            distributed_executor_backend="external_launcher" if ranks.distributed else None,
            stop_ids=stops,
        )

    # A stale engine on any rank stops all of them alike (the check runs inside each hand-off).
    agree = (lambda count: int(ranks.all_reduce([count])[0])) if ranks.distributed else None
    if r.engine_weights == "shared":
        engine = new_engine()
        return EngineSlots({role: engine for role in roles}, agree)
    return EngineSlots({role: new_engine() for role in roles}, agree)


__all__ = [
    "EngineSlots", "HFRolloutEngine", "RolloutEngine", "Rollouts", "build_engines", "encode_prompts", "sample_seed",
    "stop_token_ids",
]
