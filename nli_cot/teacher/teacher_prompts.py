"""Teacher and reflection prompts: config -> chat messages, plus a stable hash of the prompt.

Features
- ``teacher_messages``: the thoughts stage's request, a system message (instructions, the JSON keys
  ``thought_process`` and ``predicted_label``, the 3-step shape, a brevity rule, one worked example) and a user
  turn with premise and hypothesis. The shape follows the source project (shared/reference/source-project.md);
  the wording is ours and lives in ``conf/teacher_prompt/*.yaml``.
- ``reflection_messages``: premise, hypothesis, the initial thought, the initial and the true label; the answer
  keys are ``error_analysis``, ``improved_thought_process``, ``predicted_label`` (``conf/reflect_prompt/``).
  An unparseable first answer is shown as its raw text, with the label marked as unreadable.
- ``prompt_hash``: 12 hex digits of SHA-256 over the prompt config, stored on every record, so a resumed
  run can refuse to mix records made with a different prompt.

Limits
- Templates are filled with ``str.format``: write ``{{``/``}}`` for literal braces in ``user_template``;
  the system message is used as written (no placeholders), so its JSON example needs no escaping.
- Training/inference prompts are not here: those are rendered by ``nli_cot.core.prompts`` from the ``prompt``
  group, so the student is trained on exactly what it is asked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

from nli_cot.core.config import register_schema


@dataclass
class TeacherPromptConfig:
    name: str = field(
        default=MISSING,
        metadata={
            "help": "Short name of this prompt (recorded with every thought; part of the prompt "
            "hash)."
        },
    )
    system: str = field(default=MISSING, metadata={"help": "The system message."})
    user_template: str = field(
        default="Premise: {premise}\nHypothesis: {hypothesis}",
        metadata={"help": "The user turn; {premise} and {hypothesis} are filled in."},
    )


@dataclass
class ReflectPromptConfig:
    name: str = field(
        default=MISSING,
        metadata={
            "help": "Short name of this prompt (recorded with every reflection; part of the prompt "
            "hash)."
        },
    )
    system: str = field(default=MISSING, metadata={"help": "The system message."})
    user_template: str = field(
        default=MISSING,
        metadata={"help": "fields: premise, hypothesis, initial_thought, initial_label, true_label."},
    )
    label_names: dict[str, str] = field(
        default=MISSING,
        metadata={"help": "\"0\"/\"1\" -> how a label is written in the prompt."},
    )
    unreadable_label: str = field(
        default="none (the answer could not be read)",
        metadata={"help": "What the prompt says as the first attempt's label when none could be read."},
    )
    unreadable_thought: str = field(
        default="(no reasoning could be read; the raw answer was: {raw})",
        metadata={
            "help": "What the prompt says as the first attempt's thought when none could be read "
            "({raw}: the raw answer)."
        },
    )
    max_raw_chars: int = field(
        default=2000,
        metadata={"help": "an unparseable raw answer is cut to this many characters in the prompt."},
    )


register_schema(TeacherPromptConfig, group="teacher_prompt")
register_schema(ReflectPromptConfig, group="reflect_prompt")


Messages = list[dict[str, str]]


def _plain(cfg: Any) -> dict[str, Any]:
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg.__dict__) if hasattr(cfg, "__dict__") else dict(cfg)


def prompt_hash(cfg: Any) -> str:
    """Stable short hash of a prompt config (every field, including the name)."""
    blob = json.dumps(_plain(cfg), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def teacher_messages(premise: str, hypothesis: str, cfg: Any) -> Messages:
    """System + user messages asking the teacher for a thought process and a 0/1 label in JSON."""
    return [
        {"role": "system", "content": cfg.system},
        {"role": "user", "content": cfg.user_template.format(premise=premise, hypothesis=hypothesis)},
    ]


def reflection_messages(
    premise: str,
    hypothesis: str,
    initial_thought: str | None,
    initial_label: int | None,
    true_label: int,
    cfg: Any,
    raw: str | None = None,
) -> Messages:
    """System + user messages asking the teacher to analyse its error and reason its way to the true label."""
    names = {str(k): v for k, v in cfg.label_names.items()}
    if initial_thought:
        thought = initial_thought
    else:
        thought = cfg.unreadable_thought.format(raw=(raw or "")[: cfg.max_raw_chars])
    label = names[str(initial_label)] if initial_label in (0, 1) else cfg.unreadable_label
    user = cfg.user_template.format(
        premise=premise,
        hypothesis=hypothesis,
        initial_thought=thought,
        initial_label=label,
        true_label=names[str(true_label)],
    )
    return [{"role": "system", "content": cfg.system}, {"role": "user", "content": user}]
