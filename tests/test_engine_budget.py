"""The engine's KV budget: how many full-length sequences a cache holds, and the paper preset's
rollouts and evaluation fitting it without preemption (conf/resources/h200x8.yaml)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mgrpo.rollout.vllm_setup import KV_BLOCK_TOKENS, engine_sequences, full_length_sequences, kv_bytes_per_token
from mgrpo.tasks.benchmarks import BENCHMARKS
from tests.trainer_helpers import compose_config

QWEN3_4B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2560,
    "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "tie_word_embeddings": True, "max_position_embeddings": 32768,
}
"""Qwen/Qwen3-4B-Base's shapes (its config.json, the fields the KV size reads)."""


def test_full_length_sequences_by_hand():
    # 1,000 bytes a token, sequences of 200 tokens: rounded up to 256 (2 blocks of 128) = 256,000 bytes each.
    assert full_length_sequences(1_024_000, 1000, 200) == 4
    assert full_length_sequences(1_023_999, 1000, 200) == 3
    assert full_length_sequences(1_024_000, 1000, 256) == 4, "a whole number of blocks is not rounded"
    assert full_length_sequences(10, 1000, 200) == 1, "at least one (check_servable refuses a cache below one)"


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_never_more_sequences_than_vllm_blocks_hold(block):
    """Whatever block size vLLM picks (all divide KV_BLOCK_TOKENS), the count fits its blocks."""
    assert KV_BLOCK_TOKENS % block == 0
    per_token = 147_456
    for length in (100, 1000, 3584, 4097):
        for cache in (2**30, 7 * 2**30 + 12345, 64 * 2**30):
            blocks = cache // (per_token * block)
            assert full_length_sequences(cache, per_token, length) * math.ceil(length / block) <= max(blocks, math.ceil(length / block))


def test_paper_preset_runs_every_call_at_once_without_preemption(tmp_path):
    """The paper preset on Qwen3-4B's shapes: the engine's sequence limit (from its KV cache) is
    at least every call a rank makes, in training rollouts and in each evaluation set."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_4B))
    cfg = compose_config(["experiment=paper", "resources=h200x8"])
    r, t = cfg.rollout, cfg.trainer
    ranks = cfg.resources.tasks_per_node * cfg.resources.nodes
    assert kv_bytes_per_token(type("C", (), QWEN3_4B)(), torch.bfloat16) == 144 * 1024
    limit = engine_sequences(str(tmp_path), cfg.model.dtype, r.max_prompt_tokens + r.max_new_tokens, r.vllm_kv_cache_gb)
    assert limit == 130

    a = cfg.algo
    per_rank_prompts = t.prompts_per_step // ranks
    calls = {
        "policy rollouts": per_rank_prompts * a.num_policy_rollouts(),
        "momentum rollouts": per_rank_prompts * a.resolved_num_momentum_rollouts(),
        "selection set": math.ceil(cfg.data.heldout_size / ranks) * r.eval_samples,
    }
    sizes = {"math500": 500, "aime24": 30, "aime25": 30}
    for name in t.eval_benchmarks:
        n = t.eval_benchmark_samples or (BENCHMARKS[name].samples if r.eval_temperature > 0 else 1)
        calls[name] = math.ceil(sizes[name] / ranks) * n
    assert calls == {"policy rollouts": 24, "momentum rollouts": 8, "selection set": 63, "math500": 63, "aime24": 32, "aime25": 32}
    assert max(calls.values()) <= limit
    # mgrpo-eval on one GPU: AIME's 8 x 30 samples in two turns of at most `limit`, none recomputed.
    assert math.ceil(30 * 8 / limit) == 2
