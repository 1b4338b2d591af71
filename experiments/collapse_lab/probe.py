"""How a policy checkpoint does the lab's sums: where its errors are, and what its samples look like.

    python experiments/collapse_lab/probe.py base=~/.cache/mgrpo/tiny-754c9a37323247e2 \
        intuitor_s0=multirun/.../exports/step_000200/policy
    python experiments/collapse_lab/probe.py --certainty-vs-correctness base=~/.cache/mgrpo/tiny-...

Per checkpoint, on the held-out problems of the default arithmetic task: greedy accuracy, the
share of well-formed responses, of right first partial sums (a + b) and of right second
additions (of the two numbers the response wrote), and, over
`--samples` samples per problem at `--temperature`, the mean response length, the distinct
final answers per problem and the mean self-certainty. `--certainty-vs-correctness` asks instead
how often a correct sample of a training prompt is more self-certain than a wrong one of the
same prompt (what Intuitor's reward needs to be true). Used for experiments/collapse_lab/baselines.md.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from mgrpo.algos.answers import extract_answer
from mgrpo.algos.self_certainty import token_self_certainty, trajectory_self_certainty
from mgrpo.config import DataConfig
from mgrpo.tasks import load_task

WORKED = re.compile(r"(\d+)\+(\d+)=(\d+),(\d+)\+(\d+)=(\d+)####(\d+)")
"""A well-formed response to a three-operand sum."""
MAX_NEW_TOKENS = 40


def generate(model, tokenizer, prompts, temperature: float, samples: int):
    """Texts (len(prompts) * samples, prompt-major) and, when sampling, each one's self-certainty."""
    texts, certainty = [], []
    for start in range(0, len(prompts), 250):
        enc = tokenizer(prompts[start : start + 250], return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, num_return_sequences=samples,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 output_scores=temperature > 0, return_dict_in_generate=True, **sampling)
        response = out.sequences[:, enc["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(response, skip_special_tokens=True)
        if temperature > 0:  # the scores are the processed logits, already divided by T
            is_eos = (response == tokenizer.eos_token_id).int()
            counted = (is_eos.cumsum(1) - is_eos) == 0  # up to and including the first EOS
            per_token = token_self_certainty(torch.stack(out.scores, 1), 1.0, vocab_size=len(tokenizer))
            certainty += trajectory_self_certainty(per_token, counted).tolist()
    return texts, certainty


def probe(name: str, path: Path, problems, samples: int, temperature: float) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [p.prompt for p in problems]
    greedy, _ = generate(model, tokenizer, prompts, 0.0, 1)
    counts = Counter()
    for text, problem in zip(greedy, problems):
        a, b = map(int, re.findall(r"\d+", problem.prompt)[:2])
        worked = WORKED.fullmatch(text.strip())
        counts["correct"] += extract_answer(text) == problem.answer
        if worked:
            counts["well-formed"] += 1
            counts["first sum right"] += int(worked.group(3)) == a + b
            counts["second sum right"] += int(worked.group(6)) == int(worked.group(4)) + int(worked.group(5))
    torch.manual_seed(0)
    sampled, certainty = generate(model, tokenizer, prompts, temperature, samples)
    distinct = [len({extract_answer(t) for t in sampled[i : i + samples]}) for i in range(0, len(sampled), samples)]
    row = {f"greedy {k}": v / len(problems) for k, v in sorted(counts.items())}
    row |= {"sample length": sum(map(len, sampled)) / len(sampled), f"distinct answers of {samples}": sum(distinct) / len(distinct),
            "self-certainty": sum(certainty) / len(certainty)}
    print(name, "  ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)


def certainty_vs_correctness(path: Path, problems, samples: int, temperature: float) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(0)
    texts, certainty = generate(model, tokenizer, [p.prompt for p in problems], temperature, samples)
    wins = pairs = 0
    by_outcome: dict[bool, list[float]] = {True: [], False: []}
    for g, problem in enumerate(problems):
        rows = range(g * samples, (g + 1) * samples)
        right = {i: extract_answer(texts[i]) == problem.answer for i in rows}
        for i in rows:
            by_outcome[right[i]].append(certainty[i])
        for i in rows:
            for j in rows:
                if right[i] and not right[j]:
                    pairs += 1
                    wins += certainty[i] > certainty[j]
    mean = {k: sum(v) / max(len(v), 1) for k, v in by_outcome.items()}
    print(f"samples: {len(by_outcome[True])} correct, {len(by_outcome[False])} wrong; mean self-certainty "
          f"{mean[True]:.3f} (correct) vs {mean[False]:.3f} (wrong); a correct sample is the more self-certain "
          f"one in {wins / max(pairs, 1):.3f} of {pairs} within-prompt pairs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", metavar="NAME=DIR", help="HF checkpoint dirs, each with a name")
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--certainty-vs-correctness", action="store_true",
                   help="on --problems training prompts with --samples samples each (16 in baselines.md)")
    args = p.parse_args()
    torch.set_num_threads(1)
    task = load_task(DataConfig())
    for spec in args.checkpoints:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).expanduser().is_dir():
            p.error(f"{spec!r}: expected NAME=DIR with DIR a Hugging Face checkpoint directory")
        if args.certainty_vs_correctness:
            certainty_vs_correctness(Path(path).expanduser(), task.train[: args.problems], args.samples, args.temperature)
        else:
            probe(name, Path(path).expanduser(), task.heldout[: args.problems], args.samples, args.temperature)


if __name__ == "__main__":
    main()
