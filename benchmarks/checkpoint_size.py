"""Disk per checkpoint and per run, measured on the code's own save path and extrapolated to Qwen3-4B.

    python benchmarks/checkpoint_size.py [--hidden 256] [--layers 4] [--vocab 8192]

Writes, in a temporary directory and on one process, what the trainer writes: an M-GRPO
checkpoint (`mgrpo.checkpoint.save_checkpoint`: DCP state of the float32 policy after one AdamW
step, its two moments and the float32 momentum) and an export (`mgrpo.exports.export_run_models`:
the policy in bf16, and the momentum in float32 as `trainer.export_momentum` would add), for a
scaled-down Qwen3 (same architecture, tied embeddings). Bytes per parameter are read off the
files and multiplied by Qwen3-4B's parameter count, counted from its shapes on the meta device
(no download). Then the paper preset's run (conf/experiment/paper.yaml: total_steps,
checkpoint_every; trainer.keep_last and export_every from the root config): bytes written over
the run, on disk while it runs and at its end, now and with the previous layout (every checkpoint
also held a bf16 HF policy and a float32 HF momentum, and the DCP state the tied embedding twice,
which the "previous layout" line leaves out: it adds only the HF copies).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from mgrpo.checkpoint import TrainingState, save_checkpoint
from mgrpo.config import TrainerConfig
from mgrpo.exports import export_run_models
from mgrpo.models.scorer import ResponseScorer
from mgrpo.parallel import Ranks

REPO = Path(__file__).resolve().parents[1]
QWEN3_4B = dict(
    vocab_size=151_936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, max_position_embeddings=32_768,
)
"""Qwen/Qwen3-4B-Base's config.json, the fields that set parameter shapes."""


def qwen3(**fields):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**fields))


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once, as stored


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(hidden: int, layers: int, vocab: int) -> tuple[int, dict[str, int]]:
    """(parameters, bytes of each part) of one checkpoint and one export of a scaled-down Qwen3."""
    torch.manual_seed(0)
    lm = qwen3(**{**QWEN3_4B, "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 4 * hidden,
                  "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": max(1, hidden // 256),
                  "head_dim": 64, "max_position_embeddings": 4096})
    momentum_lm = qwen3(**lm.config.to_diff_dict()).requires_grad_(False)
    momentum_lm.load_state_dict(lm.state_dict())
    policy, momentum = ResponseScorer(lm), ResponseScorer(momentum_lm)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ranks, train = Ranks(), TrainingState(policy, optimizer, scheduler, momentum)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        step0 = du(save_checkpoint(out, 0, ranks, train, {}, keep_last=2) / "dcp")
        policy.lm(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
        optimizer.step()  # AdamW's moments exist from the first step on, as in every checkpoint after step 0
        checkpoint = save_checkpoint(out, 1, ranks, train, {}, keep_last=2)
        export = export_run_models(out, 1, ranks, policy, momentum, torch.bfloat16, None, None)
        sizes = {
            "dcp at step 0": step0,
            "dcp": du(checkpoint / "dcp"),
            "rest of the checkpoint": du(checkpoint) - du(checkpoint / "dcp"),
            "policy export (bf16)": du(export / "policy"),
            "momentum export (fp32)": du(export / "momentum"),
        }
    return parameters(lm), sizes


def checkpoint_steps(total: int, every: int, export_every: int) -> list[int]:
    """The steps a run of `total` steps checkpoints: 0, every `every`-th and `export_every`-th, the last."""
    steps = {0, total} | set(range(every, total + 1, every))
    if export_every:
        steps |= set(range(export_every, total + 1, export_every))
    return sorted(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    args = p.parse_args()

    small, sizes = measure(args.hidden, args.layers, args.vocab)
    with torch.device("meta"):
        big = parameters(qwen3(**QWEN3_4B))
    print(f"scaled-down Qwen3: {small:,} parameters; Qwen3-4B: {big:,} parameters (from shapes)\n")
    print(f"{'part':<26} {'bytes/param':>11} {'Qwen3-4B GB':>12}")
    per_param = {}
    for part, size in sizes.items():
        per_param[part] = size / small
        if part == "rest of the checkpoint":
            print(f"{part:<26} {'':>11} {size / 1e3:>9.0f} KB  (scheduler, RNG, trainer_state.json: fixed)")
        else:
            print(f"{part:<26} {per_param[part]:>11.3f} {per_param[part] * big / 1e9:>12.1f}")

    paper = yaml.safe_load((REPO / "conf" / "experiment" / "paper.yaml").read_text())["trainer"]
    defaults = TrainerConfig()
    total, every = paper["total_steps"], paper["checkpoint_every"]
    keep, export_every = paper.get("keep_last", defaults.keep_last), paper.get("export_every", defaults.export_every)
    keep_finished = paper.get("keep_finished_state", defaults.keep_finished_state)
    steps = checkpoint_steps(total, every, export_every)
    exports = sorted({total} | (set(range(export_every, total + 1, export_every)) if export_every else set()))
    dcp = per_param["dcp"] * big
    dcp_step0 = per_param["dcp at step 0"] * big
    policy_export, momentum_export = per_param["policy export (bf16)"] * big, per_param["momentum export (fp32)"] * big
    written = dcp_step0 + dcp * (len(steps) - 1) + policy_export * len(exports)
    kept = (dcp * keep if keep_finished else 0) + policy_export * len(exports)
    running = dcp * (keep + 1)  # keep_last complete ones and the one being written
    old_written = written - policy_export * len(exports) + (policy_export + momentum_export) * len(steps)
    old_kept = (dcp + policy_export + momentum_export) * keep
    print(f"\npaper preset: {total} steps, checkpoint_every {every}, keep_last {keep}, export_every {export_every}, "
          f"keep_finished_state {keep_finished}: {len(steps)} checkpoints, {len(exports)} export(s)")
    print(f"{'':<26} {'written over the run':>22} {'on disk while running':>22} {'at the end':>12}")
    print(f"{'now':<26} {written / 1e12:>19.2f} TB {running / 1e9:>19.0f} GB {kept / 1e9:>9.0f} GB")
    print(f"{'previous layout':<26} {old_written / 1e12:>19.2f} TB "
          f"{(dcp + policy_export + momentum_export) * (keep + 1) / 1e9:>19.0f} GB {old_kept / 1e9:>9.0f} GB")
    print(f"one checkpoint now: {dcp / 1e9:.1f} GB; before: {(dcp + policy_export + momentum_export) / 1e9:.1f} GB "
          f"(rank 0 alone wrote the {(policy_export + momentum_export) / 1e9:.1f} GB of HF copies)")


if __name__ == "__main__":
    main()
