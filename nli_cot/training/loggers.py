"""Experiment loggers of a run: a CSV log always (sweep reports read it, no account needed), plus the configured
W&B / TensorBoard logger.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; a resumed run must append to it
instead, or the steps before the interruption vanish from the run's own record.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)

# Third-party lines every run printed that say nothing about this run (each checked against what it hides):
_QUIET_WARNINGS = (
    r".*module\(s\) in eval mode.*",            # Lightning's mode check; NliCotModule.on_fit_start trains everything
    r".*smaller than the logging interval.*",      # short runs log at their end anyway (ProgressLog, status.json)
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's own use of torch's pytree API
    r".*`is_gradient_checkpointing` is deprecated.*",         # PEFT's call into transformers
    r".*does not have many workers which may be a bottleneck.*",  # rows are token ids already: loading is ~free
)
# Lightning's ads; our own checkpoints are loaded with weights_only=False; the tensor-core hint is about fp32
# matmuls, and training runs its matmuls in bf16 autocast
_QUIET_LOG_PREFIXES = ("\N{ELECTRIC LIGHT BULB} Tip:", "`weights_only` was not set",
                       "You are using a CUDA device")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_QUIET_LOG_PREFIXES)


def quiet_third_party() -> None:
    """Silence the library lines listed above (idempotent); everything else, warnings included, still shows."""
    import warnings

    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning.trainer.connectors.checkpoint_connector",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):  # a resumed run: start from the header already written
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:  # keep the earlier rows of a resumed run
        return None


class RunCSVLogger(CSVLogger):
    """``<run_dir>/logs/metrics.csv``, appended to across resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(cfg: Any, run_dir: Path) -> list[Any]:
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    from nli_cot.core.sweep import job_tag

    loggers: list[Any] = [RunCSVLogger(save_dir=str(run_dir), name="logs", version="")]
    kind = cfg.logger.kind
    if kind == "wandb":
        mode = cfg.logger.mode
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        job, sweep = job_tag()  # a sweep's jobs: one W&B run each, named apart, grouped by sweep
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, id=cfg.logger.run_id, group=sweep,
            name=cfg.run_name if job is None else f"{cfg.run_name}#{job}",
            save_dir=str(run_dir), offline=mode == "offline", resume="allow" if cfg.logger.run_id else None,
            tags=list(cfg.logger.tags), mode=mode if mode == "disabled" else None,
        ))
    elif kind == "tensorboard":
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers


def _examples(batch: dict[str, Any]) -> int:
    """Examples in a micro-batch: rows when padded, position-id restarts when packed into one row."""
    if batch.get("attention_mask") is None and batch.get("position_ids") is not None:
        return int((batch["position_ids"] == 0).sum())
    return int(batch["input_ids"].shape[0])


def throughput_monitor(window: int) -> Any:
    """Lightning's ThroughputMonitor counting real tokens and examples of our batches.

    It measures rank 0 and scales by the world size: per-GPU rates (``train/device/items_per_sec``) are exact,
    the all-rank totals assume the other ranks read about as many tokens.
    """
    from pytorch_lightning.callbacks import ThroughputMonitor

    from nli_cot.training.module import count_real_tokens

    return ThroughputMonitor(batch_size_fn=_examples, length_fn=count_real_tokens, window_size=window)


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressLog(pl.Callback):
    """One plain log line every ``every`` optimiser steps: step / total, loss, examples/s and ETA.

    It goes through Python logging, so it reaches the terminal and the run's log file alike (a tqdm bar in a file is
    one line of carriage returns, and a redirected run looked silent). Resumed runs count speed from the resume."""

    def __init__(self, every: int) -> None:
        self.every = int(every)
        self._t0: float | None = None
        self._step0 = 0
        self._examples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._step0, self._examples = time.monotonic(), trainer.global_step, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._examples += _examples_in(batch)
        step = trainer.global_step
        if self._t0 is None or self.every <= 0 or step == self._step0 or step % self.every:
            return
        if getattr(self, "_last", None) == step:  # several micro-batches end on the same optimiser step
            return
        self._last = step
        line = progress_line(step, trainer.max_steps if trainer.max_steps and trainer.max_steps > 0
                             else trainer.estimated_stepping_batches, step - self._step0, self._examples,
                             time.monotonic() - self._t0, trainer.callback_metrics.get("train/loss"))
        log.info(line)


def _examples_in(batch: Any) -> int:
    """Examples in a micro-batch: rows when padded; sequence starts when packed (position ids restart at 0)."""
    if not isinstance(batch, dict) or batch.get("input_ids") is None:
        return 0
    pos = batch.get("position_ids")
    if pos is not None and batch["input_ids"].shape[0] == 1:
        return int((pos == 0).sum())
    return int(batch["input_ids"].shape[0])


def progress_line(step: int, total: float | None, steps_done: int, examples: int, seconds: float,
                  loss: Any) -> str:
    """``step 40/400 (10%) | loss 1.2345 | 12.3 ex/s | elapsed 1m02s | ETA 9m18s``."""
    parts = [f"step {step}" + (f"/{int(total)} ({step / total:.0%})" if total and total < float("inf") else "")]
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    rate = examples / seconds if seconds > 0 else 0.0
    parts += [f"{rate:.1f} ex/s", f"elapsed {_clock(seconds)}"]
    if total and total < float("inf") and steps_done > 0:
        parts.append(f"ETA {_clock(seconds / steps_done * max(0, total - step))}")
    return " | ".join(parts)
