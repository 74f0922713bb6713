"""Checkpoints as PEFT adapter folders, the layout the model card ships: ``<run_dir>/checkpoint-<step>/``.

Each folder holds
- ``adapter_config.json`` + ``adapter_model.safetensors``: loadable with
  ``PeftModel.from_pretrained(base, <output_dir>, subfolder="<run_name>/checkpoint-<step>")``;
- the tokenizer files, so the folder serves alone;
- ``trainer_state.json``: step, epoch, latest metrics, best metric/checkpoint so far and the resolved config;
- ``training_state.ckpt``: Lightning's state (adapter weights, optimiser, scheduler, loop progress, data-loader
  position, RNG) for an exact ``resume``.

A folder is built under a temporary name and renamed into place, so a run killed mid-save leaves the previous
checkpoints intact and never a half-written one that ``resume=auto`` or Abl0.2's warm start could pick up.
Rotation keeps the newest ``save_total_limit`` folders and always the best one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from nli_cot.core.records import write_json_atomic

STATE_FILE = "training_state.ckpt"
TRAINER_STATE = "trainer_state.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def is_complete(folder: Path) -> bool:
    """A checkpoint folder that finished writing (atomic rename) and holds the adapter."""
    return all((folder / name).is_file() for name in ADAPTER_FILES + (TRAINER_STATE,))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete ``checkpoint-<step>`` folders of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT_RE.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def latest_resumable(run_dir: Path) -> Path | None:
    candidates = [p for p in list_checkpoints(run_dir) if (p / STATE_FILE).is_file()]
    return candidates[-1] if candidates else None


class PeftCheckpoint(pl.Callback):
    """Write ``checkpoint-<global_step>`` every ``save_steps`` optimiser steps and at the end of training."""

    def __init__(self, run_dir: Path, save_steps: int, save_total_limit: int | None, tokenizer: Any,
                 monitor: str, mode: str, resolved_config: dict):
        self.run_dir = Path(run_dir)
        self.save_steps = save_steps
        self.save_total_limit = save_total_limit
        self.tokenizer = tokenizer
        self.monitor, self.mode = monitor, mode
        self.resolved_config = resolved_config
        self.best_value: float | None = None
        self.best_checkpoint: str | None = None
        self._last_saved = -1
        self._eval_step = -1  # the step whose evaluation callback_metrics hold (they outlive it)

    # Lightning keeps this in its checkpoint, so best-tracking survives a resume.
    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_checkpoint": self.best_checkpoint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.best_checkpoint = state.get("best_checkpoint")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step != self._last_saved and step % self.save_steps == 0:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_saved and trainer.global_step > 0:
            self.save(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._eval_step = trainer.global_step
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        improved = self.best_value is None or (value < self.best_value if self.mode == "min" else value > self.best_value)
        if improved:
            self.best_value = value
            self.best_checkpoint = f"checkpoint-{trainer.global_step}"
        # The save for this step ran just before validation: add the fresh metrics to its state file.
        folder = self.run_dir / f"checkpoint-{trainer.global_step}"
        if trainer.is_global_zero and is_complete(folder):
            write_json_atomic(folder / TRAINER_STATE, self._trainer_state(trainer))

    def _trainer_state(self, trainer: pl.Trainer) -> dict[str, Any]:
        # An eval/* value left from an earlier step's evaluation is not this checkpoint's: leave it out.
        fresh = self._eval_step == trainer.global_step
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1 and (fresh or not k.startswith("eval/"))}
        return {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": metrics,
            "best_metric": {self.monitor: self.best_value},
            "best_checkpoint": self.best_checkpoint,
            "config": self.resolved_config,
        }

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        final = self.run_dir / f"checkpoint-{step}"
        tmp = self.run_dir / f".checkpoint-{step}.tmp"
        if trainer.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.strategy.barrier()
        for logger in trainer.loggers:  # flush buffered metrics too: a kill after this point loses no logged step
            logger.save()
        trainer.save_checkpoint(tmp / STATE_FILE)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            write_json_atomic(tmp / TRAINER_STATE, self._trainer_state(trainer))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._rotate()
        trainer.strategy.barrier()
        self._last_saved = step

    def _rotate(self) -> None:
        if not self.save_total_limit:
            return
        folders = list_checkpoints(self.run_dir)
        keep = set(folders[-self.save_total_limit:])
        if self.best_checkpoint:
            keep.add(self.run_dir / self.best_checkpoint)
        for folder in folders:
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)


class EarlyStoppingAfter(EarlyStopping):
    """Lightning's EarlyStopping that neither counts nor stops before ``min_steps`` optimiser steps.

    A decoded dev metric such as balanced accuracy sits at its floor (0.5: one constant answer) while a label-only
    model is still learning the prior; patience counted from step 0 stopped such a run on that plateau (the
    study's label_only_all seed 1 ended at step 125 with dev balanced accuracy 0.5, its seed 0 reached 0.91)."""

    def __init__(self, min_steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_steps = int(min_steps)

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.global_step < self.min_steps:
            return
        super()._run_early_stopping_check(trainer)
