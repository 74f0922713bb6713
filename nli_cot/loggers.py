"""Experiment loggers of a run: a CSV log always (sweep reports read it, no account needed), plus the configured
W&B / TensorBoard logger.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; a resumed run must append to it
instead, or the steps before the interruption vanish from the run's own record.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


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

    from nli_cot.sweep import job_tag

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

    from nli_cot.module import count_real_tokens

    return ThroughputMonitor(batch_size_fn=_examples, length_fn=count_real_tokens, window_size=window)
