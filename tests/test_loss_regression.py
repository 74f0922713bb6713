"""Pinned losses (torchtune's recipe regression test): the real training recipe on the tiny seeded random Mistral and
a fixed set of 20 SFT examples, 4 optimiser steps on CPU; the per-step losses and the final dev loss are constants.

Any change to what a step computes (prompt format, tokenisation, label masking, packing, the loss, grad
accumulation, AdamW, the warm-up/cosine schedule, LoRA's initialisation or scaling, the seed's use) moves these
numbers. If a change is meant to do that, re-pin them from this test's own failure message and say why in the
commit. The tolerances (losses rel 1e-5, adapter rel 1e-4) cover float reduction order across CPU thread counts and
SIMD kernels, nothing more. A random 32k-vocabulary model starts at ln(32768) = 10.397 per token, so the losses move
little in 4 steps; the adapter's |B| sum moves with every gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_training import train_tiny

# abl1's default path (trainer=fast: packed rows, chunked CE, fused grad-accum), seed 42, micro-batches of 4,
# grad_accum 2: step 2 is an epoch's short last step (one micro-batch: half a step's loss is applied); step 0
# runs at the warm-up's lr 0.
PINNED_STEP_LOSSES = [10.397546768188477, 10.386019706726074, 5.161024570465088, 10.286256790161133]
PINNED_EVAL_LOSS = 10.282967567443848
PINNED_LORA_B_ABS_SUM = 158.62868118286133  # sum |B| over every LoRA B matrix after the 4 steps: moves with every gradient


def test_tiny_recipe_losses_are_pinned(tmp_path: Path) -> None:
    recipe, summary, by_step = train_tiny(tmp_path, [
        "dataset.max_train_examples=20", "dataset.max_eval_examples=8", "trainer.per_device_batch_size=4",
        "trainer.max_steps=4", "lora.dropout=0", "optimizer.lr=2e-2", "optimizer.name=adamw",
        "trainer.early_stopping_patience=null", "trainer.save_steps=4", "trainer.eval_every_n_steps=4"])
    got = [by_step[s] for s in sorted(by_step)]
    got_eval = summary["metrics"]["eval/loss"]
    got_b = sum(float(p.detach().abs().sum()) for n, p in recipe.module.model.named_parameters() if "lora_B" in n)
    message = (f"re-pin if intended: PINNED_STEP_LOSSES = {got!r}, PINNED_EVAL_LOSS = {got_eval!r}, "
               f"PINNED_LORA_B_ABS_SUM = {got_b!r}")
    assert got == pytest.approx(PINNED_STEP_LOSSES, rel=1e-5), message
    assert got_eval == pytest.approx(PINNED_EVAL_LOSS, rel=1e-5), message
    assert got_b == pytest.approx(PINNED_LORA_B_ABS_SUM, rel=1e-4), message
