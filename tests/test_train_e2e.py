"""End-to-end training runs of the real recipe on the tiny model (CPU, seconds each): checkpoint layout and the
model card's subfolder loading, exact resume after SIGKILL (the ablations' default fast path and the padded one),
the fast path training as the padded one does, warm start. The run the others start from is the session's shared
`trained_run` (tests/conftest.py); the killed runs are real processes, the rest run `python -m nli_cot.train`'s
`__main__` in-process (`run_inprocess`). A multirun with a failing job: tests/test_sweeps.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TRAIN_ARGS, TRAINED_RUN, TRAINED_STEPS, copy_run, run_inprocess
from tiny_training import train_tiny

pytestmark = pytest.mark.slow

RUN = TRAINED_RUN
# +experiment=abl1 trains through trainer=fast (the ablations' default); PADDED restores the card's padded path.
PADDED = ["trainer=default"]
BASE_ARGS = TRAIN_ARGS  # the shared run's: tests/conftest.py


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """train/loss per optimiser step from the CSV log; a resumed run's rows override the killed run's."""
    out: dict[int, float] = {}
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


def _logged(run_dir: Path, step: int) -> bool:
    """Whether a running job's CSV already holds train/loss for ``step`` (a half-written last line counts as no)."""
    try:
        return step in losses_by_step(run_dir)
    except (OSError, ValueError, TypeError):
        return False


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def finished_run(trained_run: Path) -> Path:
    """6 steps of BASE_ARGS with save_total_limit=2 (TRAINED_STEPS), trained once per session; read-only here."""
    assert TRAINED_STEPS == ["trainer.max_steps=6", "trainer.save_total_limit=2"]
    return trained_run


def test_checkpoint_layout(finished_run: Path) -> None:
    run_dir = finished_run / RUN
    folders = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    # Rotation keeps the newest two and the best (lowest eval loss) one.
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert set(folders) == {"checkpoint-4", "checkpoint-6", state["best_checkpoint"]}
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "trainer_state.json",
                 "training_state.ckpt"):
        assert (run_dir / "checkpoint-6" / name).is_file(), name
    assert state["global_step"] == 6 and "eval/loss" in state["metrics"]
    assert state["config"]["lora"]["r"] == 16 and state["config"]["run_name"] == RUN
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert not list(run_dir.glob(".checkpoint-*"))  # no temporary folder left behind


def test_loss_goes_down(finished_run: Path) -> None:
    losses = losses_by_step(finished_run / RUN)
    assert len(losses) >= 6
    first, last = losses[min(losses)], losses[max(losses)]
    assert last < first - 0.05, losses  # a random 4M model with LoRA on attention only: slow, but steady


def test_card_snippet_loads_the_checkpoint_with_subfolder(finished_run: Path, tiny_model_cfg, mistral_tokenizer) -> None:
    from peft import PeftModel

    from nli_cot.models.modeling import load_base_model

    base = load_base_model(tiny_model_cfg, mistral_tokenizer)
    model = PeftModel.from_pretrained(base, str(finished_run), subfolder=f"{RUN}/checkpoint-6")
    saved = adapter_weights(finished_run / RUN / "checkpoint-6")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(loaded) == 2 * 4 * 2  # A and B, 4 projections, 2 layers
    for key, value in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert match and torch.equal(match[0], value), key
    # The adapter changes the model's output (it is not a freshly initialised, zero-B adapter).
    ids = torch.tensor([[1, 3, 1000, 2000, 4]])
    with torch.no_grad():
        with model.disable_adapter():
            plain = model(ids).logits
        tuned = model(ids).logits
    assert not torch.allclose(plain, tuned)


def test_rerun_without_resume_refuses(finished_run: Path, tmp_path: Path) -> None:
    again = copy_run(finished_run, tmp_path / "again")
    proc = run_inprocess("nli_cot.train", BASE_ARGS + ["trainer.max_steps=6", f"hydra.run.dir={again}"])
    assert proc.returncode == 2
    assert "already holds checkpoints: pass resume=auto" in proc.stderr


def test_warm_start_from_an_adapter(finished_run: Path, tmp_path: Path) -> None:
    source = finished_run / RUN / "checkpoint-6"
    proc = run_inprocess("nli_cot.train", BASE_ARGS + ["trainer.max_steps=2", f"init_adapter_from={source}",
                                                    "run_name=warm", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm start: adapter weights from" in proc.stderr + proc.stdout
    # Two steps from the source adapter stay close to it; a fresh adapter has lora_B == 0.
    before, after = adapter_weights(source), adapter_weights(tmp_path / "warm" / "checkpoint-2")
    b_key = next(k for k in after if "lora_B" in k)
    assert after[b_key].abs().sum() > 0
    assert (after[b_key] - before[b_key]).abs().max() < before[b_key].abs().max()


@pytest.mark.parametrize("path", [[], PADDED], ids=["fast", "padded"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(finished_run: Path, tmp_path: Path, path: list[str]) -> None:
    """Killed after a checkpoint and resumed with resume=auto: the same losses and final adapter as one run, through
    abl1's default fast path (its uninterrupted run is ``finished_run``: 6 steps, the newest two checkpoints and the
    best kept) and through the padded path (4 steps of its own, killed after step 2: the resumed part still crosses
    a checkpoint, an evaluation and the lr schedule)."""
    steps = [*TRAINED_STEPS, *path]  # finished_run's arguments
    whole, last = finished_run, 6
    if path:
        steps, last = ["trainer.max_steps=4", "trainer.save_total_limit=2", *path], 4
        whole = tmp_path / "whole"
        proc = run_inprocess("nli_cot.train", BASE_ARGS + steps + [f"hydra.run.dir={whole}"])
        assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    child = subprocess.Popen([sys.executable, "-m", "nli_cot.train", *BASE_ARGS, *steps, f"hydra.run.dir={killed}"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Lightning logs a step's row after the step's callbacks, so after the checkpoint: wait for it, or the kill
    # could land in between and the run's CSV (not its training) would miss step 1.
    while not ((killed / RUN / "checkpoint-2" / "trainer_state.json").exists() and _logged(killed / RUN, 1)):
        assert child.poll() is None and time.time() < deadline, "run ended before its 2nd step was saved"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (killed / RUN / f"checkpoint-{last}").exists()

    proc = run_inprocess("nli_cot.train", BASE_ARGS + steps + ["resume=auto", f"hydra.run.dir={killed}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = losses_by_step(whole / RUN), losses_by_step(killed / RUN)
    assert sorted(got) == sorted(want) == list(range(last))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got[step], want[step])
    final_want = adapter_weights(whole / RUN / f"checkpoint-{last}")
    final_got = adapter_weights(killed / RUN / f"checkpoint-{last}")
    for key in final_want:
        assert torch.allclose(final_got[key], final_want[key], atol=1e-6), key


def test_resume_refuses_another_batch_layout(finished_run: Path, tmp_path: Path) -> None:
    """A fused run's loader position counts optimiser steps, a padded run's micro-batches: continuing a run under the
    other layout (e.g. one started before trainer=fast became abl1's default) would skip examples."""
    shutil.copytree(finished_run / RUN, tmp_path / RUN)
    proc = run_inprocess("nli_cot.train", BASE_ARGS + ["trainer.max_steps=8", "resume=auto", *PADDED,
                                                    f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "was written with trainer.fuse_grad_accum=True, this run has False" in proc.stderr
    assert "Traceback" not in proc.stderr


def _train_in_process(out: Path, extra: list[str]) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    recipe, _, by_step = train_tiny(out, extra)
    adapter = {n: p.detach().clone() for n, p in recipe.module.model.named_parameters() if p.requires_grad}
    return by_step, adapter


def test_fast_default_trains_as_the_padded_path(tmp_path: Path) -> None:
    """abl1's default (packed rows, varlen attention, chunked CE, fused grad-accum) and trainer=default (padded
    micro-batches, model loss, Lightning accumulation) give the same losses and adapter step by step.

    20 examples in micro-batches of 4, grad_accum 2: 5 micro-batches per epoch, so step 3 is an epoch's short last
    step (one micro-batch) and step 4 starts the next epoch. LoRA dropout 0: the two paths lay tokens out
    differently, so dropout masks would be drawn differently (same distribution, other values).
    """
    args = ["dataset.max_train_examples=20", "trainer.per_device_batch_size=4", "trainer.max_steps=4",
            "lora.dropout=0", "optimizer.lr=5e-3", "trainer.early_stopping_patience=null",
            "trainer.save_steps=100", "trainer.eval_every_n_steps=100"]
    fast_losses, fast_adapter = _train_in_process(tmp_path / "fast", args)
    padded_losses, padded_adapter = _train_in_process(tmp_path / "padded", args + PADDED)
    assert sorted(fast_losses) == sorted(padded_losses) == [0, 1, 2, 3]
    for step, want in padded_losses.items():
        assert fast_losses[step] == pytest.approx(want, rel=1e-5), (step, fast_losses, padded_losses)
    # the short step applies half a step's loss in both (Lightning divides by grad_accum), not a full one
    assert fast_losses[2] < 0.6 * fast_losses[1]
    assert fast_adapter.keys() == padded_adapter.keys()
    for name, want in padded_adapter.items():
        assert torch.allclose(fast_adapter[name], want, rtol=1e-4, atol=1e-5), name
    b = next(n for n in padded_adapter if "lora_B" in n)
    assert padded_adapter[b].abs().max() > 1e-3  # the adapter moved: the comparison is not between two zeros


@pytest.mark.parametrize("at_end", [True, False])
def test_the_last_step_off_the_eval_interval_is_evaluated_and_can_be_best(tmp_path: Path, at_end: bool) -> None:
    """3 steps, evaluation every 2: step 3 is evaluated only through trainer.eval_at_end (the study's runs once
    stopped at step 147 with their last evaluation at 120, so the best could never be the final adapter)."""
    from conftest import compose

    from nli_cot.training.train import TrainRecipe

    cfg = compose(["+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=none", f"output_dir={tmp_path}",
                   "trainer.per_device_batch_size=4", "trainer.max_steps=3", "trainer.eval_every_n_steps=2",
                   "trainer.save_steps=2", "optimizer.lr=5e-3", "trainer.early_stopping_patience=null",
                   f"trainer.eval_at_end={str(at_end).lower()}"])
    recipe = TrainRecipe(cfg)
    recipe.setup()
    summary = recipe.train()
    state = json.loads((recipe.run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert ("eval/loss" in state["metrics"]) is at_end
    step2 = json.loads((recipe.run_dir / "checkpoint-2" / "trainer_state.json").read_text())["metrics"]["eval/loss"]
    if at_end:
        # a 5e-3 lr on a random model lowers the dev loss every step: the final step is the best
        assert state["metrics"]["eval/loss"] < step2
        assert summary["best"]["checkpoint"] == "checkpoint-3"
    else:
        assert summary["best"]["checkpoint"] == "checkpoint-2"
