"""What `mgrpo-eval` evaluates: locating a checkpoint (a run, a checkpoint of it, a model
directory or a hub name) and the settings it is evaluated with (the run's own config.yaml, or
the root config, plus overrides)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mgrpo import checkpoint as ckpt
from mgrpo.config import Config, ConfigError
from mgrpo.config_checks import validate_benchmarks
from mgrpo.exports import EXPORT_FILE, EXPORTS_DIR, POLICY, export_dir, export_from_checkpoint, read_export


class EvalError(RuntimeError):
    """mgrpo-eval cannot go on; the message says what to change."""


@dataclass
class CheckpointInfo:
    """What is evaluated and where it came from."""

    model_path: Optional[str]
    """The HF checkpoint directory (or hub name) given to the engine; None until a checkpoint
    without an export is converted (`convert_from`, `materialize`)."""
    step: int
    """The training step of the checkpoint (0 for a checkpoint from elsewhere)."""
    run_dir: Optional[Path]
    """The run's output directory, when the checkpoint belongs to a run."""
    run_id: Optional[str]
    """The MLflow run that wrote the checkpoint, when known."""
    convert_from: Optional[Path] = None
    """A run's checkpoint that has no Hugging Face export: its DCP policy is exported first."""

    @property
    def label(self) -> str:
        if self.run_dir is not None:
            return f"{self.run_dir.name}/step_{self.step:06d}"
        return Path(self.model_path).name or self.model_path


def _hub_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", value))


def _from_step_dir(step_dir: Path, model_dir: Optional[Path] = None) -> CheckpointInfo:
    """A run's checkpoint: its export if it has one (`exports/step_N/policy`, or `policy/` inside
    a checkpoint written before exports moved out), else its DCP state, converted later."""
    if not (step_dir / ckpt.MARKER).exists():
        raise EvalError(f"checkpoint {step_dir} is incomplete (no {ckpt.MARKER} marker); evaluate another checkpoint")
    try:
        state = json.loads((step_dir / ckpt.STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"checkpoint {step_dir}: cannot read {ckpt.STATE_FILE} ({e})") from e
    run_dir = step_dir.parent.parent
    step = int(state["step"])
    if model_dir is None:
        exported = [d for d in (export_dir(run_dir, step) / POLICY, step_dir / POLICY) if (d / "config.json").exists()]
        model_dir = exported[0] if exported else None
    run_id = (state.get("tracking") or {}).get("run_id")
    if not run_id and (run_dir / "mlflow_run_id").exists():
        run_id = (run_dir / "mlflow_run_id").read_text().strip() or None
    if model_dir is None and not (step_dir / ckpt.DCP_DIR).is_dir():
        exports = sorted(p.name for p in (run_dir / EXPORTS_DIR).glob("step_*"))
        raise EvalError(
            f"checkpoint {step_dir} keeps no model: the run finished and deleted its resume state "
            f"(trainer.keep_finished_state=false), and step {step} was not exported (trainer.export_every); "
            f"evaluate one of its exports in {run_dir / EXPORTS_DIR}: {', '.join(exports) or 'none'}"
        )
    if model_dir is None:
        return CheckpointInfo(None, step, run_dir.resolve(), run_id, convert_from=step_dir.resolve())
    return CheckpointInfo(str(model_dir.resolve()), step, run_dir.resolve(), run_id)


def _from_export(directory: Path, model_dir: Path, export: dict) -> CheckpointInfo:
    run_dir = directory.parent.parent
    return CheckpointInfo(str(model_dir.resolve()), int(export["step"]), run_dir.resolve(), export.get("run_id"))


def locate_checkpoint(path: str) -> CheckpointInfo:
    """Resolve PATH: a run's output dir (latest complete checkpoint), a checkpoint dir
    (`checkpoints/step_NNNNNN`), an export (`exports/step_NNNNNN`) or a model dir inside one
    (`policy/`, `momentum/`), any HF checkpoint dir, or a hub name."""
    p = Path(path).expanduser()
    if not p.exists():
        if _hub_name(path) and not path.startswith((".", "/", "~")):
            return CheckpointInfo(path, 0, None, None)
        raise EvalError(f"{path}: no such checkpoint, run directory or model directory")
    if (p / ckpt.STATE_FILE).exists() and (p / ckpt.MARKER).exists():
        return _from_step_dir(p)
    export = read_export(p)
    if export is not None and (p / POLICY / "config.json").exists():
        return _from_export(p, p / POLICY, export)
    if (p / "config.json").exists():
        if (p.parent / ckpt.STATE_FILE).exists():
            return _from_step_dir(p.parent, p)
        export = read_export(p.parent)
        if export is not None:
            return _from_export(p.parent, p, export)
        return CheckpointInfo(str(p.resolve()), 0, None, None)
    if ckpt.checkpoint_root(p).is_dir():
        try:
            found = ckpt.latest_checkpoint(p)
        except ckpt.CheckpointError as e:
            raise EvalError(str(e)) from e
        if found is None:
            raise EvalError(f"run directory {p} has no checkpoint yet")
        return _from_step_dir(found.path)
    raise EvalError(
        f"{path} is neither a run's output directory (no checkpoints/), a checkpoint (no {ckpt.STATE_FILE} and "
        f"{ckpt.MARKER}), an export (no {EXPORT_FILE}) nor a Hugging Face model directory (no config.json)"
    )


def materialize(info: CheckpointInfo, cfg: Config) -> str:
    """The model directory to evaluate: `info.model_path`, or, for a checkpoint without an
    export, its DCP policy exported now into the run's `exports/step_NNNNNN/` (in the run's
    compute dtype, as training exports it), where the next evaluation finds it."""
    if info.convert_from is None:
        return info.model_path
    import sys

    import torch

    from mgrpo.models.loading import load_tokenizer, resolve_model_path

    base = resolve_model_path(cfg.model, cfg.data)
    destination = export_dir(info.run_dir, info.step)
    print(f"[mgrpo-eval] {info.convert_from} has no export: writing its policy to {destination} (from its DCP state)", file=sys.stderr)
    try:
        model = export_from_checkpoint(info.convert_from, destination, base, getattr(torch, cfg.model.dtype), load_tokenizer(base), info.run_id)
    except OSError as e:
        raise EvalError(f"cannot write the export of {info.convert_from} into {destination} ({e}); make the run directory writable") from e
    info.model_path, info.convert_from = str(model.resolve()), None
    return info.model_path


def load_config(info: CheckpointInfo, overrides: Sequence[str]) -> Config:
    """The run's config.yaml (if the checkpoint has one) or the root config, with overrides."""
    from omegaconf import OmegaConf

    from mgrpo.train import compose_config

    saved = info.run_dir / "config.yaml" if info.run_dir is not None else None
    try:
        if saved is None or not saved.exists():
            return compose_config(list(overrides))
        groups = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")]
        if groups:
            raise EvalError(
                f"{', '.join(groups)}: config group selections apply to checkpoints from elsewhere; a run's checkpoint "
                "is evaluated with the run's own config.yaml plus key=value overrides"
            )
        base = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved))
        dotlist = [o.lstrip("+") for o in overrides]
        return OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist)))
    except EvalError:
        raise
    except Exception as e:  # Hydra and OmegaConf errors: say which override
        raise EvalError(f"invalid overrides {list(overrides)}: {str(e).splitlines()[0]}") from e


def check_config(cfg: Config) -> None:
    """The settings evaluation uses (the training ones are not checked: their files may be elsewhere)."""
    r = cfg.rollout
    if r.engine not in ("hf", "vllm"):
        raise ConfigError(f"rollout.engine={r.engine!r} is invalid: allowed values are hf, vllm")
    if not r.eval_temperature >= 0:
        raise ConfigError(f"rollout.eval_temperature={r.eval_temperature} must be >= 0 (0 = greedy)")
    for key in ("max_new_tokens", "max_prompt_tokens", "eval_batch_size"):
        if getattr(r, key) < 1:
            raise ConfigError(f"rollout.{key}={getattr(r, key)} must be >= 1")
    validate_benchmarks(cfg)
