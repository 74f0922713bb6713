"""Training progress in a log file: plain lines with step, loss, examples/s and ETA (no carriage returns)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from nli_cot.training.loggers import ProgressLog, progress_line


def test_progress_line_by_hand():
    line = progress_line(40, 400, 40, 320, 62.0, torch.tensor(1.23456))
    # 320 examples in 62 s; 360 steps left at 62/40 s a step = 558 s
    assert line == "step 40/400 (10%) | loss 1.2346 | 5.2 ex/s | elapsed 1m02s | ETA 9m18s"
    assert progress_line(5, None, 5, 10, 1.0, None) == "step 5 | 10.0 ex/s | elapsed 0m01s"


def test_progress_log_writes_one_line_per_n_optimiser_steps(caplog):
    cb = ProgressLog(every=2)
    trainer = SimpleNamespace(global_step=0, max_steps=6, estimated_stepping_batches=6,
                              callback_metrics={"train/loss": torch.tensor(0.5)})
    cb.on_train_start(trainer, None)
    batch = {"input_ids": torch.zeros(4, 3)}
    with caplog.at_level(logging.INFO, logger="nli_cot.training.loggers"):
        for step in (1, 1, 2, 2, 3, 4, 5, 6):  # two micro-batches per optimiser step at the start
            trainer.global_step = step
            cb.on_train_batch_end(trainer, None, None, batch, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert [x.split(" |")[0] for x in lines] == ["step 2/6 (33%)", "step 4/6 (67%)", "step 6/6 (100%)"]
    assert all("ETA" in x and "\r" not in x for x in lines)
