"""Hugging Face exports of a run's models: what a user evaluates or serves, written only where asked.

Resume needs only a checkpoint's DCP state (`mgrpo.checkpoint`). Exports live beside the
checkpoints, in `<output_dir>/exports/step_NNNNNN/`, so that the checkpoints' rotation
(`trainer.keep_last`) never deletes one:
- `policy/`: an ordinary Hugging Face checkpoint directory of the policy in the compute dtype
  (`model.dtype`), with the run's tokenizer and generation config;
- `momentum/`: the momentum model in float32, only with `trainer.export_momentum`;
- `export.json`: the step and the MLflow run that wrote it.

The trainer exports at its final step and every `trainer.export_every` steps (rank 0 writes what
every rank gathers, one parameter at a time); `mgrpo-eval` converts a checkpoint that has no export
from its DCP state (`export_from_checkpoint`). Either way the directory is written under a
temporary name and renamed into place, so a kill leaves the old export or the new one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from mgrpo.checkpoint import fsync_files, publish_dir
from mgrpo.parallel import Ranks

EXPORTS_DIR = "exports"
EXPORT_FILE = "export.json"
POLICY = "policy"
MOMENTUM = "momentum"


def export_dir(output_dir: Path, step: int) -> Path:
    return output_dir / EXPORTS_DIR / f"step_{step:06d}"


def write_hf_model(
    directory: Path, tensors: dict[str, torch.Tensor], config: Any, dtype: torch.dtype, generation: Any = None, tokenizer: Any = None
) -> None:
    """One Hugging Face checkpoint directory: `config.json` (its dtype set to `dtype`),
    `model.safetensors`, and the generation config and tokenizer when given."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    previous_dtype = config.dtype
    config.dtype = dtype
    config.save_pretrained(directory)
    config.dtype = previous_dtype
    if generation is not None:
        generation.save_pretrained(directory)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _gathered(named: Iterable[tuple[str, torch.Tensor]], keep: bool) -> dict[str, torch.Tensor]:
    """Consume the gather on every rank (it is collective); keep the tensors where `keep`."""
    return {name: tensor.to("cpu").contiguous() for name, tensor in named if keep}


def export_run_models(
    output_dir: Path,
    step: int,
    ranks: Ranks,
    policy,
    momentum,
    policy_dtype: torch.dtype,
    tokenizer: Any,
    run_id: Optional[str],
) -> Path:
    """Export the policy (and `momentum`, unless None) of step `step`; every rank calls this.

    `policy`, `momentum`: `ResponseScorer`s, sharded or not.
    """
    from mgrpo.sharding import full_parameters

    final = export_dir(output_dir, step)
    tmp = final.with_name(f".tmp_{final.name}")
    models = [(POLICY, policy, policy_dtype)] + ([(MOMENTUM, momentum, torch.float32)] if momentum is not None else [])
    if ranks.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while exporting
        tmp.mkdir(parents=True)
    for name, scorer, dtype in models:
        tensors = _gathered(full_parameters(scorer, dtype), ranks.is_main)
        if ranks.is_main:
            lm = scorer.lm
            write_hf_model(tmp / name, tensors, lm.config, dtype, getattr(lm, "generation_config", None), tokenizer)
    if ranks.is_main:
        (tmp / EXPORT_FILE).write_text(json.dumps({"step": step, "run_id": run_id, "models": [m[0] for m in models]}, indent=1))
        fsync_files(tmp)
        publish_dir(tmp, final)
    ranks.barrier()
    return final


def read_export(directory: Path) -> Optional[dict[str, Any]]:
    """`export.json` of an export directory, or None when `directory` is not one."""
    path = directory / EXPORT_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def export_from_checkpoint(
    checkpoint_dir: Path, destination: Path, base_model_path: str, dtype: torch.dtype, tokenizer: Any, run_id: Optional[str]
) -> Path:
    """Write `destination/policy/` from a checkpoint's DCP policy state, in one process.

    The architecture comes from `base_model_path` (the run's base model: the checkpoint stores
    weights only); its weights are replaced by the checkpoint's before anything is written.
    Returns the model directory.

    Raises:
        CheckpointError: the checkpoint's DCP state has no policy matching that architecture.
    """
    import torch.distributed.checkpoint as dcp

    from torch.distributed.checkpoint.api import CheckpointException

    from mgrpo.checkpoint import DCP_DIR, CheckpointError, load_failure, quiet_single_process, tied_aliases
    from mgrpo.models.loading import load_causal_lm

    step = int(checkpoint_dir.name.rsplit("_", 1)[-1])
    lm = load_causal_lm(base_model_path, torch.float32, torch.device("cpu")).requires_grad_(False)
    # Names as the trainer's ResponseScorer saved them ('lm.' prefix, no tied aliases); the
    # tensors share the parameters' storage, so loading fills the model (and its tied weights).
    aliases = tied_aliases(lm)
    state = {POLICY: {f"lm.{name}": tensor for name, tensor in lm.state_dict().items() if name not in aliases}}
    try:
        with quiet_single_process():
            dcp.load(state, checkpoint_id=str(checkpoint_dir / DCP_DIR), no_dist=True)
    except (Exception, CheckpointException) as err:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir}: its DCP policy does not load into {base_model_path} "
            f"({load_failure(err)}); evaluate it with the run's own "
            "config.yaml (model.name_or_path must be the base model the run started from)"
        ) from err
    tensors = {name: param.detach().to(dtype).contiguous() for name, param in lm.named_parameters()}
    tmp = destination.with_name(f".tmp_{destination.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_hf_model(tmp / POLICY, tensors, lm.config, dtype, getattr(lm, "generation_config", None), tokenizer)
    (tmp / EXPORT_FILE).write_text(json.dumps({"step": step, "run_id": run_id, "models": [POLICY], "converted_from": str(checkpoint_dir)}, indent=1))
    destination.parent.mkdir(parents=True, exist_ok=True)
    fsync_files(tmp)
    publish_dir(tmp, destination)
    return destination / POLICY
