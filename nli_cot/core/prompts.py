"""Prompt rendering: NLI pair -> prompt text, and (thought, label) -> the JSON completion.

Two styles, chosen by the `prompt` config group:
- ``inst``: literal Mistral ``[INST] ... [/INST]`` text, as the model card and its released adapters use
  (``<s>`` comes from the BOS id, never from the text, so it is never doubled).
- ``chat``: the tokenizer's own chat template (e.g. ChatML for SmolLM2), for models that have one.

Training, prediction and the teachers all render through this module, so the text a model is trained on is
byte-for-byte the text it is asked at inference time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RenderedExample:
    """Token ids of one example, split where the loss starts."""

    prompt_ids: list[int]
    completion_ids: list[int]


def user_message(premise: str, hypothesis: str, cfg: Any) -> str:
    """The user turn: premise, hypothesis and the instruction, per ``cfg.user_template``."""
    return cfg.user_template.format(premise=premise, hypothesis=hypothesis, instruction=cfg.instruction)


def prompt_text(premise: str, hypothesis: str, cfg: Any, tokenizer: Any = None) -> str:
    """The full prompt text (without BOS) that precedes the model's answer."""
    user = user_message(premise, hypothesis, cfg)
    if cfg.style == "inst":
        return f"{cfg.inst_open}{user}{cfg.inst_close}"
    if cfg.style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt.style=chat needs a tokenizer with a chat template; use prompt=card for Mistral")
        messages = []
        if cfg.system:
            messages.append({"role": "system", "content": cfg.system})
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"prompt.style must be 'inst' or 'chat', got {cfg.style!r}")


def completion_text(thought: str | None, label: int) -> str:
    """The JSON answer the model learns to write. ``thought=None`` gives the label-only control."""
    if thought is None:
        return json.dumps({"predicted_label": int(label)}, ensure_ascii=False)
    return json.dumps({"thought_process": thought, "predicted_label": int(label)}, ensure_ascii=False)


def encode_prompt(premise: str, hypothesis: str, cfg: Any, tokenizer: Any) -> list[int]:
    """Prompt token ids, BOS first when the template asks for it (chat templates carry their own)."""
    ids = tokenizer.encode(prompt_text(premise, hypothesis, cfg, tokenizer), add_special_tokens=False)
    if cfg.style == "inst" and cfg.add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode_example(premise: str, hypothesis: str, completion: str, cfg: Any, tokenizer: Any) -> RenderedExample:
    """Prompt ids and completion ids (completion prefix + JSON + EOS).

    Prompt and completion are tokenised separately so the loss boundary is exact, and the completion always
    ends with the EOS id: losing it is what made the card's Abl0.1 repeat itself until max_new_tokens.
    """
    prompt_ids = encode_prompt(premise, hypothesis, cfg, tokenizer)
    completion_ids = tokenizer.encode(cfg.completion_prefix + completion, add_special_tokens=False)
    completion_ids.append(tokenizer.eos_token_id)
    return RenderedExample(prompt_ids=prompt_ids, completion_ids=completion_ids)
