"""Start-up checks of a composed config that the schemas can't express: closed groups and numeric ranges.

Features
- ``unknown_keys(cfg)``: every node typed by a schema dataclass is closed. Hydra's ``+group.key=value`` (and
  ``++``) adds keys even to a structured node, so ``+lora.rank=8`` would train with the default ``lora.r``;
  here such a key is an error naming the nearest valid key (difflib).
- ``range_problems(cfg)``: every numeric knob with a meaningful range (``RANGES``) is checked; a key the config
  does not have is skipped, so one table serves every app (train, predict, thoughts, reflect, sft).
- ``check_config(cfg)`` raises ``ConfigCheckError`` with one line naming the key: ``optimizer.lr must be > 0,
  got -1.0``. Apps call it before loading data or a model; ``nli_cot.core.cli.preflight`` calls it too, so a
  single run fails before Hydra starts.

Limits
- ``null`` passes every range (whether a key may be null is the schema's business).
- Ranges are per key, not across keys (e.g. ``trainer.gen_eval.every_n_steps`` being a multiple of
  ``trainer.eval_every_n_steps`` is checked by ``nli_cot.training.gen_eval.config_problem``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigCheckError(ValueError):
    """A user mistake in the configuration, reported as one line naming the key."""


# key (``*`` = every item of a list) -> allowed values. Specs: "> a", ">= a", "[a, b)", "(a, b]", "[a, b]", and
# "-1 or > 0" (one exact value or a comparison).
RANGES: dict[str, str] = {
    # training (nli_cot.core.config)
    "seed": ">= 0",
    "dataset.eval_fraction": "[0, 1)",
    "dataset.max_seq_length": "> 0",
    "dataset.max_train_examples": "> 0",
    "dataset.max_eval_examples": "> 0",
    "dataset.loss_weight": "> 0",
    "model.tiny.hidden_size": "> 0",
    "model.tiny.intermediate_size": "> 0",
    "model.tiny.num_hidden_layers": "> 0",
    "model.tiny.num_attention_heads": "> 0",
    "model.tiny.num_key_value_heads": "> 0",
    "model.tiny.max_position_embeddings": "> 0",
    "lora.r": "> 0",
    "lora.alpha": "> 0",
    "lora.dropout": "[0, 1)",
    "lora.layers_to_transform.*": ">= 0",
    "optimizer.lr": "> 0",
    "optimizer.weight_decay": ">= 0",
    "optimizer.betas.*": "[0, 1)",
    "optimizer.eps": "> 0",
    "optimizer.warmup_ratio": "[0, 1)",
    "trainer.per_device_batch_size": "> 0",
    "trainer.grad_accum": "> 0",
    "trainer.row_bucket": "> 0",
    "trainer.max_epochs": "-1 or > 0",  # -1: unbounded epochs (max_steps decides), as the study's equal_steps uses
    "trainer.max_steps": "-1 or > 0",
    "trainer.gradient_clip_val": ">= 0",
    "trainer.eval_every_n_steps": "> 0",
    "trainer.eval_batch_size": "> 0",
    "trainer.save_steps": "> 0",
    "trainer.save_total_limit": "> 0",
    "trainer.early_stopping_patience": ">= 0",
    "trainer.early_stopping_min_steps": ">= 0",
    "trainer.progress_every_n_steps": ">= 0",
    "trainer.log_every_n_steps": "> 0",
    "trainer.num_workers": ">= 0",
    "trainer.ce_chunk_tokens": "> 0",
    "trainer.checkpoint_layers": ">= 0",
    "trainer.throughput_window": "> 0",
    "trainer.gen_eval.max_examples": "> 0",
    "trainer.gen_eval.batch_size": "> 0",
    "trainer.gen_eval.max_new_tokens": "> 0",
    # pairs (nli_cot.core.pairs), every stage that reads them
    "pairs.limit": "> 0",
    # predict
    "batch_size": "> 0",
    "limit": "> 0",
    "max_batches": "> 0",
    "decoding.max_new_tokens": "> 0",
    "decoding.temperature": "> 0",
    "decoding.top_p": "(0, 1]",
    "decoding.top_k": ">= 0",
    "decoding.repetition_penalty": "> 0",
    "decoding.self_consistency": ">= 1",
    # teachers (thoughts, reflect)
    "teacher.temperature": ">= 0",
    "teacher.max_tokens": "> 0",
    "teacher.concurrency": "> 0",
    "teacher.timeout_s": "> 0",
    "teacher.max_retries": ">= 0",
    "teacher.backoff_base_s": ">= 0",
    "teacher.backoff_max_s": ">= 0",
    "teacher.max_requests": ">= 0",
    "teacher.max_consecutive_failures": "> 0",
    "teacher.price_prompt_per_m": ">= 0",
    "teacher.price_completion_per_m": ">= 0",
    "teacher.batch_size": "> 0",
    "reflect_prompt.max_raw_chars": "> 0",
    # sft
    "max_tokens": "> 0",
    "dev_fraction": "[0, 1]",
    "sft_strategy.sources.*.max_examples": ">= 0",
}


def _in_range(value: float, spec: str) -> bool:
    for part in spec.split(" or "):
        part = part.strip()
        if part[0] in "[(":
            lo, hi = (float(x) for x in part[1:-1].split(","))
            low_ok = value >= lo if part[0] == "[" else value > lo
            high_ok = value <= hi if part[-1] == "]" else value < hi
            if low_ok and high_ok:
                return True
        elif part.startswith(">="):
            if value >= float(part[2:]):
                return True
        elif part.startswith(">"):
            if value > float(part[1:]):
                return True
        elif value == float(part):
            return True
    return False


def _values(cfg: Any, key: str) -> list[tuple[str, Any]]:
    """(full key, value) for ``key``, ``*`` expanded over list items; [] when the config has no such key."""
    found = [("", cfg)]
    for part in key.split("."):
        nxt = []
        for path, node in found:
            if part == "*":
                if isinstance(node, (ListConfig, list)):
                    nxt += [(f"{path}[{i}]", item) for i, item in enumerate(node)]
            elif isinstance(node, (DictConfig, dict)) and part in node:
                try:
                    nxt.append((f"{path}.{part}" if path else part, node[part]))
                except Exception:  # a missing (???) or unresolvable value: the app reports it itself
                    continue
        found = nxt
    return found


def range_problems(cfg: Any) -> list[str]:
    """One line per numeric key of ``cfg`` outside its range (``RANGES``)."""
    problems = []
    for key, spec in RANGES.items():
        for full, value in _values(cfg, key):
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and math.isnan(value) or not _in_range(value, spec):
                problems.append(f"{full} must be {'in ' if spec[0] in '[(' else ''}{spec}, got {value!r}")
    return problems


def _schema_fields(node: DictConfig) -> list[str] | None:
    try:
        typ = OmegaConf.get_type(node)
    except Exception:
        return None
    if typ is None or not dataclasses.is_dataclass(typ):
        return None
    return [f.name for f in dataclasses.fields(typ)]


def nearest(key: str, valid: list[str]) -> str | None:
    """The valid key closest to ``key`` by spelling (difflib), or None when nothing is close."""
    lowered = {v.lower(): v for v in valid}
    hit = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.5)
    if hit:
        return lowered[hit[0]]
    initials = "".join(w[0] for w in key.lower().split("_") if w)
    if len(initials) > 1 and initials in lowered:  # learning_rate -> lr
        return lowered[initials]
    prefix = [v for v in valid if v.startswith(key) or key.startswith(v)]  # rank -> r, lr_rate -> lr
    return prefix[0] if len(prefix) == 1 else None


def unknown_key_message(full_key: str, valid: list[str]) -> str:
    """``lora.rank: unknown key (did you mean lora.r?)``: never a ``+`` hint, the group is closed."""
    parent, _, key = full_key.rpartition(".")
    near = nearest(key, valid)
    group = f"'{parent}'" if parent else "the top level"
    hint = f"did you mean {parent + '.' if parent else ''}{near}?" if near else f"valid: {', '.join(valid)}"
    return f"{full_key}: unknown key in {group} ({hint})"


def unknown_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Keys of schema-typed nodes that their schema does not define (added with Hydra's ``+``)."""
    if not isinstance(cfg, DictConfig):
        return []
    problems = []
    fields = _schema_fields(cfg)
    for key in cfg.keys():
        full = f"{prefix}.{key}" if prefix else str(key)
        if fields is not None and key not in fields:
            problems.append(unknown_key_message(full, fields))
            continue
        try:
            child = cfg._get_node(key)
        except Exception:
            continue
        if isinstance(child, DictConfig):
            problems += unknown_keys(child, full)
        elif isinstance(child, ListConfig):
            for i in range(len(child)):
                item = child._get_node(i)
                if isinstance(item, DictConfig):
                    problems += unknown_keys(item, f"{full}[{i}]")
    return problems


def check_config(cfg: Any) -> None:
    """Raise ConfigCheckError (one line) for the first unknown key or out-of-range number of ``cfg``."""
    problems = unknown_keys(cfg) + range_problems(cfg)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigCheckError(problems[0] + more)
