"""Rollout engines behind one interface (`RolloutEngine`), chosen by `rollout.engine`."""

from __future__ import annotations

from mgrpo.rollout.base import RolloutEngine, Rollouts
from mgrpo.rollout.hf import HFRolloutEngine


def make_engine(engine: str, model, tokenizer, model_path: str, dtype: str, rollout_cfg) -> RolloutEngine:
    """Build the engine of one model role. `rollout_cfg` is a `RolloutConfig`."""
    if engine == "hf":
        return HFRolloutEngine(
            model, tokenizer, batch_size=rollout_cfg.eval_batch_size, max_prompt_tokens=rollout_cfg.max_prompt_tokens
        )
    if engine == "vllm":
        from mgrpo.rollout.vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(
            model_path,
            tokenizer,
            dtype=dtype,
            gpu_memory_utilization=rollout_cfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=rollout_cfg.vllm_tensor_parallel_size,
            max_model_len=rollout_cfg.max_new_tokens + rollout_cfg.max_prompt_tokens,
        )
    raise ValueError(f"unknown rollout.engine {engine!r}; allowed: hf, vllm")


__all__ = ["RolloutEngine", "Rollouts", "HFRolloutEngine", "make_engine"]
