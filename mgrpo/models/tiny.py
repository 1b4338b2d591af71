"""The built-in tiny model: a character tokenizer, a small Qwen3-architecture LM, and the
supervised pretraining that turns it into a decent-but-imperfect base model for the CPU default.

Why "decent but imperfect": self-supervised RL needs a base model whose majority vote is often,
but not always, right, and whose samples disagree. The recipe's CPU prototype saw SRT drift and
M-GRPO hold from a base at about 40% greedy held-out accuracy. Supervised accuracy on this task
rises steeply (often from 10% to 80% within 100 steps), so a fixed step count lands anywhere in
that range. Pretraining therefore stops at the first check where the model reproduces
`target_accuracy` of a probe set's worked solutions exactly, under teacher forcing: one forward
pass, and exactly the fraction of probe problems that greedy decoding would solve step by step.
Greedy final-answer accuracy runs a few points higher (a wrong chain can still end on the right
sum): the default target 0.35 gave 0.34-0.46 on the held-out set over seeds 0-5, in about a
minute of one CPU core each. Where pretraining stops depends on the CPU's float order, so the
package ships these bases (`mgrpo.models.tiny_bases`) and builds only other settings locally.

The base model is built on the arithmetic task's training region (see `mgrpo.tasks.arithmetic`):
supervised examples are drawn i.i.d. from it, never from the held-out region, and not from the
probe problems. Its weights thus depend on the task's shape, seed and prompt template but not on
`data.heldout_size` or `data.max_train_problems`, so runs that differ only in those share one
cached model.

Cache entries (`<cache_dir>/tiny-<key>/`) are ordinary Hugging Face checkpoint directories plus
`MARKER`, a JSON file with the build settings, the measured accuracy and a SHA-256 of every
file. An entry is used only when the marker is present and every checksum matches; anything
else is rebuilt. Builds run under a file lock, into a temporary directory renamed into place
(atomic on one filesystem), so concurrent callers (SLURM array jobs) get one valid entry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from mgrpo.algos.answers import extract_answer
from mgrpo.models.cache import cpu_description, ensure_entry, settings_key, write_marker
from mgrpo.tasks.arithmetic import (
    arithmetic_problem,
    arithmetic_solution,
    arithmetic_stream,
    heldout_region_mask,
    max_response_chars,
)
from mgrpo.tasks.base import Problem

if TYPE_CHECKING:
    from mgrpo.config import DataConfig, TinyModelConfig

log = logging.getLogger(__name__)

BUILD_FORMAT = 1
"""Bump when the build recipe changes, so old cache entries are not reused."""
MARKER = "mgrpo_tiny_build.json"
"""Written last into a cache entry: its presence (with matching checksums) means complete."""
MAX_POSITIONS = 1024
"""Recorded context length. RoPE has no position table, so this costs nothing."""
GRAD_CLIP = 1.0
"""Pretraining clips the global grad norm: the steep phase of this task has loss spikes."""
DIVERSITY_PROMPTS = 200
"""Held-out prompts sampled (at temperature 1) to measure how diverse the base model's answers are."""
DIVERSITY_SAMPLES = 8
"""Samples per prompt for that measurement, as many as the RL default's policy samples."""
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)
"""The tokenizer's vocabulary besides the specials: printable ASCII and newline."""


# ---- tokenizer and model --------------------------------------------------------------------


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per printable-ASCII character or newline, anything
    else `<unk>`; specials `<pad>` (id 0) and `<eos>` (id 1), left padding, no BOS. Text that
    spells a special token ('<eos>') is split into characters like any other text, so a prompt
    can never inject an EOS.

    It is a plain `tokenizers` WordLevel model with a pre-tokenizer that isolates every character
    and a `Fuse` decoder (concatenation), so `decode(encode(s)) == s` for such text, spaces
    included, and it reloads with `AutoTokenizer.from_pretrained` without custom code.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
    )


def check_tiny_settings(tiny: TinyModelConfig) -> None:
    """Raise ValueError, naming the `model.tiny.*` key, on settings the build cannot use."""
    positive = (
        "hidden_size", "num_layers", "num_heads", "intermediate_size",
        "pretrain_batch_size", "check_every", "probe_size", "eval_size",
    )
    for key in positive:
        if getattr(tiny, key) < 1:
            raise ValueError(f"model.tiny.{key}={getattr(tiny, key)} must be >= 1")
    if tiny.pretrain_steps < 0:
        raise ValueError(f"model.tiny.pretrain_steps={tiny.pretrain_steps} must be >= 0")
    if tiny.hidden_size % tiny.num_heads or (tiny.hidden_size // tiny.num_heads) % 2:
        raise ValueError(
            f"model.tiny.hidden_size={tiny.hidden_size} must be divisible by 2 * model.tiny.num_heads "
            f"(={2 * tiny.num_heads}): RoPE needs an even head size"
        )
    if tiny.target_accuracy is not None and not 0 < tiny.target_accuracy <= 1:
        raise ValueError(f"model.tiny.target_accuracy={tiny.target_accuracy} must be in (0, 1], or null")
    if not tiny.pretrain_lr > 0:
        raise ValueError(f"model.tiny.pretrain_lr={tiny.pretrain_lr} must be > 0")


def small_qwen3(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int, intermediate_size: int, num_layers: int,
                num_heads: int, max_positions: int, seed: int) -> Qwen3ForCausalLM:
    """A freshly initialised small Qwen3 LM over `tokenizer` (the tiny and tiny_bpe test models),
    identical for the same seed (the global RNG state is left as it was). Embeddings are tied:
    with a small vocabulary the output layer would otherwise be a needless extra matrix."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_model(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    """A freshly initialised Qwen3 LM with `tiny`'s sizes, identical for the same `tiny.seed`."""
    check_tiny_settings(tiny)
    return small_qwen3(
        tokenizer, hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_layers=tiny.num_layers, num_heads=tiny.num_heads, max_positions=MAX_POSITIONS, seed=tiny.seed,
    )


# ---- pretraining ----------------------------------------------------------------------------


@dataclass
class Batch:
    """Teacher-forcing batch of prompt + response + EOS, right-padded to length L."""

    input_ids: torch.Tensor
    """(B, L) token ids, `<pad>` after each sequence."""
    attention_mask: torch.Tensor
    """(B, L) 1 on real tokens."""
    labels: torch.Tensor
    """(B, L) target ids on response and EOS positions, -100 on prompt and padding."""


def make_batch(tokenizer: PreTrainedTokenizerFast, operands: Sequence[Sequence[int]], prompt_template: str) -> Batch:
    """The supervised batch of some arithmetic problems: the loss is on the response only."""
    prompts = [arithmetic_problem(ops, prompt_template).prompt for ops in operands]
    responses = [arithmetic_solution(ops) for ops in operands]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    length = max(len(p) + len(r) + 1 for p, r in zip(prompt_ids, response_ids))
    batch = Batch(
        input_ids=torch.full((len(prompts), length), tokenizer.pad_token_id),
        attention_mask=torch.zeros((len(prompts), length), dtype=torch.long),
        labels=torch.full((len(prompts), length), -100),
    )
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        target = r + [tokenizer.eos_token_id]
        n = len(p) + len(target)
        batch.input_ids[i, :n] = torch.tensor(p + target)
        batch.attention_mask[i, :n] = 1
        batch.labels[i, len(p) : n] = torch.tensor(target)
    return batch


@torch.no_grad()
def teacher_forced_exact_match(model: PreTrainedModel, batch: Batch) -> float:
    """Fraction of sequences whose every response token (and EOS) is the model's argmax given
    the true prefix: exactly the problems greedy decoding reproduces token for token."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    model.train(was_training)
    predicted, targets = logits[:, :-1].argmax(-1), batch.labels[:, 1:]
    wrong = (predicted != targets) & (targets != -100)
    return float((~wrong.any(dim=1)).float().mean())


def _training_operands(data: DataConfig, seed: int, exclude: set[tuple[int, ...]]) -> Iterator[tuple[int, ...]]:
    """An endless i.i.d. stream of training-region problems not in `exclude`."""
    rng = np.random.default_rng([seed, 0x7E1])
    lo, hi = 10 ** (data.num_digits - 1), 10**data.num_digits - 1
    while True:
        chunk = rng.integers(lo, hi + 1, size=(4096, data.num_operands))
        for row in chunk[~heldout_region_mask(chunk, data.seed)].tolist():
            if tuple(row) not in exclude:
                yield tuple(row)


@dataclass
class PretrainStats:
    steps: int
    """Optimizer steps run."""
    probe_accuracy: float
    """Teacher-forced exact match on the probe set at the end."""
    reached_target: bool
    """Whether training stopped because the probe accuracy reached the target."""


def pretrain(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, tiny: TinyModelConfig, data: DataConfig
) -> PretrainStats:
    """Supervised training with AdamW until the probe accuracy (checked every `tiny.check_every`
    steps) reaches `tiny.target_accuracy`, or for `tiny.pretrain_steps` steps.

    The probe is the first `tiny.probe_size` problems of the training pool (the same for any
    `data.max_train_problems`); supervised examples avoid them, so the probe measures
    generalisation, as the held-out set will.
    """
    probe_ops = arithmetic_stream(data.num_operands, data.num_digits, data.seed, False, tiny.probe_size)
    probe = make_batch(tokenizer, probe_ops, data.resolved_prompt_template())
    examples = _training_operands(data, tiny.seed, set(probe_ops))
    optimizer = torch.optim.AdamW(model.parameters(), lr=tiny.pretrain_lr, weight_decay=0.0)
    model.train()
    step = 0
    while step < tiny.pretrain_steps:
        step += 1
        batch = make_batch(tokenizer, [next(examples) for _ in range(tiny.pretrain_batch_size)], data.resolved_prompt_template())
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        target = tiny.target_accuracy
        if target is not None and step % tiny.check_every == 0 and teacher_forced_exact_match(model, probe) >= target:
            break
    model.eval()
    accuracy = teacher_forced_exact_match(model, probe)
    reached = tiny.target_accuracy is not None and accuracy >= tiny.target_accuracy
    return PretrainStats(steps=step, probe_accuracy=accuracy, reached_target=reached)


# ---- measuring the base model ---------------------------------------------------------------


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 512,
) -> list[list[Optional[str]]]:
    """Final answers (`extract_answer`) of `num_samples` responses per prompt: shape
    [len(prompts)][num_samples]. Temperature 0 is greedy; otherwise pure sampling (no top-k or
    top-p), seeded without touching the global RNG state."""
    sampling: dict[str, object] = dict(do_sample=False)
    if temperature > 0:
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    was_training = model.training
    model.eval()
    texts: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    answers = [extract_answer(t) for t in texts]
    return [answers[i : i + num_samples] for i in range(0, len(answers), num_samples)]


def greedy_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: Sequence[Problem], max_new_tokens: int
) -> float:
    """Fraction of problems whose greedy final answer is exactly the gold string (integers here)."""
    answers = generate_answers(model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens)
    return sum(a[0] == p.answer for a, p in zip(answers, problems)) / len(problems)


def sample_diversity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    problems: Sequence[Problem],
    max_new_tokens: int,
    num_samples: int = DIVERSITY_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """How the model's samples at temperature 1 disagree: the fraction of prompts with at least
    two distinct final answers (diverse_frac), the mean count of distinct answers
    (distinct_answers), and the mean accuracy of the samples (sample_accuracy)."""
    prompts = [p.prompt for p in problems]
    answers = generate_answers(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0, num_samples=num_samples, seed=seed
    )
    distinct = [len({a for a in group if a is not None}) for group in answers]
    correct = [sum(a == p.answer for a in group) / num_samples for group, p in zip(answers, problems)]
    return {
        "diverse_frac": sum(d >= 2 for d in distinct) / len(problems),
        "distinct_answers": sum(distinct) / len(problems),
        "sample_accuracy": sum(correct) / len(problems),
    }


# ---- the cache ------------------------------------------------------------------------------


def build_settings(tiny: TinyModelConfig, data: DataConfig) -> dict[str, object]:
    """Everything the weights depend on: the tiny settings except where they are cached and how
    much is measured afterwards, the arithmetic task's shape, seed and prompt template."""
    settings = {k: v for k, v in asdict(tiny).items() if k not in ("cache_dir", "eval_size", "prebuilt")}
    settings.update(
        num_operands=data.num_operands,
        num_digits=data.num_digits,
        data_seed=data.seed,
        prompt_template=data.resolved_prompt_template(),
        build_format=BUILD_FORMAT,
    )
    return settings


def tiny_cache_key(tiny: TinyModelConfig, data: DataConfig) -> str:
    """16 hex digits of the SHA-256 of `build_settings`."""
    return settings_key(build_settings(tiny, data))


def build_entry(entry: Path, tiny: TinyModelConfig, data: DataConfig) -> None:
    """Pretrain, measure and save a base model into the empty directory `entry`."""
    name = f"tiny-{tiny_cache_key(tiny, data)}"  # `entry` may be the cache's temporary directory
    # Said before it starts: at the default settings a build takes minutes of CPU.
    log.info("pretraining tiny base model %s: up to %d steps", name, tiny.pretrain_steps)
    started, cpu_started = time.time(), time.process_time()
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tiny, tokenizer)
    stats = pretrain(model, tokenizer, tiny, data)
    heldout = [
        arithmetic_problem(ops, data.resolved_prompt_template())
        for ops in arithmetic_stream(data.num_operands, data.num_digits, data.seed, True, tiny.eval_size)
    ]
    max_new_tokens = max_response_chars(data.num_operands, data.num_digits) + 8
    accuracy = greedy_accuracy(model, tokenizer, heldout, max_new_tokens)
    diversity = sample_diversity(model, tokenizer, heldout[:DIVERSITY_PROMPTS], max_new_tokens)
    model.save_pretrained(entry)
    tokenizer.save_pretrained(entry)
    report = {
        "settings": build_settings(tiny, data),
        "pretrain": asdict(stats),
        "heldout_greedy_accuracy": accuracy,
        "heldout_size": len(heldout),
        **{f"heldout_{k}": v for k, v in diversity.items()},
        "build_seconds": round(time.time() - started, 1),
        "build_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "torch_threads": torch.get_num_threads(),
        "built_on": cpu_description(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    write_marker(entry, MARKER, report)
    log.info(
        "built tiny base model %s in %.0fs: %d steps, held-out greedy accuracy %.3f",
        name, report["build_seconds"], stats.steps, accuracy,
    )


def ensure_tiny_base_model(tiny: TinyModelConfig, data: DataConfig) -> Path:
    """The directory of the cached tiny base model for these settings, built on first use, safe
    under concurrent builders (`mgrpo.models.cache.ensure_entry`)."""
    check_tiny_settings(tiny)
    key = tiny_cache_key(tiny, data)
    return ensure_entry(Path(tiny.cache_dir).expanduser(), f"tiny-{key}", MARKER, lambda tmp: build_entry(tmp, tiny, data))
