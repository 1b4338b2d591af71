"""vLLM stops where the HF engine stops (`mgrpo.rollout.stops`), on the Qwen3-Base-like test model
of tests/test_stop_tokens.py (EOS <|endoftext|>, turns closed by <|im_end|>)."""

from __future__ import annotations

import pytest
import torch

from mgrpo.models.bpe import IM_END
from mgrpo.rollout.base import encode_prompts
from mgrpo.rollout.hf import HFRolloutEngine
from mgrpo.rollout.stops import stop_token_ids
from mgrpo.rollout.vllm import VLLMRolloutEngine
from tests.test_stop_tokens import PROMPT, base_like_model, base_like_tokenizer
from tests.vllm.helpers import KV_CACHE_GB, response_tokens

pytestmark = pytest.mark.vllm


def test_vllm_ends_a_turn_at_its_end_of_turn_token_like_hf(tmp_path, more_engines) -> None:
    tokenizer = base_like_tokenizer()
    torch.manual_seed(0)
    model = base_like_model(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)
    chat_stops = stop_token_ids(tokenizer, model.generation_config, chat_template=True)
    assert chat_stops == [eos, im_end]
    prompts = encode_prompts(tokenizer, [PROMPT], 64)

    raw = VLLMRolloutEngine(str(tmp_path), tokenizer, dtype="float32", max_model_len=128, kv_cache_gb=KV_CACHE_GB, enforce_eager=True)
    more_engines.append(raw)
    assert raw.stop_ids == [eos], "the default is the checkpoint's EOS: prompts without a template"
    ran_on = raw.generate(prompts, 1, 0.0, 12, [0])
    chat = VLLMRolloutEngine(
        str(tmp_path), tokenizer, dtype="float32", max_model_len=128, kv_cache_gb=KV_CACHE_GB, enforce_eager=True, stop_ids=chat_stops
    )
    more_engines.append(chat)
    ended = chat.generate(prompts, 1, 0.0, 12, [0])
    hf = HFRolloutEngine(model, tokenizer, stop_ids=chat_stops).generate(prompts, 1, 0.0, 12, [0])

    turn = response_tokens(ended, [0])[0]
    assert turn == response_tokens(hf, [0])[0], "vLLM and HF end the turn at the same token"
    assert turn[-1] == im_end and len(turn) <= 3 and int(ended.response_lengths[0]) == len(turn)
    longer = response_tokens(ran_on, [0])[0]
    assert longer[: len(turn)] == turn and len(longer) > len(turn), "with EOS alone vLLM runs on past the turn"

    sampled = chat.generate(prompts, 8, 1.0, 12, [3])
    for row in range(len(sampled)):
        counted = response_tokens(sampled, [row])[0]
        assert not set(counted[:-1]) & set(chat_stops), "vLLM stopped at the first stop id"
