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


class EvalError(RuntimeError):
    """mgrpo-eval cannot go on; the message says what to change."""


@dataclass
class CheckpointInfo:
    """What is evaluated and where it came from."""

    model_path: str
    """The HF checkpoint directory (or hub name) given to the engine."""
    step: int
    """The training step of the checkpoint (0 for a checkpoint from elsewhere)."""
    run_dir: Optional[Path]
    """The run's output directory, when the checkpoint belongs to a run."""
    run_id: Optional[str]
    """The MLflow run that wrote the checkpoint, when known."""

    @property
    def label(self) -> str:
        if self.run_dir is not None:
            return f"{self.run_dir.name}/step_{self.step:06d}"
        return Path(self.model_path).name or self.model_path


def _hub_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", value))


def _from_step_dir(step_dir: Path, model_dir: Optional[Path] = None) -> CheckpointInfo:
    if not (step_dir / ckpt.MARKER).exists():
        raise EvalError(f"checkpoint {step_dir} is incomplete (no {ckpt.MARKER} marker); evaluate another checkpoint")
    try:
        state = json.loads((step_dir / ckpt.STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"checkpoint {step_dir}: cannot read {ckpt.STATE_FILE} ({e})") from e
    model = model_dir or step_dir / "policy"
    if not (model / "config.json").exists():
        raise EvalError(f"checkpoint {step_dir} has no Hugging Face model in {model.name}/ (no config.json)")
    run_dir = step_dir.parent.parent
    run_id = (state.get("tracking") or {}).get("run_id")
    if not run_id and (run_dir / "mlflow_run_id").exists():
        run_id = (run_dir / "mlflow_run_id").read_text().strip() or None
    return CheckpointInfo(str(model.resolve()), int(state["step"]), run_dir.resolve(), run_id)


def locate_checkpoint(path: str) -> CheckpointInfo:
    """Resolve PATH: a run's output dir (latest complete checkpoint), a checkpoint dir
    (`step_NNNNNN`), a model dir inside one (`policy/`, `momentum/`), any HF checkpoint dir, or
    a hub name."""
    p = Path(path).expanduser()
    if not p.exists():
        if _hub_name(path) and not path.startswith((".", "/", "~")):
            return CheckpointInfo(path, 0, None, None)
        raise EvalError(f"{path}: no such checkpoint, run directory or model directory")
    if (p / ckpt.STATE_FILE).exists() and (p / "policy").is_dir():
        return _from_step_dir(p)
    if (p / "config.json").exists():
        if (p.parent / ckpt.STATE_FILE).exists():
            return _from_step_dir(p.parent, p)
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
        "policy/) nor a Hugging Face model directory (no config.json)"
    )


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
