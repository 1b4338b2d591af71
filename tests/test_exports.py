"""Checkpoints hold only what resume needs; Hugging Face exports are written where asked, survive
the checkpoints' rotation, and `mgrpo-eval` converts a checkpoint without one from its DCP state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mgrpo import checkpoint as ckpt
from mgrpo.eval_inputs import EvalError, load_config, locate_checkpoint, materialize
from mgrpo.exports import EXPORT_FILE, export_dir, export_from_checkpoint
from mgrpo.models import resolve_model_path
from mgrpo.models.loading import load_tokenizer
from tests.test_trainer import fast_overrides
from tests.trainer_helpers import compose_config, train


def same_tensors(a: Path, b: Path) -> None:
    left, right = ckpt.load_tensors(a), ckpt.load_tensors(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_exports_every_n_steps_with_momentum_outlive_rotated_checkpoints(tiny_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    overrides = fast_overrides(
        tiny_cache, uri, "exports", "trainer.total_steps=4", "trainer.checkpoint_every=1", "trainer.keep_last=1",
        "trainer.export_every=2", "trainer.export_momentum=true", "trainer.eval_every=4", "trainer.keep_finished_state=true",
    )
    train(overrides, out)

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004"]
    final = out / "checkpoints" / "step_000004"
    assert not any((final / name).exists() for name in ("policy", "momentum")), "a checkpoint holds only what resume needs"
    assert sorted(p.name for p in (out / "exports").iterdir()) == ["step_000002", "step_000004"]
    run_id = (out / "mlflow_run_id").read_text().strip()
    for step in (2, 4):
        export = export_dir(out, step)
        assert json.loads((export / EXPORT_FILE).read_text()) == {"step": step, "run_id": run_id, "models": ["policy", "momentum"]}
        for model in ("policy", "momentum"):
            assert (export / model / "config.json").exists() and (export / model / "model.safetensors").exists()
        assert (export / "policy" / "tokenizer_config.json").exists()

    # The export is the checkpoint's policy, bit for bit (float32 tiny model).
    cfg = compose_config(overrides)
    base = resolve_model_path(cfg.model, cfg.data)
    converted = export_from_checkpoint(final, tmp_path / "converted", base, torch.float32, load_tokenizer(base), run_id)
    same_tensors(converted, export_dir(out, 4) / "policy")

    info = locate_checkpoint(str(out))
    assert (info.model_path, info.step, info.run_id, info.convert_from) == (str((export_dir(out, 4) / "policy").resolve()), 4, run_id, None)
    older = locate_checkpoint(str(export_dir(out, 2)))
    assert (older.step, older.run_id, older.run_dir) == (2, run_id, out.resolve())
    assert locate_checkpoint(str(export_dir(out, 2) / "momentum")).step == 2


def test_mgrpo_eval_converts_a_checkpoint_without_export_and_old_layouts_still_resume(tiny_cache, tmp_path, caplog):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    overrides = fast_overrides(
        tiny_cache, uri, "convert", "trainer.total_steps=2", "trainer.checkpoint_every=1", "trainer.keep_last=3", "trainer.keep_finished_state=true"
    )
    train(overrides, out)
    assert sorted(p.name for p in (out / "exports").iterdir()) == ["step_000002"], "only the final step is exported by default"

    step1 = out / "checkpoints" / "step_000001"
    info = locate_checkpoint(str(step1))
    assert info.model_path is None and info.convert_from == step1.resolve() and info.step == 1
    model = materialize(info, load_config(info, []))
    assert Path(model) == (export_dir(out, 1) / "policy").resolve() and info.model_path == model
    assert json.loads((export_dir(out, 1) / EXPORT_FILE).read_text())["converted_from"] == str(step1.resolve())
    assert locate_checkpoint(str(step1)).model_path == model, "the next evaluation finds the conversion"
    # Converting the final checkpoint gives exactly what training exported.
    cfg = compose_config(overrides)
    base = resolve_model_path(cfg.model, cfg.data)
    same_tensors(export_from_checkpoint(out / "checkpoints" / "step_000002", tmp_path / "again", base, torch.float32, None, None), export_dir(out, 2) / "policy")

    # Another architecture than the run's base: the error names the setting, nothing is written.
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    config.intermediate_size += 8  # MLP weights of other shapes
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "wider")
    with pytest.raises(ckpt.CheckpointError, match="Size mismatch.*model.name_or_path must be the base model"):
        export_from_checkpoint(out / "checkpoints" / "step_000002", tmp_path / "other", str(tmp_path / "wider"), torch.float32, None, None)
    assert not (tmp_path / "other").exists(), "nothing is left behind"

    # A checkpoint of the old layout (HF policy/ inside it) is evaluated from there and resumes.
    shutil.rmtree(out / "checkpoints" / "step_000002")
    shutil.rmtree(export_dir(out, 2))
    shutil.move(str(export_dir(out, 1) / "policy"), str(step1 / "policy"))
    shutil.rmtree(export_dir(out, 1))
    assert locate_checkpoint(str(out)).model_path == str((step1 / "policy").resolve())
    with caplog.at_level("INFO", logger="mgrpo.trainer"):
        train(overrides, out)
    assert f"resumed from {step1} at step 1" in caplog.text
    assert (export_dir(out, 2) / "policy" / "config.json").exists()


def test_a_finished_run_keeps_its_record_and_exports_not_its_resume_state(tiny_cache, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    overrides = fast_overrides(tiny_cache, uri, "finished", "trainer.total_steps=2", "trainer.checkpoint_every=1", "trainer.keep_last=2")
    objective = train(overrides, out)
    for step_dir in (out / "checkpoints").iterdir():
        assert sorted(p.name for p in step_dir.iterdir()) == [ckpt.MARKER, ckpt.STATE_FILE], step_dir
    assert train(overrides, out) == objective, "a rerun reads the record and says the run finished"
    assert "already finished at step 2" in capsys.readouterr().err
    assert locate_checkpoint(str(out)).model_path == str((export_dir(out, 2) / "policy").resolve())
    with pytest.raises(EvalError, match="keeps no model.*step_000002"):
        locate_checkpoint(str(out / "checkpoints" / "step_000001"))
