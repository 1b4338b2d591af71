"""Decoder compute on padding, before and after packing each pass's rows and grouping rows by length.

    python benchmarks/padding.py [--rounds 3] [--cap 768] [--prompts 8] [--samples 32]

A workload with the paper's length profile on the tiny_bpe model (`mgrpo.models.bpe`): MATH-500
problems as the chat-templated training prompts (read from ../shared/data, never copied), and
`--samples` responses per prompt of lognormal length (median cap / 5, sigma 1, so a tail of them
runs to the cap) capped at `--cap` tokens, the paper's rollout.max_new_tokens = 3072 scaled down
by 4 by default so that a round takes seconds. The tokens are random (the model is untrained); the
lengths are what matter.

"Before" is the previous code path: every scoring chunk and update micro-batch runs the decoder
over the whole call's [longest prompt + longest response] columns, rows in rollout order (here:
`pack_batch` and `longest_first` replaced by the previous layout and order). "After" is the code as it is. Each round
times one reference-style scoring pass (score_chunk_size 8) and one update (micro-batches of 8,
one optimizer step) of each, interleaved, from the same weights, 1 thread. Prints the decoder
positions per real token of each (target after: <= 1.15) and the update's median time; target:
the update's time falls by at least the factor of positions removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import mgrpo.models.scorer as scorer_module
import mgrpo.phases as phases_module
from mgrpo.config import DataConfig, TinyBPEModelConfig
from mgrpo.models.bpe import ensure_tiny_bpe_model
from mgrpo.models.loading import load_causal_lm, load_tokenizer
from mgrpo.models.scorer import ResponseScorer
from mgrpo.phases import LossSettings, plan_update, score_phase, take_pad_ratio, update_phase
from mgrpo.rollout.base import Rollouts, assemble_rollouts, encode_prompts
from mgrpo.tasks.base import format_prompt
from mgrpo.tasks.prompts import MATH_PROMPT, render_prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MICRO_BATCH, SCORE_CHUNK = 8, 8


def workload(tokenizer, prompts: int, samples: int, cap: int, seed: int = 0) -> Rollouts:
    """`prompts` MATH-500 problems, `samples` random responses each of lognormal length <= cap."""
    problems = [json.loads(line)["problem"] for line in (DATA / "math500.jsonl").read_text().splitlines()[:prompts]]
    texts = [render_prompt(tokenizer, format_prompt(MATH_PROMPT, p)) for p in problems]
    ids = encode_prompts(tokenizer, texts, 100_000)
    rng = np.random.default_rng(seed)
    lengths = np.minimum(np.ceil(rng.lognormal(np.log(cap / 5), 1.0, prompts * samples)), cap).astype(int)
    special = set(tokenizer.all_special_ids)
    vocab = np.array([t for t in range(len(tokenizer)) if t not in special])
    eos = tokenizer.eos_token_id
    responses = [list(rng.choice(vocab, n - 1)) + [eos] if n < cap else list(rng.choice(vocab, n)) for n in lengths]
    return assemble_rollouts(ids, samples, [[int(t) for t in r] for r in responses], tokenizer, [eos])


def unpacked(sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
    """`pack_batch`'s outputs for the previous layout: all (b, P + R) columns, the response tokens
    predicted from columns P - 1 .. P + R - 2."""
    prompt = sequences.shape[1] - response_mask.shape[1]
    predicting = torch.zeros((sequences.shape[0], sequences.shape[1] - 1), dtype=torch.bool)
    predicting[:, prompt - 1 :] = response_mask
    return sequences, attention_mask, predicting


@contextmanager
def previous_code_path():
    """Passes over all columns, rows in rollout order."""
    with mock.patch.object(scorer_module, "pack_batch", unpacked), mock.patch.object(phases_module, "longest_first", lambda n: torch.arange(n.numel())):
        yield


def measure(scorer: ResponseScorer, weights: dict, ro: Rollouts, grouped: bool) -> dict[str, float]:
    """Positions per real token of one scoring pass and one update, and their times."""
    scorer.load_state_dict(weights)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=1e-6)
    settings = LossSettings(1.0, 0.2, None, 0.0, "low_var_kl", "token-mean", float(ro.response_mask.shape[1]), 1.0)
    take_pad_ratio([scorer])
    start = time.perf_counter()
    score_phase(scorer, ro, 1.0, SCORE_CHUNK, "sampled")
    score_time = time.perf_counter() - start
    score_ratio, _ = take_pad_ratio([scorer])
    members = torch.ones(len(ro), dtype=torch.bool)
    advantages = torch.linspace(-1, 1, len(ro))
    plan = plan_update(ro.response_mask, 1, 1, MICRO_BATCH, 0, ro.attention_mask.sum(-1) if grouped else None)
    start = time.perf_counter()
    update_phase(scorer, optimizer, ro, None, None, advantages, members, plan, settings)
    update_time = time.perf_counter() - start
    update_ratio, _ = take_pad_ratio([scorer])
    return {"score_ratio": score_ratio, "update_ratio": update_ratio, "score": score_time, "update": update_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cap", type=int, default=768, help="max response tokens (the paper's 3072 scaled down)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=32, help="samples per prompt (the paper's G = 32)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        cfg = TinyBPEModelConfig(corpus_path=str(DATA / "math4500.jsonl"), cache_dir=cache)
        path = str(ensure_tiny_bpe_model(cfg, DataConfig()))
        tokenizer = load_tokenizer(path)
        scorer = ResponseScorer(load_causal_lm(path, torch.float32, torch.device("cpu")))
    weights = {k: v.clone() for k, v in scorer.state_dict().items()}
    ro = workload(tokenizer, args.prompts, args.samples, args.cap)
    prompt = ro.attention_mask[:, : ro.prompt_length].sum(-1).float()
    response = ro.response_lengths.float()
    print(f"workload: {len(ro)} rows ({args.prompts} MATH-500 prompts x {args.samples}), prompts {int(prompt.min())}-{int(prompt.max())} "
          f"tokens (mean {prompt.mean():.0f}), responses lognormal capped at {args.cap} (paper: 3072): median {response.median():.0f}, "
          f"mean {response.mean():.0f}, {int((response == args.cap).sum())} at the cap; micro-batch {MICRO_BATCH}, score chunk {SCORE_CHUNK}")
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    measure(scorer, weights, ro, grouped=True)  # warm-up
    for _ in range(args.rounds):
        with previous_code_path():
            runs["before"].append(measure(scorer, weights, ro, grouped=False))
        runs["after"].append(measure(scorer, weights, ro, grouped=True))
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    for name, m in median.items():
        print(f"{name:>6}: positions / real tokens: scoring {m['score_ratio']:.3f}, update {m['update_ratio']:.3f}; "
              f"median time: scoring {m['score']:.3f} s, update {m['update']:.3f} s")
    removed = median["before"]["update_ratio"] / median["after"]["update_ratio"]
    speedup = median["before"]["update"] / median["after"]["update"]
    print(f"update: positions down {removed:.2f}x, time down {speedup:.2f}x (target: >= {removed:.2f}x); "
          f"after ratio target <= 1.15: {'met' if max(median['after']['score_ratio'], median['after']['update_ratio']) <= 1.15 else 'missed'}")
    print(f"scoring: time down {median['before']['score'] / median['after']['score']:.2f}x")


if __name__ == "__main__":
    main()
