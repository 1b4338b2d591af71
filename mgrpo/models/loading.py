"""Loading the policy: resolve `model.name_or_path`, then load its tokenizer and weights.

`model.name_or_path` is 'tiny' (the built-in base model, built and cached on first use),
'tiny_bpe' (the real-tokenizer test model, `mgrpo.models.bpe`, also built and cached), a local
Hugging Face checkpoint directory, or a hub name. Offline (`HF_HUB_OFFLINE=1`), a hub name
resolves only from the local Hugging Face cache: download the model once where the hub is
reachable (`hf download <name> --local-dir <dir>`) and point model.name_or_path at
the directory. Loading failures name the path and the config key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from mgrpo.models.bpe import ensure_tiny_bpe_model

if TYPE_CHECKING:
    from mgrpo.config import DataConfig, ModelConfig


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the path and the config key."""


BUILT_MODELS = ("tiny", "tiny_bpe")
"""Names of the models this package builds and caches itself."""


def _hint(path: str) -> str:
    return (
        f"model.name_or_path={path!r}: set model.name_or_path to 'tiny', 'tiny_bpe', a local Hugging Face "
        f"checkpoint directory, or a hub model name available offline"
    )


def resolve_model_path(model: ModelConfig, data: DataConfig) -> str:
    """A path or hub name that `from_pretrained` accepts.

    'tiny' is the shipped tiny base model for `model.tiny` and `data`'s arithmetic settings when
    one matches (`mgrpo.models.tiny_bases`), else the cached local build (built on first use);
    'tiny_bpe' the real-tokenizer test model for `model.tiny_bpe` (its corpus defaults to
    data.train_path); an existing directory is returned as an absolute path; a name that looks
    like a path ('.', '/' or '~' first) but is no directory is an error; anything else is a hub name.
    """
    name = model.name_or_path
    if name == "tiny":
        # Imported here: `python -m mgrpo.models.tiny_bases` would otherwise import it twice.
        from mgrpo.models.tiny_bases import ShippedBaseError, tiny_base_model_dir

        try:
            return str(tiny_base_model_dir(model.tiny, data))
        except ShippedBaseError as e:
            raise ModelLoadError(str(e)) from e
    if name == "tiny_bpe":
        try:
            return str(ensure_tiny_bpe_model(model.tiny_bpe, data))
        except (ValueError, FileNotFoundError) as e:
            raise ModelLoadError(str(e)) from e
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"no such model directory: {_hint(name)}")
    return name


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at `path`, padding on the left (generation appends on the right), with the
    EOS token as pad token when it has none."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a tokenizer ({e}); {_hint(path)}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer has neither a pad nor an EOS token; {_hint(path)}")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_generation_config(path: str) -> Optional[GenerationConfig]:
    """The checkpoint's generation_config.json (its EOS list decides where responses stop, with
    the tokenizer's EOS: `mgrpo.rollout.stops`), or None when the checkpoint has none."""
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def load_causal_lm(path: str, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    """The causal LM at `path`, with parameters in `dtype`, on `device`, in eval mode."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not load a causal LM ({e}); {_hint(path)}") from e
    return model.to(device).eval()
