"""One rank of the multi-rank test (tests/vllm/test_multirank.py), run under torchrun:
`python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.vllm.multirank_worker
CHECKPOINT OUT_DIR`.

Each rank initialises gloo and builds two engines (policy and momentum, as the trainer does with
separate engines) with distributed_executor_backend="external_launcher", hands the policy engine
changed weights, samples its own share of the prompts (a different number per rank, so nothing
runs in lock-step), and writes its responses and drift to OUT_DIR/rank<r>.json. Then it closes
both engines, which must leave no process group behind and nothing to print at exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mgrpo.models.tiny import build_tiny_tokenizer
from mgrpo.rollout.base import encode_prompts
from mgrpo.rollout.vllm import VLLMRolloutEngine
from tests.vllm.helpers import KV_CACHE_GB, MAX_MODEL_LEN, drift, load_hf, perturb, response_tokens

PROMPTS = ["12+34=", "5+6+7=", "80+9=", "3+3+3+3="]
SEEDS = [21, 22, 23, 24]
WEIGHT_SEED = 7
N, MAX_NEW_TOKENS, TEMPERATURE = 3, 12, 1.0


def rank_share(rank: int) -> list[int]:
    """Prompt indices of a rank: rank 0 gets 1, rank 1 gets 3 (of 4, for 2 ranks)."""
    return [0] if rank == 0 else list(range(1, len(PROMPTS)))


def main(checkpoint: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = build_tiny_tokenizer()
    engines = [
        VLLMRolloutEngine(
            checkpoint,
            tokenizer,
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            kv_cache_gb=KV_CACHE_GB,
            enforce_eager=True,
            distributed_executor_backend="external_launcher",
        )
        for _role in ("policy", "momentum")
    ]
    engine = engines[0]
    model = load_hf(Path(checkpoint))
    perturb(model, seed=WEIGHT_SEED)
    engine.load_weights(model.named_parameters())
    share = rank_share(rank)
    prompts = encode_prompts(tokenizer, [PROMPTS[i] for i in share], max_prompt_tokens=64)
    rollouts = engine.generate(prompts, N, TEMPERATURE, MAX_NEW_TOKENS, [SEEDS[i] for i in share])
    result = {
        "rank": rank,
        "world": world,
        "share": share,
        "responses": response_tokens(rollouts, range(len(rollouts))),
        "drift": drift(model, rollouts, TEMPERATURE),
    }
    dist.barrier()
    for each in engines:
        each.close()
    result["initialized_after_close"] = dist.is_initialized()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
