"""Atomic checkpoints that a requeued or restarted job resumes from.

Layout: `<output_dir>/checkpoints/step_000050/` holding
- `policy/` and `momentum/`: ordinary Hugging Face checkpoints (the momentum in float32), so
  either can be evaluated or served as is;
- `optimizer.pt`, `scheduler.pt`, `rng.pt`: the rest of the training state;
- `trainer_state.json`: step, MLflow run id and its unsent buffer, monitor history, and the
  config fingerprint that a resume must match;
- `COMPLETE`: written last. A directory is only ever made visible by renaming a finished
  temporary directory, so a kill at any moment leaves either the old or the new checkpoint.

A checkpoint that is corrupt or was written by an incompatible configuration is reported with
what is wrong and what to do, and is never overwritten or deleted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why and how to proceed."""


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    policy,
    momentum,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write step `step` atomically, then delete all but the newest `keep_last` complete ones."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    policy.save_pretrained(tmp / "policy")
    tokenizer.save_pretrained(tmp / "policy")
    if momentum is not None:
        momentum.save_pretrained(tmp / "momentum")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(capture_rng(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1, default=str))
    (tmp / MARKER).write_text(str(step))
    _fsync_tree(tmp)
    if final.exists():
        # The same step written again: swap atomically, then drop the old copy.
        old = root / f".old_step_{step:06d}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    complete = [p for p in _step_dirs(root) if (p / MARKER).exists()]
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def latest_checkpoint(output_dir: Path) -> Optional[LoadedCheckpoint]:
    """The newest checkpoint, validated; None when there is none.

    Raises CheckpointError when the newest step directory is incomplete or unreadable, rather than
    silently falling back to an older one or starting over.
    """
    root = checkpoint_root(output_dir)
    dirs = _step_dirs(root)
    if not dirs:
        return None
    newest = dirs[-1]
    advice = (
        f"Move {newest} out of {root} to resume from the previous checkpoint, or point "
        f"trainer.output_dir at a new directory to start a fresh run."
    )
    if not (newest / MARKER).exists():
        raise CheckpointError(f"checkpoint {newest} is incomplete (no {MARKER} marker). {advice}")
    required = ["policy", STATE_FILE, "optimizer.pt", "scheduler.pt", "rng.pt"]
    missing = [name for name in required if not (newest / name).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {newest} is corrupt: missing {', '.join(missing)}. {advice}")
    try:
        state = json.loads((newest / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {newest} is corrupt: cannot read {STATE_FILE} ({err}). {advice}") from err
    return LoadedCheckpoint(newest, state)


def check_compatible(checkpoint: LoadedCheckpoint, fingerprint: dict[str, str]) -> None:
    """Refuse to resume under a configuration that changes what is being trained."""
    saved = checkpoint.state.get("fingerprint", {})
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in fingerprint.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was written by a different configuration ("
            + "; ".join(diffs)
            + "). Resume with the original settings, or use a new trainer.output_dir for a new run."
        )


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF checkpoint directory saved by `save_pretrained` (safetensors)."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint {path} holds no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except Exception as err:
            raise CheckpointError(f"checkpoint weights {file} are unreadable ({err})") from err
    return tensors


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load saved weights into `model`, which has the architecture the checkpoint was saved from."""
    tensors = load_tensors(path)
    own = model.state_dict()
    tied = {k for k in own if k not in tensors}
    unexpected = [k for k in tensors if k not in own]
    if unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: unexpected weights {unexpected[:5]}")
    missing = [k for k in tied if not getattr(model.config, "tie_word_embeddings", False) or "lm_head" not in k]
    if missing:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing weights {missing[:5]}")
    for key, value in tensors.items():
        if own[key].shape != value.shape:
            raise CheckpointError(f"checkpoint {path}: {key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}")
    model.load_state_dict(tensors, strict=False)


def load_training_state(checkpoint: LoadedCheckpoint, optimizer: torch.optim.Optimizer, scheduler) -> None:
    path = checkpoint.path
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        restore_rng(torch.load(path / "rng.pt", weights_only=False))
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be restored ({type(err).__name__}: {err})") from err
