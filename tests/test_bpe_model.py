"""The real-tokenizer test model (`model.name_or_path=tiny_bpe`): deterministic, cached, a byte-level
BPE on MATH text with a Qwen3-style chat template, loadable as an ordinary HF checkpoint."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mgrpo.config import ConfigError, DataConfig, TinyBPEModelConfig
from mgrpo.config_checks import validate
from mgrpo.models import bpe
from mgrpo.models.bpe import MARKER, ensure_tiny_bpe_model
from mgrpo.models.cache import is_complete
from mgrpo.models.loading import ModelLoadError, resolve_model_path
from tests.trainer_helpers import compose_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(shared_data_dir) -> Path:
    return shared_data_dir / "math4500.jsonl"


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus) -> Path:
    return ensure_tiny_bpe_model(TinyBPEModelConfig(corpus_path=str(corpus), cache_dir=str(tmp_path_factory.mktemp("bpe"))), DataConfig())


def test_build_is_deterministic_across_cache_dirs(built, corpus, tmp_path):
    other = ensure_tiny_bpe_model(TinyBPEModelConfig(corpus_path=str(corpus), cache_dir=str(tmp_path)), DataConfig())
    assert other.name == built.name, "same settings and corpus, same key"
    files = json.loads((built / MARKER).read_text())["files"]
    assert files == json.loads((other / MARKER).read_text())["files"], "byte-identical tokenizer, config and weights"
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(files)


def test_tokenizer_is_byte_level_bpe_with_chat_template_and_specials(built):
    tok = AutoTokenizer.from_pretrained(built)
    assert 512 < len(tok) <= 1024
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert tok.eos_token_id != tok.pad_token_id
    text = "Find $\\frac{3}{4}\\cdot 12345$ — naïve ∑ 😀 \n\tdone"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text, "byte-level: any text round-trips"
    assert len(ids) < len(text.encode()), "BPE merges learned from MATH text"
    digits = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert digits == list("12345"), "digits are split one by one, as Qwen's pre-tokenizer does"
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 1+1?"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    chat_ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert chat_ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.eos_token_id in chat_ids, "specials are single tokens"
    spelled = tok("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert spelled == [tok.eos_token_id]


def test_model_is_a_small_qwen3_with_head_dim_at_least_32(built):
    model = AutoModelForCausalLM.from_pretrained(built)
    c = model.config
    assert c.model_type == "qwen3" and c.head_dim >= 32 and c.hidden_size // c.num_attention_heads == c.head_dim
    assert c.tie_word_embeddings and c.max_position_embeddings >= 512 + 3072
    assert sum(p.numel() for p in model.parameters()) < 500_000
    tok = AutoTokenizer.from_pretrained(built)
    assert c.vocab_size == len(tok) and model.generation_config.eos_token_id == tok.eos_token_id
    out = model.generate(**tok(["1+1="], return_tensors="pt"), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, len(tok("1+1=")["input_ids"]) + 4)


def test_second_call_reuses_the_entry_and_a_damaged_one_is_rebuilt(corpus, tmp_path, monkeypatch):
    builds = []
    original = bpe._build
    monkeypatch.setattr(bpe, "_build", lambda *a: (builds.append(1), original(*a)))
    cfg = TinyBPEModelConfig(corpus_path=str(corpus), cache_dir=str(tmp_path))
    entry = ensure_tiny_bpe_model(cfg, DataConfig())
    assert ensure_tiny_bpe_model(cfg, DataConfig()) == entry and builds == [1]
    (entry / "model.safetensors").write_bytes(b"garbage")
    assert not is_complete(entry, MARKER)
    assert ensure_tiny_bpe_model(cfg, DataConfig()) == entry and builds == [1, 1] and is_complete(entry, MARKER)
    assert not list(tmp_path.glob(".tiny_bpe-*.tmp-*")), "no temporary directories left"


def test_key_follows_settings_and_corpus_content_not_its_path(corpus, tmp_path):
    cfg = TinyBPEModelConfig(corpus_path=str(corpus))
    key = bpe.settings_key(bpe.build_settings(cfg, corpus))
    moved = tmp_path / "copy.jsonl"
    shutil.copy(corpus, moved)
    assert bpe.settings_key(bpe.build_settings(replace(cfg, corpus_path=str(moved), cache_dir="/x"), moved)) == key
    edited = tmp_path / "edited.jsonl"
    edited.write_text(corpus.read_text()[:-2] + " \n")
    assert bpe.settings_key(bpe.build_settings(cfg, edited)) != key
    for changed in (replace(cfg, seed=1), replace(cfg, vocab_size=2048), replace(cfg, num_layers=3)):
        assert bpe.settings_key(bpe.build_settings(changed, corpus)) != key


def test_resolve_uses_the_training_file_as_corpus_by_default(built, corpus):
    from mgrpo.config import ModelConfig

    model = ModelConfig(name_or_path="tiny_bpe", tiny_bpe=TinyBPEModelConfig(cache_dir=str(built.parent)))
    assert resolve_model_path(model, DataConfig(task="jsonl", train_path=str(corpus))) == str(built)
    with pytest.raises(ModelLoadError, match="set model.tiny_bpe.corpus_path"):
        resolve_model_path(model, DataConfig())


def test_settings_errors_name_the_key(corpus):
    with pytest.raises(ValueError, match=r"model.tiny_bpe.hidden_size=64 / model.tiny_bpe.num_heads=4 .*>= 32"):
        bpe.check_tiny_bpe_settings(TinyBPEModelConfig(num_heads=4))
    with pytest.raises(ValueError, match="model.tiny_bpe.vocab_size=100"):
        bpe.check_tiny_bpe_settings(TinyBPEModelConfig(vocab_size=100))
    with pytest.raises(ConfigError, match="head size >= 32"):
        validate(compose_config(["model.name_or_path=tiny_bpe", "model.tiny_bpe.num_heads=4", f"model.tiny_bpe.corpus_path={corpus}"]))
    with pytest.raises(ConfigError, match="model.tiny_bpe.corpus_path=None"):
        validate(compose_config(["model.name_or_path=tiny_bpe"]))
    validate(compose_config(["model.name_or_path=tiny_bpe", "data.task=jsonl", f"data.train_path={corpus}"]))
