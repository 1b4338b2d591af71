"""The shipped tiny bases (mgrpo.models.tiny_bases): every machine loads the same weights, a
damaged entry is an error that names the fix, and a local rebuild is compared with them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from mgrpo.config import DataConfig, ModelConfig, TinyModelConfig
from mgrpo.models import tiny_bases
from mgrpo.models.cache import is_complete
from mgrpo.models.loading import ModelLoadError, load_causal_lm, resolve_model_path
from mgrpo.models.tiny import MARKER, tiny_cache_key


def _shipped(seed: int):
    return tiny_bases.shipped_entry(replace(TinyModelConfig(), seed=seed), DataConfig())


def test_every_shipped_seed_has_a_complete_distinct_base():
    weights = []
    for seed in tiny_bases.SHIPPED_SEEDS:
        entry = _shipped(seed)
        assert entry is not None and is_complete(entry, MARKER), seed
        report = json.loads((entry / MARKER).read_text())
        assert report["settings"]["seed"] == seed and report["heldout_size"] == TinyModelConfig().eval_size
        assert report["built_on"], "the marker says which CPU built the base"
        weights.append(load_file(str(entry / tiny_bases.WEIGHTS))["model.embed_tokens.weight"])
    assert all(not torch.equal(weights[0], w) for w in weights[1:])


def test_default_tiny_model_loads_the_shipped_base_without_building(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the shipped base should be loaded, not built")

    monkeypatch.setattr(tiny_bases, "ensure_tiny_base_model", no_build)
    model = ModelConfig(tiny=replace(TinyModelConfig(), cache_dir=str(tmp_path), seed=2))
    path = resolve_model_path(model, DataConfig())
    assert path == str(_shipped(2))
    assert load_causal_lm(path, torch.float32, torch.device("cpu")).config.model_type == "qwen3"
    assert not any(tmp_path.iterdir())


def test_prebuilt_false_and_unshipped_settings_build_locally(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(tiny_bases, "ensure_tiny_base_model", lambda tiny, data: built.append(tiny.seed) or tmp_path)
    data = DataConfig()
    assert tiny_bases.tiny_base_model_dir(replace(TinyModelConfig(), prebuilt=False), data) == tmp_path
    assert tiny_bases.tiny_base_model_dir(replace(TinyModelConfig(), seed=999), data) == tmp_path
    assert tiny_bases.tiny_base_model_dir(TinyModelConfig(), replace(data, num_digits=3)) == tmp_path
    assert built == [0, 999, 0]
    # prebuilt is not part of the key: the local build of the same settings is one cache entry.
    assert tiny_cache_key(replace(TinyModelConfig(), prebuilt=False), data) == tiny_cache_key(TinyModelConfig(), data)


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The shipped directory copied to tmp_path (seed 0 only), and used in its place."""
    entry = _shipped(0)
    root = tmp_path / "shipped"
    shutil.copytree(entry, root / entry.name)
    monkeypatch.setattr(tiny_bases, "SHIPPED_DIR", root)
    return root / entry.name


def test_damaged_shipped_base_is_an_error_naming_the_fix(shipped_copy):
    weights = load_file(str(shipped_copy / tiny_bases.WEIGHTS))
    weights["model.norm.weight"][0] += 1.0
    save_file(weights, str(shipped_copy / tiny_bases.WEIGHTS))
    with pytest.raises(ModelLoadError, match="damaged.*model.tiny.prebuilt=false"):
        resolve_model_path(ModelConfig(), DataConfig())


def _perturbed_rebuild(shipped):
    def build(entry, tiny, data):
        for f in shipped.iterdir():
            shutil.copy(f, entry / f.name)
        weights = load_file(str(entry / tiny_bases.WEIGHTS))
        weights["model.norm.weight"][3] += 0.25
        save_file(weights, str(entry / tiny_bases.WEIGHTS))

    return build


def test_check_says_when_a_local_rebuild_differs(shipped_copy, monkeypatch, capsys):
    identical = lambda entry, tiny, data: [shutil.copy(f, entry / f.name) for f in shipped_copy.iterdir()]  # noqa: E731
    monkeypatch.setattr(tiny_bases, "build_entry", identical)
    assert tiny_bases.main(["check", "--seed", "0"]) == 0
    assert "is identical to the shipped one" in capsys.readouterr().err

    monkeypatch.setattr(tiny_bases, "build_entry", _perturbed_rebuild(shipped_copy))
    assert tiny_bases.main(["check", "--seed", "0"]) == 1
    out, err = capsys.readouterr()
    result = json.loads(out.splitlines()[0])
    assert result["differing"] == ["model.norm.weight"] and result["max_abs_diff"] == pytest.approx(0.25)
    assert "DIFFERS" in err
    assert tiny_bases.main(["check", "--seed", "77"]) == 2


def test_list_prints_every_shipped_base(capsys):
    assert tiny_bases.main(["list"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seed"] for r in rows] == list(tiny_bases.SHIPPED_SEEDS)
    assert all(0 < r["heldout_greedy_accuracy"] < 1 for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_rebuild_check_runs_here(capsys):
    """The real build on this machine (about a minute of CPU): the check's verdict and exit code
    agree, whichever it is on this CPU."""
    code = tiny_bases.main(["check", "--seed", "0"])
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == (0 if result["identical"] else 1)
    assert result["local"]["seed"] == 0 and result["local"]["built_on"]
