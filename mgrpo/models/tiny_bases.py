"""Shipped tiny base models: the same base weights on every machine.

Why: the tiny base's build (`mgrpo.models.tiny`) stops pretraining at the first probe check that
reaches `model.tiny.target_accuracy`. Float summation order differs between CPUs (AVX-512 or not,
library versions), so the stop step moves and a base built here is a different model from one
built elsewhere: measured, the default seed-0 base stopped at step 425 with 0.362 held-out greedy
accuracy on one machine and at 0.390 on another, and the collapse lab's outcome moved with it.
Results that must hold on any machine need one base everywhere. The package therefore ships the
default recipe's bases for `SHIPPED_SEEDS` as ordinary cache entries (a Hugging Face checkpoint
plus the build's marker: settings, measured properties, the CPU it was built on and a SHA-256 of
every file), in `mgrpo/assets/tiny_bases/tiny-<settings key>/`. `model.name_or_path=tiny` loads the
shipped entry whose key matches `model.tiny` and the task's settings; any other settings are built
locally as before, and `model.tiny.prebuilt=false` forces a local build.

    python -m mgrpo.models.tiny_bases list               # the shipped bases and their properties
    python -m mgrpo.models.tiny_bases check --seed 0     # rebuild here, say whether it differs
    python -m mgrpo.models.tiny_bases build --seed 0 1   # (maintainers) write shipped entries

`check` exits 1 when the local rebuild differs from the shipped weights; that is expected on a CPU
other than the one that built them, and it is why the bases are shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file

from mgrpo.config import DataConfig, TinyModelConfig
from mgrpo.models.cache import ensure_entry, is_complete
from mgrpo.models.tiny import MARKER, build_entry, ensure_tiny_base_model, tiny_cache_key

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_bases"
"""Where the package keeps its prebuilt base models (package data)."""
SHIPPED_SEEDS = (0, 1, 2, 3, 4, 5)
"""`model.tiny.seed` values shipped for the default recipe and arithmetic task."""
WEIGHTS = "model.safetensors"


class ShippedBaseError(RuntimeError):
    """A shipped base entry is present but damaged."""


def shipped_entry(tiny: TinyModelConfig, data: DataConfig) -> Optional[Path]:
    """The shipped entry for these settings, or None when none is shipped for them.

    Raises:
        ShippedBaseError: the entry exists but a checksum does not match its marker.
    """
    entry = SHIPPED_DIR / f"tiny-{tiny_cache_key(tiny, data)}"
    if not entry.is_dir():
        return None
    if not is_complete(entry, MARKER):
        raise ShippedBaseError(
            f"the shipped tiny base {entry} is damaged (a file does not match its checksum in {MARKER}): "
            f"reinstall the package, or set model.tiny.prebuilt=false to build a base on this machine"
        )
    return entry


def tiny_base_model_dir(tiny: TinyModelConfig, data: DataConfig) -> Path:
    """The base model directory for `model.name_or_path=tiny`: the shipped entry when
    `tiny.prebuilt` and one matches, else the local cache's (built on first use)."""
    if tiny.prebuilt:
        entry = shipped_entry(tiny, data)
        if entry is not None:
            return entry
    return ensure_tiny_base_model(tiny, data)


def weight_difference(a: Path, b: Path) -> dict[str, object]:
    """How two base entries' weights differ: identical (bitwise), the largest absolute
    difference, and the tensors that differ."""
    wa, wb = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    if wa.keys() != wb.keys():
        return {"identical": False, "max_abs_diff": float("inf"), "differing": sorted(wa.keys() ^ wb.keys())}
    differing = [k for k in sorted(wa) if wa[k].shape != wb[k].shape or not torch.equal(wa[k], wb[k])]
    max_diff = max(
        (float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].shape == wb[k].shape else float("inf"))
        for k in differing
    ) if differing else 0.0
    return {"identical": not differing, "max_abs_diff": max_diff, "differing": differing}


def _summary(entry: Path) -> dict[str, object]:
    report = json.loads((entry / MARKER).read_text())
    return {
        "seed": report["settings"]["seed"],
        "pretrain_steps": report["pretrain"]["steps"],
        "heldout_greedy_accuracy": report["heldout_greedy_accuracy"],
        "heldout_sample_accuracy": report.get("heldout_sample_accuracy"),
        "heldout_diverse_frac": report.get("heldout_diverse_frac"),
        "built_on": report.get("built_on"),
    }


def _default_settings(seed: int) -> tuple[TinyModelConfig, DataConfig]:
    return replace(TinyModelConfig(), seed=seed), DataConfig()


def _cmd_list(_: argparse.Namespace) -> int:
    for seed in SHIPPED_SEEDS:
        entry = shipped_entry(*_default_settings(seed))
        print(json.dumps(_summary(entry) if entry else {"seed": seed, "shipped": False}))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    for seed in args.seed:
        tiny, data = _default_settings(seed)
        entry = ensure_entry(SHIPPED_DIR, f"tiny-{tiny_cache_key(tiny, data)}", MARKER, lambda tmp: build_entry(tmp, tiny, data))
        print(json.dumps(_summary(entry)))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    differs = False
    for seed in args.seed:
        tiny, data = _default_settings(seed)
        shipped = shipped_entry(tiny, data)
        if shipped is None:
            print(f"seed {seed}: no shipped base for the default settings", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="mgrpo-rebuild-") as tmp:
            local = Path(tmp) / "local"
            local.mkdir()
            build_entry(local, tiny, data)
            diff = weight_difference(shipped, local)
            result = {"seed": seed, **diff, "shipped": _summary(shipped), "local": _summary(local)}
        differs |= not diff["identical"]
        print(json.dumps(result))
        verdict = "identical to" if diff["identical"] else "DIFFERS from"
        print(f"seed {seed}: the base built on this machine is {verdict} the shipped one", file=sys.stderr)
    return 1 if differs else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mgrpo.models.tiny_bases", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the shipped bases and their measured properties").set_defaults(run=_cmd_list)
    for name, run, help_text in (
        ("check", _cmd_check, "rebuild here and compare with the shipped weights (exit 1 if they differ)"),
        ("build", _cmd_build, "write the shipped entries (maintainers)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--seed", type=int, nargs="+", default=list(SHIPPED_SEEDS))
        sub.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
