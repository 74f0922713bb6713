"""The CUDA-graph lever (trainer.compile_mode=reduce-overhead + trainer.row_bucket), the parts a CPU can check:
bucket padding that changes no loss or gradient, real-token counts, config checks, and the step/generation hooks.
The graphs themselves need a GPU: experiments/bench_train.py variant abl1_graphs (experiments/results/SPEED.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from test_packing import RECORDS, _lora_grads

from nli_cot.training import fastpath
from nli_cot.training.data import IGNORE_INDEX, collate_padding_free, tokenize_records
from nli_cot.training.module import count_real_tokens


@pytest.fixture(scope="module")
def examples(mistral_tokenizer):
    return tokenize_records(RECORDS, mistral_tokenizer, compose(["prompt=card"]).prompt, 512, False).examples


@pytest.fixture(scope="module")
def model(tiny_model_cfg, mistral_tokenizer):
    from nli_cot.models.modeling import attach_lora, load_base_model

    torch.manual_seed(0)
    peft_model = attach_lora(load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True),
                             compose(["lora=default"]).lora)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter so its gradients are checked too
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft_model.eval()


@pytest.mark.parametrize("bucket", [16, 64, 512])
def test_a_bucketed_row_is_padded_by_one_inert_segment(examples, bucket) -> None:
    plain = collate_padding_free(examples)
    row = collate_padding_free(examples, bucket, pad_id=3)
    n = plain["input_ids"].shape[1]
    width = row["input_ids"].shape[1]
    pad = width - n
    assert width % bucket == 0 and 0 <= pad < bucket and row["row_padding"] == pad
    assert torch.equal(row["input_ids"][0, :n], plain["input_ids"][0])
    assert (row["input_ids"][0, n:] == 3).all() and (row["labels"][0, n:] == IGNORE_INDEX).all()
    assert row["position_ids"][0, n:].tolist() == list(range(pad))  # its own segment, positions from 0
    cu = plain["cu_seq_lens_q"].tolist()
    assert row["cu_seq_lens_q"].tolist() == (cu + [width] if pad else cu)
    assert count_real_tokens(row) == count_real_tokens(plain) == n  # padding is not counted as work done
    assert torch.equal(fastpath.loss_positions(row["labels"])[1], fastpath.loss_positions(plain["labels"])[1])


def test_without_a_bucket_nothing_changes(examples) -> None:
    assert "row_padding" not in collate_padding_free(examples)


@pytest.mark.parametrize("attention", ["sdpa", fastpath.VARLEN_ATTENTION])
def test_bucket_padding_changes_no_loss_and_no_gradient(model, examples, attention) -> None:
    """The chunked completion loss (the ablations' path) and the LoRA gradients of a bucketed row equal the unpadded
    row's: the pad segment trails the row, so under causal attention no example sees it (with any attention), and
    it carries no label."""
    results = []
    fastpath.set_attention(model, attention)
    try:
        for bucket in (None, 64):
            batch = collate_padding_free(examples, bucket)
            batch["loss_index"], batch["loss_target"] = fastpath.loss_positions(batch["labels"])
            model.zero_grad()
            loss = fastpath.completion_loss(model, batch, chunk_tokens=7)
            loss.backward()
            results.append((loss.detach(), _lora_grads(model)))
    finally:
        fastpath.set_attention(model, "sdpa")
        model.zero_grad()
    (want, want_grads), (got, got_grads) = results
    assert torch.allclose(got, want, atol=1e-6), (float(got), float(want))
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-6, rtol=1e-4), name


def test_the_data_module_buckets_training_and_eval_rows(mistral_tokenizer, tmp_path) -> None:
    import json

    from nli_cot.training.data import NliDataModule

    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 4))
    cfg = compose(["+experiment=abl1", "model=tiny_mistral", "prompt=card", f"dataset.train_path={path}",
                   f"dataset.eval_path={path}", "trainer.row_bucket=64"])
    dm = NliDataModule(cfg.dataset, cfg.trainer, cfg.prompt, mistral_tokenizer, seed=0)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert batch["input_ids"].shape[1] % 64 == 0 and "row_padding" in batch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.compile_mode=reduce-overhead"], "needs trainer.row_bucket"),
        (["trainer.compile_mode=reduce-overhead", "trainer.row_bucket=256", "trainer.compile=false"],
         "needs trainer.compile=true"),
        (["trainer.compile_mode=reduce-overhead", "trainer.row_bucket=256", "trainer.gradient_checkpointing=true"],
         "does not combine with trainer.gradient_checkpointing"),
        (["trainer=default", "trainer.row_bucket=256"], "needs trainer.padding_free=true"),
        (["trainer.compile_mode=graphs"], "trainer.compile_mode='graphs' is not one of default, reduce-overhead"),
        (["trainer.row_bucket=0"], "trainer.row_bucket"),
    ],
)
def test_a_cuda_graph_setting_that_cannot_work_is_one_clear_line(overrides, message) -> None:
    from nli_cot.training.train import ConfigError, validate

    cfg = compose(["+experiment=abl1", "model=tiny_mistral", *overrides])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_the_graphs_setting_validates(tmp_path) -> None:
    from nli_cot.training.train import validate

    data = tmp_path / "sft.jsonl"
    data.write_text("{}\n")
    validate(compose(["+experiment=abl1", "model=tiny_mistral", "trainer.compile_mode=reduce-overhead",
                      "trainer.row_bucket=256", f"dataset.train_path={data}", f"dataset.eval_path={data}"]))


def test_steps_mark_a_new_graph_step_and_generation_runs_eagerly(model, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    fastpath.graph_step_begin(model)
    assert calls == []  # no graphs: nothing to tell
    base = model.get_base_model()
    monkeypatch.setattr(base, "_nli_cuda_graphs", True, raising=False)
    fastpath.graph_step_begin(model)
    assert calls == [1]
    stances = []
    real = torch.compiler.set_stance

    def spy(stance, **kw):
        stances.append(stance)
        return real(stance, **kw)

    monkeypatch.setattr(torch.compiler, "set_stance", spy)
    with fastpath.generation_attention(model):
        pass
    assert stances == ["force_eager"]
    with fastpath.eager_without_grad(model):  # gradients on: the step stays a graph
        pass
    with torch.no_grad(), fastpath.eager_without_grad(model):  # eval loss: eagerly
        pass
    assert stances == ["force_eager", "force_eager"]
