"""Checks that need several ranks, run as `torchrun --nproc_per_node 2 ranks_app.py <check> <out.json>`.

Each check runs on every rank and rank 0 writes what it measured as JSON; the test asserts on it.
- ema: the EMA step over FSDP-sharded policy and momentum issues no collective (torch.profiler
  sees FSDP's all-gathers in a forward, and nothing in the EMA);
- bf16: FSDP mixed precision (bf16 compute, float32 shards): an AdamW step at lr 1e-6 changes
  the float32 master weights;
- train-empty-rank: the real trainer, where rank 1's filter keeps none of its samples.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mgrpo.algos.ema import ema_update_  # noqa: E402
from mgrpo.config import TinyModelConfig  # noqa: E402
from mgrpo.models.scorer import ResponseScorer  # noqa: E402
from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from mgrpo.parallel import Ranks  # noqa: E402
from mgrpo.sharding import local_tensor, shard  # noqa: E402

COLLECTIVE_MARKERS = ("all_gather", "allgather", "reduce_scatter", "all_reduce", "allreduce", "broadcast", "gloo", "c10d", "nccl", "FSDP::")


def tiny_scorers(ranks: Ranks, mixed: torch.dtype | None) -> tuple[ResponseScorer, ResponseScorer, torch.Tensor]:
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    lm = build_tiny_model(TinyModelConfig(num_heads=2), tokenizer)
    momentum_lm = build_tiny_model(TinyModelConfig(num_heads=2), tokenizer).requires_grad_(False)
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(ranks.rank))
    return shard(ResponseScorer(lm), ranks, mixed), shard(ResponseScorer(momentum_lm), ranks, mixed), ids


def train_once(policy: ResponseScorer, ids: torch.Tensor, lr: float) -> None:
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    response = torch.ones(ids.shape[0], 6, dtype=torch.bool)
    logprobs, _ = policy(ids, torch.ones_like(ids), response, 1.0)
    (-logprobs.sum()).backward()
    optimizer.step()


def collective_events(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.name for e in prof.events() if any(m.lower() in e.name.lower() for m in COLLECTIVE_MARKERS)})


def check_ema(ranks: Ranks) -> dict:
    policy, momentum, ids = tiny_scorers(ranks, None)
    train_once(policy, ids, 1e-3)
    before = {n: local_tensor(p).clone() for n, p in momentum.named_parameters()}
    ema_events = collective_events(lambda: ema_update_(momentum.named_parameters(), policy.named_parameters(), 0.9))
    after = {n: local_tensor(p) for n, p in momentum.named_parameters()}
    moved = sum(int(not torch.equal(before[n], after[n])) for n in before)
    forward_events = collective_events(lambda: policy(ids, torch.ones_like(ids), torch.ones(2, 6, dtype=torch.bool), 1.0))
    sharded = all(hasattr(p, "to_local") for p in momentum.parameters())
    return {"ema_events": ema_events, "forward_events": forward_events, "moved": moved, "params": len(before), "sharded": sharded}


def check_bf16(ranks: Ranks) -> dict:
    policy, _, ids = tiny_scorers(ranks, torch.bfloat16)
    masters = {n: local_tensor(p).detach().clone() for n, p in policy.named_parameters()}
    dtypes = sorted({str(p.dtype) for p in masters.values()})
    train_once(policy, ids, 1e-6)
    changed = sum(int((local_tensor(p).detach() != masters[n]).sum()) for n, p in policy.named_parameters())
    total = sum(p.numel() for p in masters.values())
    counts = ranks.all_reduce([changed, total])
    return {"changed_fraction": counts[0] / counts[1], "master_dtypes": dtypes}


def train_empty_rank(rank: int, args: list[str]) -> dict:
    """The real trainer (which joins the process group itself) where rank 1 keeps no sample, as
    if the filter removed them all."""
    import mgrpo.trainer as trainer_module
    from tests.trainer_helpers import train

    if rank == 1:
        trainer_module.filter_phase = lambda entropy, groups, k: torch.zeros_like(entropy, dtype=torch.bool)
    train(args[1:], Path(args[0]))
    return {"finished": True}


def main() -> None:
    check, out, extra = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    if check == "train-empty-rank":
        ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        result = train_empty_rank(ranks.rank, extra)
    else:
        dist.init_process_group("gloo")
        ranks = Ranks(dist.get_rank(), dist.get_world_size())
        result = {"ema": check_ema, "bf16": check_bf16}[check](ranks)
        dist.destroy_process_group()
    if ranks.rank == 0:
        out.write_text(json.dumps(result))
    os._exit(0)


if __name__ == "__main__":
    main()
