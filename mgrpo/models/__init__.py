"""Models: the built-in tiny model for the CPU default, and loading of any HF checkpoint.

- `mgrpo.models.tiny`: character tokenizer, tiny Qwen3 LM, and the cached supervised build of
  a decent-but-imperfect base model (`ensure_tiny_base_model`);
- `mgrpo.models.tiny_bases`: the bases shipped with the package (seeds 0-5 of the default recipe),
  the same weights on every machine, and the check that compares a local rebuild with them;
- `mgrpo.models.bpe`: the real-tokenizer test model (byte-level BPE trained on MATH text, a
  Qwen3-style chat template, random weights), cached likewise (`ensure_tiny_bpe_model`);
- `mgrpo.models.loading`: `resolve_model_path`, `load_tokenizer`, `load_causal_lm`.
"""

from mgrpo.models.bpe import ensure_tiny_bpe_model
from mgrpo.models.loading import BUILT_MODELS, ModelLoadError, load_causal_lm, load_tokenizer, resolve_model_path
from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer, ensure_tiny_base_model

__all__ = [
    "BUILT_MODELS",
    "ModelLoadError",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "ensure_tiny_base_model",
    "ensure_tiny_bpe_model",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_model_path",
]
