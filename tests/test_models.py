"""Models: the character tokenizer, the tiny Qwen3 model, the cached base-model build, loading."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import mgrpo.models.tiny as tiny_module
from mgrpo.config import DataConfig, ModelConfig, TinyModelConfig
from mgrpo.models import (
    ModelLoadError,
    build_tiny_model,
    build_tiny_tokenizer,
    ensure_tiny_base_model,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)
from mgrpo.models import cache
from mgrpo.models.tiny import MARKER, greedy_accuracy, make_batch, sample_diversity, tiny_cache_key
from mgrpo.tasks import load_task

ASCII_TEXT = st.text(alphabet=st.sampled_from([chr(c) for c in range(32, 127)] + ["\n"]), max_size=60)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ---- tokenizer ------------------------------------------------------------------------------


@given(ASCII_TEXT)
def test_tokenizer_round_trips_ascii_one_token_per_character(text):
    tok = build_tiny_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_tokenizer_keeps_spaces_and_maps_other_characters_to_unk():
    tok = build_tiny_tokenizer()
    text = "  a  b\n c "
    assert tok.decode(tok(text)["input_ids"]) == text, "no added prefix space, no stripped spaces"
    ids = tok("é+1")["input_ids"]
    assert ids[0] == tok.unk_token_id and tok.decode(ids[1:]) == "+1"
    assert tok("12")["input_ids"] == tok("12", add_special_tokens=True)["input_ids"], "no BOS/EOS added"
    assert tok.eos_token_id not in tok("x<eos>")["input_ids"], "text cannot inject a special token"
    assert tok.decode(tok("5")["input_ids"] + [tok.eos_token_id], skip_special_tokens=True) == "5"


@settings(max_examples=20, deadline=None)
@given(ASCII_TEXT)
def test_tokenizer_survives_save_and_autotokenizer_load(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer().save_pretrained(path)
    loaded = AutoTokenizer.from_pretrained(path)
    original = build_tiny_tokenizer()
    assert loaded(text)["input_ids"] == original(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.pad_token, loaded.eos_token, loaded.padding_side) == ("<pad>", "<eos>", "left")
    assert len(loaded) == len(original)


def test_batches_pad_on_the_left():
    tok = build_tiny_tokenizer()
    batch = tok(["1+2=", "11+22="], padding=True, return_tensors="pt")
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6]
    assert batch["input_ids"][0, :2].tolist() == [tok.pad_token_id] * 2


# ---- model ----------------------------------------------------------------------------------

SMALL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_model_is_deterministic_in_its_seed_and_leaves_the_global_rng_alone():
    tok = build_tiny_tokenizer()
    state = torch.random.get_rng_state()
    a = build_tiny_model(TinyModelConfig(seed=1), tok).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_model(TinyModelConfig(seed=1), tok).state_dict()
    c = build_tiny_model(TinyModelConfig(seed=2), tok).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_default_model_shape():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tok)
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.vocab_size == len(tok) == 99
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 3, 4)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 300_000
    with pytest.raises(ValueError, match="model.tiny.hidden_size=30"):
        build_tiny_model(TinyModelConfig(hidden_size=30), tok)
    with pytest.raises(ValueError, match="model.tiny.check_every=0"):
        ensure_tiny_base_model(TinyModelConfig(check_every=0), DataConfig())


def test_supervised_batch_puts_the_loss_on_response_and_eos_only():
    tok = build_tiny_tokenizer()
    batch = make_batch(tok, [(63, 46, 94), (10, 10, 10)], "{problem}")
    prompt, response = "63+46+94=", "63+46=109,109+94=203####203"
    row = batch.input_ids[0].tolist()
    assert tok.decode(row[: len(prompt) + len(response)]) == prompt + response
    assert row[len(prompt) + len(response)] == tok.eos_token_id
    labels = batch.labels[0].tolist()
    assert labels[: len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt) : len(prompt) + len(response) + 1] == row[len(prompt) : len(prompt) + len(response) + 1]
    short = batch.attention_mask[1].sum().item()
    assert short == len("10+10+10=") + len("10+10=20,20+10=30####30") + 1
    assert (batch.labels[1, short:] == -100).all() and (batch.input_ids[1, short:] == tok.pad_token_id).all()


# ---- the cached build -----------------------------------------------------------------------


def small_settings(cache: Path) -> tuple[TinyModelConfig, DataConfig]:
    """A base model that builds in about a second: too small and short to learn the task."""
    tiny = TinyModelConfig(
        **SMALL,
        pretrain_steps=30,
        pretrain_batch_size=16,
        target_accuracy=None,
        probe_size=32,
        eval_size=16,
        cache_dir=str(cache),
    )
    return tiny, DataConfig(heldout_size=16)


@pytest.fixture
def count_builds(monkeypatch):
    """Counts calls of the supervised phase (one per build)."""
    calls = []
    original = tiny_module.pretrain

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_module, "pretrain", counting)
    return calls


def test_build_writes_a_loadable_checkpoint_and_report(tmp_path, count_builds):
    tiny, data = small_settings(tmp_path)
    entry = ensure_tiny_base_model(tiny, data)
    assert entry == tmp_path / f"tiny-{tiny_cache_key(tiny, data)}" and cache.is_complete(entry, MARKER)
    report = json.loads((entry / MARKER).read_text())
    assert report["pretrain"]["steps"] == 30 and report["heldout_size"] == 16
    assert report["settings"]["num_operands"] == 3 and report["settings"]["pretrain_steps"] == 30
    assert 0.0 <= report["heldout_greedy_accuracy"] <= 1.0 and "heldout_diverse_frac" in report
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(report["files"])

    path = resolve_model_path(ModelConfig(tiny=tiny), data)
    assert path == str(entry) and count_builds == [1]
    tok = load_tokenizer(path)
    model = load_causal_lm(path, torch.float32, torch.device("cpu"))
    assert tok.padding_side == "left" and tok.pad_token_id == 0 and tok.eos_token_id == 1
    assert model.generation_config.eos_token_id == 1 and model.config.model_type == "qwen3"
    out = model.generate(**tok(["12+34+56="], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= 9 + 4


def test_second_call_returns_the_entry_without_training(tmp_path, count_builds):
    tiny, data = small_settings(tmp_path)
    entry = ensure_tiny_base_model(tiny, data)
    mtime = (entry / MARKER).stat().st_mtime_ns
    assert ensure_tiny_base_model(tiny, data) == entry
    other_sizes = replace(data, heldout_size=5, max_train_problems=10)
    assert ensure_tiny_base_model(replace(tiny, eval_size=8), other_sizes) == entry
    assert count_builds == [1] and (entry / MARKER).stat().st_mtime_ns == mtime


def test_cache_key_covers_weights_and_task_shape_only():
    tiny, data = small_settings(Path("/unused"))
    key = tiny_cache_key(tiny, data)
    assert tiny_cache_key(replace(tiny, cache_dir="/elsewhere", eval_size=3), replace(data, heldout_size=9)) == key
    for changed in (replace(tiny, seed=1), replace(tiny, pretrain_lr=1e-3), replace(tiny, target_accuracy=0.3)):
        assert tiny_cache_key(changed, data) != key
    for changed in (replace(data, num_digits=3), replace(data, seed=2), replace(data, prompt_template="Q {problem}")):
        assert tiny_cache_key(tiny, changed) != key


@pytest.mark.parametrize("damage", ["marker", "weights", "tokenizer"])
def test_incomplete_or_corrupt_entries_are_rebuilt(tmp_path, count_builds, damage):
    tiny, data = small_settings(tmp_path)
    entry = ensure_tiny_base_model(tiny, data)
    if damage == "marker":
        (entry / MARKER).unlink()
    elif damage == "weights":
        weights = entry / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (entry / "tokenizer.json").unlink()
    assert not cache.is_complete(entry, MARKER)
    assert ensure_tiny_base_model(tiny, data) == entry
    assert cache.is_complete(entry, MARKER) and count_builds == [1, 1]


def test_failed_build_leaves_no_entry_and_stale_temp_dirs_are_cleaned(tmp_path, monkeypatch):
    tiny, data = small_settings(tmp_path)
    key = tiny_cache_key(tiny, data)
    stale = tmp_path / f".tiny-{key}.tmp-crashed"
    stale.mkdir()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_module, "pretrain", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_tiny_base_model(tiny, data)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [], "no entry, no temporary dir"


def _build_in_child(cache_dir: str, results) -> None:
    """Run in a forked process: build (or find) the small model, report path and builds run."""
    builds = []
    original = tiny_module.pretrain

    def counting(*args, **kwargs):
        builds.append(1)
        return original(*args, **kwargs)

    tiny_module.pretrain = counting
    try:
        tiny, data = small_settings(Path(cache_dir))
        results.put((str(ensure_tiny_base_model(tiny, data)), len(builds)))
    except BaseException as e:  # reported to the parent, which fails the test
        results.put((repr(e), -1))


def test_two_processes_at_once_produce_one_valid_entry(tmp_path):
    """Two forked processes (no re-import of torch) race for the same entry."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(builds >= 0 for _, builds in outcomes), outcomes
    assert sum(builds for _, builds in outcomes) == 1, "exactly one process trained"
    paths = {path for path, _ in outcomes}
    dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(paths) == 1 and [str(d) for d in dirs] == list(paths) and cache.is_complete(dirs[0], MARKER)


# ---- loading --------------------------------------------------------------------------------


def test_resolve_passes_directories_and_hub_names_and_rejects_missing_paths(tmp_path):
    data = DataConfig()
    assert resolve_model_path(ModelConfig(name_or_path=str(tmp_path)), data) == str(tmp_path.resolve())
    assert resolve_model_path(ModelConfig(name_or_path="Qwen/Qwen3-4B-Base"), data) == "Qwen/Qwen3-4B-Base"
    with pytest.raises(ModelLoadError, match=r"model.name_or_path='\./no/such/dir'"):
        resolve_model_path(ModelConfig(name_or_path="./no/such/dir"), data)


def test_load_errors_name_the_path_and_the_config_key(tmp_path):
    with pytest.raises(ModelLoadError, match=rf"model.name_or_path='{tmp_path}'"):
        load_causal_lm(str(tmp_path), torch.float32, torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="model.name_or_path"):
        load_tokenizer(str(tmp_path / "absent"))


def test_tokenizer_without_pad_uses_eos_and_model_loads_in_dtype(tmp_path):
    tok = build_tiny_tokenizer()
    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>", padding_side="right")
    bare.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "<eos>" and loaded.padding_side == "left"
    build_tiny_model(TinyModelConfig(**SMALL), tok).save_pretrained(tmp_path)
    model = load_causal_lm(str(tmp_path), torch.bfloat16, torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training


# ---- the real base model --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_base_model_is_decent_but_imperfect_and_diverse(tiny_cache):
    """The default build (about a minute on one free core) lands in the band the RL phenomenon
    needs: 30-50% greedy held-out accuracy, and samples at temperature 1 that disagree."""
    tiny, data = replace(TinyModelConfig(), cache_dir=str(tiny_cache)), DataConfig()
    path = resolve_model_path(ModelConfig(tiny=tiny), data)
    report = json.loads((Path(path) / MARKER).read_text())
    assert report["pretrain"]["reached_target"]
    model = load_causal_lm(path, torch.float32, torch.device("cpu"))
    tok = load_tokenizer(path)
    heldout = load_task(data).heldout
    accuracy = greedy_accuracy(model, tok, heldout, max_new_tokens=32)
    assert 0.30 <= accuracy <= 0.50
    assert accuracy == pytest.approx(report["heldout_greedy_accuracy"], abs=0.02)
    diversity = sample_diversity(model, tok, heldout[:200], max_new_tokens=32)
    assert diversity["diverse_frac"] > 0.5 and 0.05 < diversity["sample_accuracy"] < accuracy
