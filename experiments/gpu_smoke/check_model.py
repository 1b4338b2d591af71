"""What the H200 check trains on: a randomly initialised model with Qwen3-4B-Base's exact shape,
a stand-in tokenizer with Qwen3's vocabulary size and special tokens, and synthetic problems,
all written to a local directory so the trainer loads them as it loads a real checkpoint.

Nothing is downloaded. The shape is Qwen3-4B-Base's config.json (read against a copy of the
checkpoint's config: hidden 2560, 36 layers, 32 query and 8 KV heads of 128, MLP 9728, vocabulary
151,936, tied embeddings, RoPE theta 1e6, 32,768 positions, BOS = EOS = <|endoftext|> 151643).

The tokenizer is not Qwen's BPE (that needs the hub): it is a `tokenizers` WordLevel model with
Qwen3's sizes (151,643 regular tokens, then Qwen3's 26 special tokens at ids 151,643-151,668, so
len(tokenizer) = 151,669 as for the real one, EOS and pad = <|endoftext|> as in the base
checkpoint, and the chat template's turns end in <|im_end|>). Printable ASCII characters are
single tokens, so prompts are encoded one token per character. One regular token in eight spells
`\\boxed{d}` (d = 0..9, after a unique word): random weights sample near-uniformly over the
vocabulary, so every garbage sample carries answers, and the vote, the grader and non-zero
advantages have real work. The answers mean nothing.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

from mgrpo.models.bpe import CHAT_TEMPLATE
from mgrpo.tasks.prompts import MATH_PROMPT, prompt_lengths, render_prompt

QWEN3_4B_BASE = {
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 9728,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "attention_bias": False,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}
"""Qwen3-4B-Base's config.json, the fields that decide the shape and the special ids."""

SHAPES = {
    "qwen3_4b": QWEN3_4B_BASE,
    # The same vocabulary and tokenizer at a CPU-sized width and depth (GQA kept: 4 query, 2 KV heads).
    "tiny": {**QWEN3_4B_BASE, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128},
}

REGULAR_TOKENS = 151643
"""Qwen3's regular vocabulary; the special tokens follow it."""
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
"""Qwen3's special tokens in id order from 151,643 (the base checkpoint's tokenizer_config.json)."""
EOS = "<|endoftext|>"
BOXED_EVERY = 8
"""One regular word token in this many spells a \\boxed{} answer."""
UNK = "<unk>"


def expected_parameters(shape: dict) -> int:
    """Parameter count of a Qwen3 causal LM of this shape (tied embeddings counted once)."""
    h, heads, kv, d, mlp, layers = (shape[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "num_hidden_layers"))
    attention = h * heads * d + 2 * h * kv * d + heads * d * h + 2 * d  # q, k, v, o and the q/k norms
    per_layer = attention + 3 * h * mlp + 2 * h  # SwiGLU MLP and the two RMSNorms
    embeddings = shape["vocab_size"] * h * (1 if shape["tie_word_embeddings"] else 2)
    return layers * per_layer + embeddings + h  # + the final norm


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The stand-in tokenizer described in the module docstring."""
    characters = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII and newline
    vocab = {token: i for i, token in enumerate([UNK, *characters])}
    word = 0
    while len(vocab) < REGULAR_TOKENS:
        vocab[f" w{word}" + (f" \\boxed{{{word % 10}}}" if word % BOXED_EVERY == 0 else "")] = len(vocab)
        word += 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenation: word tokens carry their own leading space
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=QWEN3_4B_BASE["max_position_embeddings"],
    )
    tokenizer.add_tokens([t for t in SPECIAL_TOKENS if t != EOS], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(REGULAR_TOKENS, REGULAR_TOKENS + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"the stand-in tokenizer put Qwen3's special tokens at ids {ids[:3]}...; expected 151643...")
    return tokenizer


def write_model_dir(directory: Path, shape: dict, device: torch.device, seed: int) -> dict:
    """Write a random-weight checkpoint of `shape` (bf16 safetensors, as the real one is stored)
    and the stand-in tokenizer to `directory`. The weights are initialised on `device`, in bf16,
    with transformers' own initialisation (normal, std 0.02). Returns the config as written."""
    tokenizer = build_tokenizer()
    config = Qwen3Config(**shape, pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with device:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = shape["eos_token_id"]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    written = json.loads((directory / "config.json").read_text())
    written["parameters"] = parameters
    return written


FILLER = " The numbers are listed again for the record:"


def write_problems(path: Path, tokenizer, count: int, prompt_tokens: int) -> None:
    """`count` synthetic sum problems (JSONL: problem, answer) whose prompts, rendered as the
    trainer renders them (MATH prompt in the chat template), are exactly `prompt_tokens` tokens:
    the rollout and the update then run at a known length."""
    overhead = prompt_lengths(tokenizer, [render_prompt(tokenizer, MATH_PROMPT.replace("{problem}", ""))])[0]
    width = prompt_tokens - overhead
    if width < 16:
        raise ValueError(f"--prompt-tokens={prompt_tokens} leaves {width} tokens for the problem; use at least {overhead + 16}")
    with path.open("w") as f:
        for i in range(count):
            a, b = 10 + 7 * i % 90, 10 + 13 * i % 90
            head = f"Problem {i}: compute {a} + {b}."
            body = (head + FILLER + f" {a}, {b}." * width)[:width]
            f.write(json.dumps({"problem": body, "answer": str(a + b)}) + "\n")
    rendered = render_prompt(tokenizer, MATH_PROMPT.replace("{problem}", body))
    if prompt_lengths(tokenizer, [rendered])[0] != prompt_tokens:
        raise RuntimeError(f"synthetic prompts came out at {prompt_lengths(tokenizer, [rendered])[0]} tokens, not {prompt_tokens}")
