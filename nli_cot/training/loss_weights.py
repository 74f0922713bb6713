"""Up-weighting chosen completion tokens in the training loss (``dataset.loss_weight``).

Why: in a chain-of-thought answer most tokens copy the input, and the one to three tokens that decide (a verdict
word, the label digit) are a small share of the token-mean loss; a small model can drive the loss down by copying
well and still write a near-constant verdict. A weight > 1 on those tokens makes the decision count more.

Features
- Which tokens: every occurrence of each ``dataset.loss_weight_markers`` string in the completion text, and (with
  ``dataset.loss_weight_label``) the label value of the JSON answer. Tokens overlapping a marked character span
  get ``dataset.loss_weight``; the rest keep 1. The markers come from the experiment config, so the core code knows
  nothing about any task's vocabulary.
- The loss: a weighted token mean, sum(w * ce) / sum(w), per micro-batch; with fused gradient accumulation each
  micro-batch keeps its own weighted mean, as accumulating them would. With every weight 1 it is the plain token
  mean; with ``loss_weight = 1.0`` (the default) no weights are built at all and training runs exactly as before.
- Training loss only: the dev eval loss stays the plain token mean, so it compares across weights.

Limits
- Needs a fast tokenizer (character offsets); a slow one raises a clear error when weighting is on.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LABEL_KEY = "predicted_label"


def weighting_on(dataset_cfg: Any) -> bool:
    """Whether the training loss weights tokens: only a weight other than 1.0 changes anything."""
    return float(getattr(dataset_cfg, "loss_weight", 1.0)) != 1.0


def config_problem(dataset_cfg: Any) -> str | None:
    """One line naming what is wrong with the ``dataset.loss_weight*`` keys, or None."""
    weight = float(getattr(dataset_cfg, "loss_weight", 1.0))
    markers = list(getattr(dataset_cfg, "loss_weight_markers", None) or [])
    if not weight > 0:
        return f"dataset.loss_weight must be > 0, got {weight}"
    if any(not isinstance(m, str) or not m.strip() for m in markers):
        return f"dataset.loss_weight_markers must be non-empty strings, got {markers!r}"
    if weight != 1.0 and not markers and not getattr(dataset_cfg, "loss_weight_label", False):
        return (f"dataset.loss_weight={weight} weights no token: set dataset.loss_weight_markers "
                "(strings of the thought) and/or dataset.loss_weight_label=true")
    return None


def marked_spans(text: str, markers: list[str], label: bool) -> list[tuple[int, int]]:
    """Character spans of ``text`` to up-weight: every occurrence of each marker, and the JSON label value."""
    spans = [(m.start(), m.end()) for marker in markers for m in re.finditer(re.escape(marker), text)]
    if label:
        found = list(re.finditer(rf'"{LABEL_KEY}":\s*(-?\d+)', text))
        if found:  # the answer's own key is the last one (a thought could quote the key)
            spans.append(found[-1].span(1))
    return spans


def completion_token_weights(text: str, ids: list[int], tokenizer: Any, weight: float, markers: list[str],
                             label: bool) -> list[float]:
    """One weight per completion id (``ids`` = ``text`` tokenised, then EOS): ``weight`` where a marked span is."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("dataset.loss_weight needs a fast tokenizer (character offsets of the tokens)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(ids[: len(enc["input_ids"])]):
        raise ValueError("dataset.loss_weight: the completion tokenises differently with offsets; cannot mark it")
    spans = marked_spans(text, markers, label)
    weights = [weight if any(s < e_tok and s_tok < e for s, e in spans) else 1.0
               for s_tok, e_tok in enc["offset_mapping"]]
    return weights + [1.0] * (len(ids) - len(weights))  # EOS (and anything after the text) keeps 1


# ------------------------------------------------------------------------------------------------- the loss
def loss_position_weights(token_weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weights of ``fastpath.loss_positions(labels)`` in the same order: the weight of each predicted token."""
    keep = labels[:, 1:] != IGNORE_INDEX
    return token_weight[:, 1:][keep]


def weighted_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, token_weight: torch.Tensor) -> torch.Tensor:
    """The padded path's loss with token weights: sum(w * ce) / sum(w) over the shifted, non-ignored labels."""
    target = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    w = token_weight[:, 1:].to(ce.dtype) * (target != IGNORE_INDEX)
    return (ce * w).sum() / w.sum()
