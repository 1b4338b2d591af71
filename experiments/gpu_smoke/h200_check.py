"""The H200 check: one full M-GRPO step of the paper's setting, at Qwen3-4B-Base's exact shape
with random weights, on one GPU, through the trainer's own code, and a JSON of memory per phase
against conf/resources/h200x8.yaml's budget.

    bash experiments/gpu_smoke/h200_check.sh                 # on a lent H200 (see README.md)
    python experiments/gpu_smoke/h200_check.py --shape tiny --device cpu --out /tmp/check.json

What runs: `experiment=paper` (G = 32, N = G/4 = 8 momentum samples, KL 0.005 to a bf16
reference, bf16 compute, gradient checkpointing, micro-batch 4) with the HF rollout engine and
shortened lengths (by default 1 prompt per step, one rank's share of the paper's 8 prompts on 8
GPUs, 256 prompt and 1,024 response tokens). The model and the tokenizer are written locally
first (check_model.py): nothing is downloaded. The one rank joins a 1-rank process group (nccl
on CUDA, gloo on CPU) and takes the trainer's multi-rank path: FSDP2 `fully_shard` with float32
master weights and bf16 mixed precision, the HF engine's own bf16 copy refreshed by the weight
hand-off, collectives on the 1-rank group. `mgrpo.trainer.Trainer.train_step(1)` is the step;
its phases are measured by wrapping the trainer's own `timed` (check_memory.PhaseProbe), the
update is split at the optimizer step by optimizer hooks.

Random weights: the answers are garbage and the rewards mean nothing. The check is about shape,
memory, dtypes and that the code path runs. Exit status 0 when every check passes, 1 otherwise.
The JSON is rewritten after every phase, so a run cut short still reports how far it got.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from check_memory import MEASURED_HOW, PhaseProbe, compare_budget, measured_items, read_budget
from check_model import SHAPES, write_model_dir, write_problems
from check_verdict import checks_of, tensor_summary
from mgrpo.parallel import Ranks

REPO = Path(__file__).resolve().parents[2]
BUDGET_FILE = REPO / "conf" / "resources" / "h200x8.yaml"
NOTE = (
    "Random weights (no checkpoint on the machine): answers are garbage and rewards mean nothing. This checks "
    "the shape, memory, dtypes and that the trainer's code path runs one full M-GRPO step; not learning, "
    "accuracy, vLLM, NCCL across ranks, or throughput at full length."
)
LENGTHS = {"qwen3_4b": (256, 1024), "tiny": (128, 16)}
"""Default (prompt, response) tokens per shape."""


@dataclass
class OneRankFSDP(Ranks):
    """One rank that takes the multi-rank path: FSDP2 sharding (over a 1-rank group), the rollout
    engine's own copy of the weights with a hand-off, and real collectives. `Ranks.distributed`
    means world_size > 1, which would skip all of it on one GPU."""

    @property
    def distributed(self) -> bool:
        return True


class Report:
    """The JSON report, rewritten whole (via a temporary file) at every `write`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3_4b", help="qwen3_4b: Qwen3-4B-Base's shape; tiny: the same vocabulary at CPU size")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--prompts", type=int, default=1, help="prompts per step (1 = one rank's share of the paper's batch)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default 256 for qwen3_4b, 128 for tiny)")
    p.add_argument("--response-tokens", type=int, default=None, help="response length (default 1024 for qwen3_4b, 16 for tiny)")
    p.add_argument("--micro-batch", type=int, default=None, help="optim.micro_batch_size (default: the paper preset's)")
    p.add_argument("--out", type=Path, required=True, help="the JSON report")
    p.add_argument("--workdir", type=Path, default=None, help="where the model and data are written (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    default_prompt, default_response = LENGTHS[args.shape]
    args.prompt_tokens = args.prompt_tokens or default_prompt
    args.response_tokens = args.response_tokens or default_response
    return args


def environment(device: torch.device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        nccl = torch.cuda.nccl.version()
        env.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda, nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    return env


def overrides(args: argparse.Namespace, model_dir: Path, problems: Path, run_dir: Path) -> list[str]:
    """What the check changes in `experiment=paper`, as `mgrpo-train` overrides."""
    out = [
        "experiment=paper",
        f"model.name_or_path={model_dir}",
        "data.task=jsonl", f"data.train_path={problems}", "data.heldout_size=4",
        "rollout.engine=hf",  # no vLLM on the lent machine
        f"rollout.max_prompt_tokens={args.prompt_tokens}", f"rollout.max_new_tokens={args.response_tokens}",
        f"trainer.prompts_per_step={args.prompts}", "trainer.total_steps=1", "trainer.eval_benchmarks=[]",
        f"trainer.device={args.device}", f"trainer.output_dir={run_dir}", "trainer.progress=false",
        f"trainer.num_threads={min(8, os.cpu_count() or 1) if args.device == 'cuda' else 1}",
        "tracking.enabled=false", "monitor.enabled=false",
    ]
    if args.micro_batch is not None:
        out.append(f"optim.micro_batch_size={args.micro_batch}")
    return out


def instrument(trainer, probe: PhaseProbe, seen: dict) -> None:
    """Phase probes inside the step, on this trainer object only: each role's hand-off and
    sampling, the update's split at the optimizer step, and what the policy's first decoder
    layer sees while the update runs (its dtype, and how often it runs: checkpointing runs it
    twice per micro-batch)."""
    from mgrpo.sharding import decoder_layers

    sample, acquire = trainer.sample, trainer.engines.acquire
    seen["rollouts"] = {}

    def measured_sample(role, prompts, n, temperature, seeds):
        probe.begin(f"rollout.{role}")
        rollouts = sample(role, prompts, n, temperature, seeds)
        probe.end(f"rollout.{role}")
        seen["rollouts"][role] = rollouts
        return rollouts

    def measured_acquire(role, version, weights):
        probe.begin(f"handoff.{role}")
        engine = acquire(role, version, weights)
        probe.end(f"handoff.{role}")
        return engine

    trainer.sample, trainer.engines.acquire = measured_sample, measured_acquire

    def before_step(optimizer, args, kwargs):
        if probe.is_open("update.forward_backward"):
            probe.end("update.forward_backward")
        seen["policy_grads"] = [p.grad for p in trainer.policy.parameters() if p.grad is not None]
        probe.begin("update.optimizer_step")

    def after_step(optimizer, args, kwargs):
        probe.end("update.optimizer_step")
        seen["adamw_state"] = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0]

    trainer.optimizer.register_step_pre_hook(before_step)
    trainer.optimizer.register_step_post_hook(after_step)
    seen["layer_calls"] = 0
    layer = decoder_layers(trainer.policy.lm)[0]

    # A pre-hook on the MLP inside the layer: it runs in the forward and again in the backward's
    # recompute (torch's checkpoint stops recomputing after the last saved tensor, so the MLP's
    # post-hook would not), wherever transformers puts the checkpoint boundary, and it sees the
    # layer's weights as FSDP2 gathered them for compute.
    def mlp_pre_hook(module, inputs):
        if torch.is_grad_enabled():
            seen["layer_calls"] += 1
            seen["layer_weight_dtype"] = str(next(module.parameters()).dtype)

    def layer_hook(module, inputs, output):
        if torch.is_grad_enabled():
            seen["layer_output_dtype"] = str((output[0] if isinstance(output, tuple) else output).dtype)

    layer.mlp.register_forward_pre_hook(mlp_pre_hook)
    layer.register_forward_hook(layer_hook)


def measured_timed(probe: PhaseProbe, timed):
    """The trainer's `timed(metrics, phase)`, also measuring memory; the update opens its
    forward-backward part, which the optimizer's pre-hook closes."""

    @contextmanager
    def wrapper(metrics, phase):
        probe.begin(phase)
        if phase == "update":
            probe.begin("update.forward_backward")
        with timed(metrics, phase):
            yield
        if probe.is_open("update.forward_backward"):
            probe.end("update.forward_backward")
        probe.end(phase)

    return wrapper


def run_check(args: argparse.Namespace, report: Report) -> bool:
    from mgrpo.config_checks import validate
    from mgrpo.models.loading import load_tokenizer
    from mgrpo.tracking import Tracker
    from mgrpo.train import compose_config
    import mgrpo.trainer

    started = time.perf_counter()
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    report.data["environment"] = environment(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **({"device_id": device} if backend == "nccl" else {}))
    ranks = OneRankFSDP(device=device)
    probe = PhaseProbe(device, on_end=report.write)  # the report is rewritten after every phase
    report.data.update(memory_source=probe.source, process_group=f"{backend}, world size 1", phases=probe.phases)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mgrpo_h200_check_"))  # removed at the end (8 GB at qwen3_4b)
    model_dir, problems, run_dir = workdir / "model", workdir / "problems.jsonl", workdir / "run"
    model_dir.mkdir(parents=True, exist_ok=True)

    probe.begin("write_checkpoint")
    written = write_model_dir(model_dir, SHAPES[args.shape], device, args.seed)
    write_problems(problems, load_tokenizer(str(model_dir)), 40, args.prompt_tokens)
    probe.end("write_checkpoint")
    report.data["model"] = {"shape": args.shape, "config": written}
    report.write()

    cfg_overrides = overrides(args, model_dir, problems, run_dir)
    cfg = compose_config(cfg_overrides)
    validate(cfg)
    a = cfg.algo
    report.data["run"] = {
        "overrides": cfg_overrides, "G": a.num_rollouts, "N_momentum": a.resolved_num_momentum_rollouts(),
        "M_policy": a.num_policy_rollouts(), "prompts_per_step": args.prompts, "prompt_tokens": args.prompt_tokens,
        "response_tokens": args.response_tokens, "micro_batch_size": cfg.optim.micro_batch_size, "dtype": cfg.model.dtype,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
    }
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, None, enabled=False)

    probe.begin("trainer_init")
    trainer = mgrpo.trainer.Trainer(cfg, run_dir, tracker, ranks)
    probe.end("trainer_init")
    report.write()
    seen: dict = {}
    instrument(trainer, probe, seen)
    try:
        probe.begin("step")
        with mock.patch.object(mgrpo.trainer, "timed", measured_timed(probe, mgrpo.trainer.timed)):
            metrics = trainer.train_step(1)
        probe.end("step")
        tensors = tensor_summary(trainer, seen)
        report.data.update(step_seconds=probe.phases["step"]["seconds"], metrics=metrics, tensors=tensors)
        report.data["rollouts"] = {role: rollout_summary(r, cfg.rollout.max_new_tokens) for role, r in seen["rollouts"].items()}
        report.data["observations"] = observations(metrics, probe)
        budget = budget_rows(args, cfg, seen, tensors, probe)
        report.data["budget"] = budget
        checks = checks_of(args.shape, written, trainer, cfg, seen, tensors, metrics, budget)
        report.data["checks"] = checks
    finally:
        trainer.close()
        probe.close()
        ranks.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report.data["wall_seconds"] = time.perf_counter() - started
    return all(c["ok"] for c in checks)


def rollout_summary(rollouts, max_new_tokens: int) -> dict:
    from mgrpo.algos.answers import extract_answer

    lengths = rollouts.response_lengths.float()
    return {
        "rows": len(rollouts),
        "sequence_length": rollouts.sequences.shape[1],
        "prompt_length": rollouts.prompt_length,
        "response_tokens_mean": float(lengths.mean()),
        "at_max_new_tokens": float((lengths == max_new_tokens).float().mean()),  # random weights rarely sample EOS
        "with_answer": float(sum(extract_answer(t) is not None for t in rollouts.texts) / len(rollouts)),
        "example_text": rollouts.texts[0][:160],
    }


def observations(metrics: dict, probe: PhaseProbe) -> dict:
    """Measured, not judged: the sampler-vs-trainer log-prob drift (bf16 HF engine vs bf16 FSDP
    trainer; with random weights a hint about the kernels, not a number for trained weights) and
    any mismatch or TIS metric the trainer logs, and the step's peak memory."""
    out = {key: value for key, value in metrics.items() if any(word in key for word in ("drift", "mismatch", "tis_"))}
    out["step_peak_allocated_gb"] = round(probe.phases["step"]["peak_allocated_bytes"] / 1e9, 3)
    return out


def budget_rows(args, cfg, seen: dict, tensors: dict, probe: PhaseProbe) -> dict:
    """h200x8.yaml's budget beside the measurements (the file budgets Qwen3-4B only)."""
    if args.shape != "qwen3_4b":
        return {"applies": False, "why": f"conf/resources/h200x8.yaml budgets Qwen3-4B-Base; --shape {args.shape} is another model"}
    policy = seen["rollouts"]["policy"]
    seq = policy.sequences.shape[1]
    budget = read_budget(BUDGET_FILE)
    rows = compare_budget(budget, measured_items(tensors, probe.phases), 1, cfg.optim.micro_batch_size * seq, len(policy) * seq)
    return {
        "applies": True, "file": str(BUDGET_FILE.relative_to(REPO)), "file_world_size": budget["world_size"], "check_world_size": 1,
        "how_measured": MEASURED_HOW, "rows": rows,
    }


def print_summary(data: dict) -> None:
    print(f"[h200-check] {data.get('status')}: {data.get('what')}")
    for name, p in data.get("phases", {}).items():
        print(f"  {name:28s} {p['seconds']:8.2f} s  peak {p['peak_allocated_bytes'] / 1e9:8.2f} GB  (+{p['peak_above_start_bytes'] / 1e9:.2f} over start)")
    budget = data.get("budget", {})
    for row in budget.get("rows", []):
        print(f"  budget {row['item']:18s} {row['budget_for_this_check_gb']:8.2f} GB  measured {row['measured_gb']} GB")
    for check in data.get("checks", []):
        print(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    if "error" in data:
        print(data["error"], file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = Report(args.out)
    report.data.update(what=NOTE, status="running", args={k: str(v) for k, v in vars(args).items()})
    report.write()
    try:
        ok = run_check(args, report)
        report.data["status"] = "passed" if ok else "failed"
    except BaseException as err:  # a crash is a result too: write what was measured, and why it stopped
        report.data["status"] = "crashed"
        report.data["error"] = "".join(traceback.format_exception(err))
        ok = False
    report.write()
    print_summary(report.data)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
