"""Config composition: the card's three ablations carry exactly the card's numbers; bad input fails in one line."""

from __future__ import annotations

import re

import pytest
from conftest import compose, run_inprocess
from omegaconf import OmegaConf

# The model card's values (model-card.md), one row per ablation.
CARD = {
    "abl0_1": dict(run_name="Mistral_Thinking_Abl0.1", bs=16, ga=2, epochs=3, ckpt=True, data="combined", init=None),
    "abl0_2": dict(run_name="Mistral_Thinking_Abl0.2", bs=8, ga=2, epochs=6, ckpt=False, data="combined",
                   init="Mistral_Thinking_Abl0.1/checkpoint-2225"),
    "abl1": dict(run_name="Mistral_Thinking_Abl1", bs=8, ga=2, epochs=3, ckpt=False, data="correct_only", init=None),
}


@pytest.mark.parametrize("name", sorted(CARD))
def test_experiment_carries_the_cards_numbers(name: str) -> None:
    cfg = compose([f"+experiment={name}"])
    want = CARD[name]
    assert cfg.run_name == want["run_name"]
    assert cfg.trainer.per_device_batch_size == want["bs"]
    assert cfg.trainer.grad_accum == want["ga"]
    assert cfg.trainer.per_device_batch_size * cfg.trainer.grad_accum == {"abl0_1": 32}.get(name, 16)
    assert cfg.trainer.max_epochs == want["epochs"]
    assert cfg.trainer.gradient_checkpointing is want["ckpt"]
    assert cfg.dataset.name == want["data"]
    assert cfg.dataset.max_seq_length == 512
    # Shared by all three (card, Technical Implementation Details).
    assert cfg.model.name_or_path == "mistralai/Mistral-7B-v0.3"
    assert (cfg.model.quantization, cfg.model.double_quant, cfg.model.compute_dtype) == ("nf4", True, "bfloat16")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert list(cfg.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("paged_adamw_8bit", 2e-4, 0.01)
    assert (cfg.optimizer.scheduler, cfg.optimizer.warmup_ratio) == ("cosine", 0.03)
    assert cfg.trainer.early_stopping_metric == "eval/loss"
    assert cfg.logger.kind == "wandb"
    init = OmegaConf.to_container(cfg, resolve=False)["init_adapter_from"]
    if want["init"] is None:
        assert init is None
    else:
        assert init.endswith(want["init"])


def test_every_card_number_has_its_source_line(repo) -> None:
    for name in CARD:
        text = (repo / "conf" / "experiment" / f"{name}.yaml").read_text()
        for line in text.splitlines():
            if re.match(r"^\s*[\w.]+:\s*-?[\d.]+(e-?\d+)?\s*(#|$)", line):
                assert "# card" in line, f"{name}.yaml: number without its source in the card: {line!r}"


def test_schema_rejects_wrong_type_at_compose_time() -> None:
    with pytest.raises(Exception, match="lora.r"):
        compose(["lora.r=abc"])


def test_schema_rejects_unknown_key() -> None:
    with pytest.raises(Exception, match="lora_rank"):
        compose(["lora.lora_rank=8"])


@pytest.mark.parametrize(
    "override, expect",
    [
        ("lora.r=abc", "lora.r"),
        ("lora.rank=8", "rank"),
        ("model=no_such_model", "no_such_model"),
        ("dataset.train_path=/nonexistent/train.jsonl", "dataset.train_path: file not found: /nonexistent/train.jsonl"),
        ("optimizer.name=sgd", "optimizer.name='sgd' is not one of"),
    ],
)
def test_bad_override_gives_a_short_error_and_no_traceback(override: str, expect: str) -> None:
    proc = run_inprocess("nli_cot.train", ["model=tiny_mistral", "logger=none", override])  # the __main__, in-process
    assert proc.returncode != 0
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1 and expect in error_lines[0], proc.stderr


@pytest.mark.parametrize("name", sorted(CARD))
def test_ablations_default_to_the_result_preserving_speed_levers(name: str) -> None:
    """trainer=fast is the ablations' default (same losses and gradients, experiments/results/SPEED.md); bf16 norms
    (model.upcast_fp32=false) change numerics, so they stay opt-in; trainer=default restores the padded path."""
    fast = compose([f"+experiment={name}"])
    t = fast.trainer
    # Abl0.1 (gradient checkpointing, to fit the card's memory) keeps its micro-batches as separate passes: fused,
    # they hold twice the activations (experiments/results/SPEED.md).
    assert (t.padding_free, t.packed_attention, t.loss_impl, t.fuse_grad_accum, t.compile) == (
        True, "varlen", "chunked", name != "abl0_1", True)
    assert fast.model.upcast_fp32 is True
    padded = compose([f"+experiment={name}", "trainer=default"]).trainer
    assert (padded.padding_free, padded.packed_attention, padded.loss_impl, padded.fuse_grad_accum, padded.compile) == (
        False, "model", "model", False, False)
    # The card's numbers do not depend on which trainer preset carries them.
    assert (padded.per_device_batch_size, padded.grad_accum, padded.max_epochs, padded.gradient_checkpointing) == (
        t.per_device_batch_size, t.grad_accum, t.max_epochs, t.gradient_checkpointing)
