"""The tiny recipe trained in this process, with the loss each optimiser step applies: what the pinned-loss test
(test_loss_regression) and the fast-vs-padded test (test_train_e2e) both run.

abl1 on the tiny seeded random Mistral and the fixture SFT set, no logger; ``extra`` overrides the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from conftest import REPO, compose


class AppliedLoss(pl.Callback):
    """Per optimiser step, the loss whose gradient the step applies: the sum of Lightning's per-batch losses (each
    already divided by grad_accum when accumulating; the fused path's one batch per step carries the whole step)."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *_: object) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, *_: object) -> None:
        self.by_step[self._step] = self.by_step.get(self._step, 0.0) + float(outputs["loss"])


def train_tiny(out: Path, extra: list[str]) -> tuple[Any, dict[str, Any], dict[int, float]]:
    """Train the tiny recipe into ``out``: (the TrainRecipe, its summary, the applied loss per optimiser step)."""
    from nli_cot.training.train import TrainRecipe

    cfg = compose(["+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=none",
                   f"dataset.train_path={REPO / 'tests/fixtures/sft_sample.jsonl'}", f"output_dir={out}", *extra])
    recipe = TrainRecipe(cfg)
    recipe.setup()
    losses = AppliedLoss()
    recipe.trainer.callbacks.append(losses)
    summary = recipe.train()
    return recipe, summary, losses.by_step
