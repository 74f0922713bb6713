"""Data-parallel training through Lightning's DDP strategy: 2 CPU processes (gloo) on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_module

pytestmark = pytest.mark.slow
RUN = "Mistral_Thinking_Abl1"


def test_ddp_two_processes_train_and_save_a_loadable_adapter(tmp_path: Path, tiny_model_cfg, mistral_tokenizer) -> None:
    from peft import PeftModel

    from nli_cot.modeling import load_base_model

    proc = run_module("nli_cot.train", [
        "+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=csv", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.strategy=ddp", "trainer.per_device_batch_size=4", "trainer.max_steps=2",
        "trainer.save_steps=2", "trainer.eval_every_n_steps=2", f"hydra.run.dir={tmp_path}",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / RUN
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    state = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "eval/loss" in state["metrics"]
    base = load_base_model(tiny_model_cfg, mistral_tokenizer)
    PeftModel.from_pretrained(base, str(tmp_path), subfolder=f"{RUN}/checkpoint-2")
