"""Where a response ends: the one set of stop token ids every engine stops at, and every rollout
is cut at (`stop_token_ids`).

A response ends at the first of:
- the tokenizer's EOS;
- every EOS of the checkpoint's `generation_config.json` (an int or a list: Qwen3 instruct
  checkpoints list `<|im_end|>` and `<|endoftext|>`);
- when the prompts are chat-templated, the token the template closes an assistant turn with
  (`<|im_end|>` for Qwen-style templates).

Why the last one: Qwen3 *base* checkpoints declare `<|endoftext|>` as their EOS (tokenizer and
generation config) while the chat template ends each turn with `<|im_end|>`. Stopping at EOS
alone lets a chat-prompted sample run on past its turn into invented turns, and the answer
extractor would then read the last `\\boxed{}` of all of them. The end-of-turn token is read off
the template itself (`end_of_turn_token_id`), so any template that closes turns with a special
token (`<|im_end|>`, Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`) is covered.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

_PROBE = "MGRPO-END-OF-TURN-PROBE"
"""The assistant's text in the conversation rendered to find the end-of-turn token."""


def is_special_token(tokenizer, token_id: int) -> bool:
    """Whether `token_id` is one of the tokenizer's special tokens (named or added as special)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return token_id in tokenizer.all_special_ids or bool(added is not None and getattr(added, "special", False))


def end_of_turn_token_id(tokenizer) -> Optional[int]:
    """The special token the chat template closes an assistant turn with: the first token after
    the assistant's text in a rendered [user, assistant] conversation. None when the tokenizer has
    no chat template, the template cannot render that conversation, or what follows the turn is
    not a special token (a template that ends turns with plain text gives no stop token)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    conversation = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # jinja raises its own errors for conversations a template does not accept
        return None
    _, found, after = text.partition(_PROBE)
    if not found:
        return None
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return ids[0] if ids and is_special_token(tokenizer, ids[0]) else None


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(tokenizer, generation_config=None, *, chat_template: bool) -> list[int]:
    """The ids a response stops at (see the module docstring), without duplicates, the
    tokenizer's EOS first.

    Args:
        tokenizer: the run's tokenizer.
        generation_config: the checkpoint's `transformers.GenerationConfig` (or anything with an
            `eos_token_id` attribute), or None when the checkpoint has none.
        chat_template: whether the prompts are rendered with the tokenizer's chat template
            (`data.chat_template` and a tokenizer that has one).
    Raises:
        ValueError: when no stop token results (a tokenizer without EOS and nothing else).
    """
    ids: Iterable[int] = [*_as_ids(tokenizer.eos_token_id), *_as_ids(getattr(generation_config, "eos_token_id", None))]
    if chat_template:
        turn_end = end_of_turn_token_id(tokenizer)
        ids = [*ids, *_as_ids(turn_end)]
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise ValueError("the tokenizer has no EOS token and the checkpoint's generation_config names none: responses could never end")
    return unique
