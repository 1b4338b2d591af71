"""The real-tokenizer test model (`model.name_or_path=tiny_bpe`): a small Qwen3 with a byte-level
BPE tokenizer trained on MATH text and a Qwen3-style chat template.

Why: the built-in `tiny` model has a character tokenizer and no chat template, so the path every
real run takes (chat-templated prompts, long BPE-tokenised MATH problems, `\\boxed{}` answers,
prompt-length limits, a vLLM engine) would otherwise run only on GPUs. This model runs it on a
CPU in seconds. Its weights are random: it scores about 0 on MATH, and is not meant to learn.

What is built, deterministically from `model.tiny_bpe` and the corpus file's bytes:
- the tokenizer: a `tokenizers` BPE over bytes (GPT-2's byte-to-unicode map, so any text
  round-trips), with Qwen2/3's pre-tokenisation regex (digits split one by one, which suits math)
  and NFC normalisation, trained on the `problem` and `solution` fields of the corpus records;
  special tokens `<|endoftext|>` (pad), `<|im_start|>` and `<|im_end|>` (EOS), as Qwen3's
  instruct tokenizer has them; no BOS;
- a chat template with Qwen3's layout (`<|im_start|>{role}\\n{content}<|im_end|>\\n` per turn,
  then `<|im_start|>assistant\\n`), without Qwen3's tool and thinking branches;
- a Qwen3ForCausalLM with tied embeddings and head size hidden_size / num_heads >= 32 (vLLM's
  CPU attention needs >= 32), initialised from `seed`.

Cached in `<cache_dir>/tiny_bpe-<key>/` (key: the settings and the corpus's SHA-256) with the
complete-or-absent rules of `mgrpo.models.cache`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from mgrpo.models.cache import ensure_entry, settings_key, sha256_file, write_marker
from mgrpo.models.tiny import small_qwen3

if TYPE_CHECKING:
    from mgrpo.config import DataConfig, TinyBPEModelConfig

log = logging.getLogger(__name__)

BUILD_FORMAT = 1
"""Bump when the build recipe changes, so old cache entries are not reused."""
MARKER = "mgrpo_tiny_bpe_build.json"
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
MIN_HEAD_DIM = 32
"""vLLM's CPU attention backend supports head sizes of 32 and more."""
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2/Qwen3's pre-tokenisation regex: words, single digits, punctuation runs, whitespace."""
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen3's turn layout, without its tool-calling and thinking branches."""
CORPUS_FIELDS = ("problem", "solution")


def check_tiny_bpe_settings(cfg: TinyBPEModelConfig) -> None:
    """Raise ValueError, naming the `model.tiny_bpe.*` key, on settings the build cannot use."""
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"model.tiny_bpe.{key}={getattr(cfg, key)} must be >= 1")
    if cfg.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"model.tiny_bpe.vocab_size={cfg.vocab_size} must be >= {256 + len(SPECIAL_TOKENS)} (256 bytes + specials)")
    head_dim, rest = divmod(cfg.hidden_size, cfg.num_heads)
    if rest or head_dim % 2 or head_dim < MIN_HEAD_DIM:
        raise ValueError(
            f"model.tiny_bpe.hidden_size={cfg.hidden_size} / model.tiny_bpe.num_heads={cfg.num_heads} must be an even "
            f"head size >= {MIN_HEAD_DIM} (RoPE needs it even, vLLM's CPU attention >= {MIN_HEAD_DIM})"
        )


def corpus_path(cfg: TinyBPEModelConfig, data: DataConfig) -> Path:
    """The tokenizer's training corpus: `model.tiny_bpe.corpus_path`, else `data.train_path` for
    local-file tasks. Raises ValueError saying what to set when there is none."""
    path = cfg.corpus_path or (data.train_path if data.task in ("jsonl", "parquet") else None)
    if not path:
        raise ValueError(
            "model.name_or_path=tiny_bpe trains its tokenizer on MATH text: set model.tiny_bpe.corpus_path to a JSONL or "
            f"Parquet file of problems (e.g. ../shared/data/math4500.jsonl); data.task={data.task} gives no local file"
        )
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"model.tiny_bpe.corpus_path={path!r}: no such file; set it to a JSONL or Parquet file of problems")
    return file.resolve()


def corpus_texts(path: Path) -> Iterator[str]:
    """The `problem` and `solution` strings of every record, in file order."""
    from mgrpo.tasks.datasets import read_records

    for _, record in read_records(str(path), "model.tiny_bpe.corpus_path"):
        for key in CORPUS_FIELDS:
            value = record.get(key) if hasattr(record, "get") else None
            if isinstance(value, str) and value:
                yield value


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (see the module docstring) trained on `texts`."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_bpe_model(cfg: TinyBPEModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    """A freshly initialised Qwen3 LM for `tokenizer`, identical for the same `cfg.seed` (the
    global RNG state is left as it was)."""
    check_tiny_bpe_settings(cfg)
    return small_qwen3(
        tokenizer, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, max_positions=cfg.max_position_embeddings, seed=cfg.seed,
    )


def build_settings(cfg: TinyBPEModelConfig, corpus: Path) -> dict[str, object]:
    """Everything the build depends on: the settings but `cache_dir` and `corpus_path` (the
    corpus enters by content, so a moved copy of it reuses the entry)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "corpus_path")}
    settings.update(corpus_sha256=sha256_file(corpus), build_format=BUILD_FORMAT)
    return settings


def _build(entry: Path, cfg: TinyBPEModelConfig, corpus: Path) -> None:
    started = time.time()
    settings = build_settings(cfg, corpus)
    tokenizer = train_bpe_tokenizer(corpus_texts(corpus), cfg.vocab_size, cfg.max_position_embeddings)
    model = build_tiny_bpe_model(cfg, tokenizer)
    model.save_pretrained(entry)
    tokenizer.save_pretrained(entry)
    write_marker(
        entry,
        MARKER,
        {
            "settings": settings,
            "corpus": str(corpus),
            "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.time() - started, 1),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        },
    )
    log.info("built the tiny_bpe model %s in %.1fs (vocab %d)", entry.name, time.time() - started, len(tokenizer))


def ensure_tiny_bpe_model(cfg: TinyBPEModelConfig, data: DataConfig) -> Path:
    """The directory of the cached tiny_bpe model for these settings and corpus, built on first
    use (a few seconds of CPU)."""
    check_tiny_bpe_settings(cfg)
    corpus = corpus_path(cfg, data)
    key = settings_key(build_settings(cfg, corpus))
    return ensure_entry(Path(cfg.cache_dir).expanduser(), f"tiny_bpe-{key}", MARKER, lambda tmp: _build(tmp, cfg, corpus))
