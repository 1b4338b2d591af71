"""Atomic distributed checkpoints that a requeued or restarted job resumes from, on any number of ranks.

Layout: `<output_dir>/checkpoints/step_000050/` holding
- `dcp/`: policy, momentum and optimizer state as `torch.distributed.checkpoint` shards (one
  file per rank plus `.metadata`), written from each rank's shards with `get_state_dict`. DCP
  reshards on load, so a checkpoint written by W ranks resumes on W' ranks;
- `scheduler.pt`, `rng/rank_<r>.pt`, and `trainer_state.json` (step, MLflow run id and its unsent
  buffer, monitor history, and the config fingerprint a resume must match);
- `COMPLETE`: written last. Every rank writes into one temporary directory; after a barrier,
  rank 0 marks it complete and renames it into place, so a kill at any moment leaves either the
  old or the new checkpoint.

That is all a resume reads. Hugging Face copies of the models are exports (`mgrpo.exports`),
written only at the final step and where `trainer.export_every` asks; checkpoints written before
that change also hold `policy/` and `momentum/` directories, which resume ignores and
`mgrpo-eval` still evaluates.

A checkpoint that is corrupt or was written by an incompatible configuration is reported with
what is wrong and what to do, and is never overwritten or deleted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.distributed.checkpoint.api import CheckpointException

from mgrpo.models.scorer import ResponseScorer
from mgrpo.parallel import Ranks
from mgrpo.sharding import reshard

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
DCP_DIR = "dcp"
REQUIRED = (f"{DCP_DIR}/.metadata", STATE_FILE, "scheduler.pt")


FINGERPRINT_EXCLUDE = {
    "trainer.eval_every",
    "trainer.checkpoint_every",
    "trainer.keep_last",
    "trainer.export_every",
    "trainer.export_momentum",
    "trainer.keep_finished_state",
    "trainer.output_dir",
    "trainer.num_threads",
    "trainer.device",
    "trainer.log_completions",
    "trainer.progress",
    "trainer.objective",
    "trainer.objective_drop_penalty",
    "trainer.collective_timeout_s",
    "trainer.heartbeat_timeout_s",
    "model.tiny.cache_dir",
    "model.gradient_checkpointing",
    "model.reference_cpu_offload",
    "rollout.eval_batch_size",
    "rollout.score_chunk_size",
    "rollout.logits_chunk_tokens",
    "rollout.max_logprob_drift",
    "rollout.engine_weights",
    "trainer.eval_benchmarks",
    "trainer.eval_benchmark_samples",
    "trainer.eval_benchmark_limit",
    "data.benchmarks_dir",
    "model.tiny_bpe.cache_dir",
}
"""Settings that change how fast or where a run goes, not what it trains: a resume may change them."""


def config_fingerprint(config: dict[str, Any]) -> dict[str, str]:
    """The settings a resume must match (flattened), from the run's config as a plain dict."""
    from mgrpo.tracking import flatten

    keep = ("algo.", "model.", "data.", "rollout.", "optim.", "trainer.")
    return {
        k: v
        for k, v in flatten(config).items()
        if k.startswith(keep) and k not in FINGERPRINT_EXCLUDE and not k.startswith(("rollout.vllm_", "data.benchmark_paths."))
    }


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why and how to proceed."""


def load_failure(err: BaseException) -> str:
    """What went wrong reading a checkpoint, in one line. DCP wraps each rank's error in a
    `CheckpointException` (a BaseException) whose first line names only the ranks."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


@dataclass
class LoadedCheckpoint:
    path: Path
    state: dict[str, Any]


@dataclass
class TrainingState:
    """What a checkpoint holds besides `trainer_state.json`."""

    policy: ResponseScorer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    momentum: Optional[ResponseScorer]


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


def tied_aliases(module: torch.nn.Module) -> dict[str, str]:
    """alias -> name, for each parameter registered under a second name (tied input and output
    embeddings). The same on every rank: it reads the module's structure, not its shards."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _dcp_state(train: TrainingState, with_optimizer: bool) -> dict[str, Any]:
    """What DCP saves and loads: model state dicts without tied aliases, which DCP would store
    a second time (4 bytes per embedding weight per model; 3.1 GB a checkpoint for Qwen3-4B).
    Checkpoints that hold the aliases still load: DCP reads only the names asked for."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    def without_aliases(scorer: ResponseScorer, model_sd: dict[str, Any]) -> dict[str, Any]:
        aliases = tied_aliases(scorer)
        return {name: tensor for name, tensor in model_sd.items() if name not in aliases}

    reshard(train.policy)
    if with_optimizer:
        model_sd, optim_sd = get_state_dict(train.policy, train.optimizer)
        state = {"policy": without_aliases(train.policy, model_sd), "optimizer": optim_sd}
    else:
        state = {"policy": without_aliases(train.policy, get_model_state_dict(train.policy))}
    if train.momentum is not None:
        reshard(train.momentum)
        state["momentum"] = without_aliases(train.momentum, get_model_state_dict(train.momentum))
    return state


def _with_aliases(scorer: ResponseScorer, model_sd: dict[str, Any]) -> dict[str, Any]:
    """A loaded model state dict with each tied alias pointing at its parameter's tensor again."""
    return {**model_sd, **{alias: model_sd[name] for alias, name in tied_aliases(scorer).items()}}


def save_checkpoint(output_dir: Path, step: int, ranks: Ranks, train: TrainingState, state: dict[str, Any], keep_last: int) -> Path:
    """Write step `step` atomically (every rank calls this), then keep the newest `keep_last`."""
    import torch.distributed.checkpoint as dcp

    root = checkpoint_root(output_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if ranks.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a run killed while writing; never a complete checkpoint
        (tmp / "rng").mkdir(parents=True)
    ranks.barrier()
    with quiet_single_process():
        dcp.save(_dcp_state(train, with_optimizer=bool(train.optimizer.state)), checkpoint_id=str(tmp / DCP_DIR), no_dist=not ranks.distributed)
    torch.save(capture_rng(), tmp / "rng" / f"rank_{ranks.rank}.pt")
    fsync_files(tmp, lambda f: f"__{ranks.rank}_" in f.name or f.name == f"rank_{ranks.rank}.pt")
    ranks.barrier()
    if ranks.is_main:
        torch.save(train.scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "world_size": ranks.world_size}, indent=1, default=str))
        (tmp / MARKER).write_text(str(step))
        fsync_files(tmp, lambda f: not f.name.startswith("__") and not f.name.startswith("rank_"))
        publish_dir(tmp, final)
        complete = [p for p in _step_dirs(root) if (p / MARKER).exists()]
        for stale in complete[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    ranks.barrier()
    return final


@contextmanager
def quiet_single_process() -> Iterator[None]:
    """DCP warns that it runs without a process group; on one rank that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished directory into place; one of the same name already there (the same step
    written again) is swapped out atomically, then dropped."""
    if final.exists():
        old = final.with_name(f".old_{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def fsync_files(path: Path, mine=lambda file: True) -> None:
    for file in path.rglob("*"):
        if file.is_file() and mine(file):
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
    if not (newest / STATE_FILE).exists():
        raise CheckpointError(f"checkpoint {newest} is corrupt: missing {STATE_FILE}. {advice}")
    try:
        state = json.loads((newest / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {newest} is corrupt: cannot read {STATE_FILE} ({err}). {advice}") from err
    pruned = state.get("finished") and not (newest / DCP_DIR).exists()  # `drop_resume_state`: nothing to load
    missing = [] if pruned else [name for name in REQUIRED if not (newest / name).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {newest} is corrupt: missing {', '.join(missing)}. {advice}")
    return LoadedCheckpoint(newest, state)


def has_resume_state(checkpoint: LoadedCheckpoint) -> bool:
    return (checkpoint.path / DCP_DIR).exists()


def drop_resume_state(output_dir: Path) -> int:
    """Delete what only a resume reads (DCP state, RNG, scheduler) from every checkpoint of a
    finished run, which is never resumed; `trainer_state.json` and the marker stay, so a rerun
    still says the run finished, and so do the exports. Rank 0 calls this. Returns bytes freed.
    Older checkpoints go first: a kill in between leaves the newest one whole."""
    freed = 0
    for step_dir in _step_dirs(checkpoint_root(output_dir)):
        for name in (DCP_DIR, "rng", "scheduler.pt"):
            path = step_dir / name
            if path.is_dir():
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            elif path.exists():
                freed += path.stat().st_size
                path.unlink()
    return freed


def check_compatible(checkpoint: LoadedCheckpoint, fingerprint: dict[str, str]) -> None:
    """Refuse to resume under a configuration that changes what is being trained."""
    saved = checkpoint.state.get("fingerprint", {})
    # A setting the checkpoint does not know is newer than it: only settings both know can differ.
    diffs = [f"{k}: checkpoint {saved[k]!r} vs now {v!r}" for k, v in fingerprint.items() if k in saved and saved[k] != v]
    if diffs:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was written by a different configuration ("
            + "; ".join(diffs)
            + "). Resume with the original settings, or use a new trainer.output_dir for a new run."
        )


def load_checkpoint(checkpoint: LoadedCheckpoint, ranks: Ranks, train: TrainingState) -> None:
    """Restore models, optimizer, scheduler and (on the same number of ranks) RNG, in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    path = checkpoint.path
    try:
        with_optimizer = "optimizer" in _saved_keys(path / DCP_DIR)
        state = _dcp_state(train, with_optimizer)
        if (train.momentum is None) != ("momentum" not in _saved_keys(path / DCP_DIR)):
            raise CheckpointError(f"checkpoint {path} {'lacks' if train.momentum is not None else 'has'} a momentum model")
        with quiet_single_process():
            dcp.load(state, checkpoint_id=str(path / DCP_DIR), no_dist=not ranks.distributed)
        policy_sd = _with_aliases(train.policy, state["policy"])
        if with_optimizer:
            set_state_dict(train.policy, train.optimizer, model_state_dict=policy_sd, optim_state_dict=state["optimizer"])
        else:
            set_model_state_dict(train.policy, policy_sd)
        if train.momentum is not None:
            set_model_state_dict(train.momentum, _with_aliases(train.momentum, state["momentum"]))
        train.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng = path / "rng" / f"rank_{ranks.rank}.pt"
        if rng.exists() and checkpoint.state.get("world_size", 1) == ranks.world_size:
            restore_rng(torch.load(rng, weights_only=False))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be restored ({load_failure(err)}). "
            f"Move it out of {path.parent} to resume from the previous one, or use a new trainer.output_dir."
        ) from err


def _saved_keys(dcp_dir: Path) -> set[str]:
    """Top-level keys ('policy', 'optimizer', 'momentum') stored in a DCP checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(dcp_dir)).read_metadata()
    return {key.split(".", 1)[0] for key in metadata.state_dict_metadata}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF checkpoint directory (safetensors)."""
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
