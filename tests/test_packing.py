"""Padding-free rows and the speed levers of nli_cot.training.fastpath compute exactly what the plain path computes.

A packed row must give every example the loss it has alone (else the speed-up is not real), with the model's
own sdpa attention and with the varlen attention (its CPU path: per-example sdpa); the chunked completion loss
must equal the model's loss, gradients included; grouped-query sdpa must equal sdpa on a left-padded batch.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import compose

from nli_cot.training import fastpath
from nli_cot.training.data import IGNORE_INDEX, collate_padded, collate_padding_free, tokenize_records

RECORDS = [
    {
        "id": "a",
        "premise": "A man plays a guitar on a stage.",
        "hypothesis": "A man performs music.",
        "thought_process": "Playing a guitar on a stage is performing music, so the hypothesis follows.",
        "label": 1,
    },
    {
        "id": "b",
        "premise": "Two dogs run through the snow.",
        "hypothesis": "The animals are asleep.",
        "thought_process": "Running dogs are awake.",
        "label": 0,
    },
    {
        "id": "c",
        "premise": "A child reads a book in a quiet library while her mother waits outside.",
        "hypothesis": "A child is reading.",
        "thought_process": "She reads a book, which is reading. " * 3,
        "label": 1,
    },
]


@pytest.fixture(scope="module")
def examples(mistral_tokenizer):
    prompt = compose(["prompt=card"]).prompt
    return tokenize_records(RECORDS, mistral_tokenizer, prompt, 512, False).examples


@pytest.fixture(scope="module")
def model(tiny_model_cfg, mistral_tokenizer):
    from nli_cot.models.modeling import attach_lora, load_base_model

    torch.manual_seed(0)
    base = load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True)
    peft_model = attach_lora(base, compose(["lora=default"]).lora)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter so its gradients are checked too
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft_model.eval()  # eval: dropout off, so two forwards are comparable


def _per_example_losses_from_packed(
    logits: torch.Tensor, batch: dict, lengths: list[int]
) -> list[torch.Tensor]:
    out, start = [], 0
    for n in lengths:
        lg = logits[0, start : start + n - 1].float()
        lb = batch["labels"][0, start + 1 : start + n]
        out.append(F.cross_entropy(lg, lb, ignore_index=IGNORE_INDEX))
        start += n
    return out


def _per_example_losses_from_padded(logits: torch.Tensor, batch: dict, lengths: list[int]) -> list[torch.Tensor]:
    return [
        F.cross_entropy(logits[row, : n - 1].float(), batch["labels"][row, 1:n], ignore_index=IGNORE_INDEX)
        for row, n in enumerate(lengths)
    ]


@pytest.mark.parametrize("attention", ["sdpa", fastpath.VARLEN_ATTENTION])
def test_packed_row_gives_each_example_its_unpacked_loss(model, examples, attention) -> None:
    """Each example's loss in the packed row equals its loss alone and in the padded batch (the trainer=default path:
    right padding + attention mask, model's sdpa)."""
    with torch.no_grad():
        padded = collate_padded(examples, 0)
        padded_logits = model(**padded).logits
    fastpath.set_attention(model, attention)
    try:
        with torch.no_grad():
            alone = [model(**collate_padded([ex], 0)).loss for ex in examples]
            packed = collate_padding_free(examples)
            logits = model(**packed).logits
    finally:
        fastpath.set_attention(model, "sdpa")
    lengths = [len(ex["input_ids"]) for ex in examples]
    assert len(set(lengths)) == len(lengths)  # the padded batch really pads
    got = _per_example_losses_from_packed(logits, packed, lengths)
    in_padded = _per_example_losses_from_padded(padded_logits, padded, lengths)
    for g, want, pad in zip(got, alone, in_padded, strict=True):
        assert torch.allclose(g, want, atol=2e-5), (attention, float(g), float(want))
        assert torch.allclose(g, pad, atol=2e-5), (attention, float(g), float(pad))


def test_packed_row_carries_example_boundaries(examples) -> None:
    batch = collate_padding_free(examples)
    lengths = [len(ex["input_ids"]) for ex in examples]
    assert batch["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] >= max(lengths)  # an upper bound: constant 512 for rows of the card's length
    assert batch["max_length_q"] == 512


def test_varlen_attention_leaks_nothing_across_examples(model, examples) -> None:
    """Changing the first example's tokens must not move the second example's logits by a bit."""
    fastpath.set_attention(model, fastpath.VARLEN_ATTENTION)
    try:
        batch = collate_padding_free(examples[:2])
        other = copy.deepcopy(batch)
        n0 = len(examples[0]["input_ids"])
        other["input_ids"][0, 1:n0] = (other["input_ids"][0, 1:n0] + 7) % 32000
        with torch.no_grad():
            a = model(**batch).logits[0, n0:]
            b = model(**other).logits[0, n0:]
    finally:
        fastpath.set_attention(model, "sdpa")
    assert torch.equal(a, b)


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_completion_loss_equals_the_models_loss_and_gradients(model, examples, packed) -> None:
    batch = collate_padding_free(examples) if packed else collate_padded(examples, 0)
    model.zero_grad()
    want = model(**batch).loss
    want.backward()
    want_grads = _lora_grads(model)
    model.zero_grad()
    index, target = fastpath.loss_positions(batch["labels"])
    got = fastpath.completion_loss(model, dict(batch, loss_index=index, loss_target=target), chunk_tokens=7)
    got.backward()
    got_grads = _lora_grads(model)
    model.zero_grad()
    assert torch.allclose(got, want, atol=1e-5), (float(got), float(want))
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-6, rtol=1e-4), name


def test_loss_positions_skip_prompts_and_example_boundaries(examples) -> None:
    batch = collate_padding_free(examples)
    index, target = fastpath.loss_positions(batch["labels"])
    n_learned = sum(sum(t != IGNORE_INDEX for t in ex["labels"]) for ex in examples)
    assert target.numel() == n_learned  # every completion token (EOS included), nothing else
    assert (batch["labels"][0, index + 1] == target).all()


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths left-padded into one batch, as generation sees them."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


def test_grouped_sdpa_equals_sdpa_on_a_left_padded_batch(model, examples) -> None:
    ids, mask = _left_padded([ex["input_ids"][: 20 + 5 * i] for i, ex in enumerate(examples)])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        fastpath.set_attention(model, fastpath.GROUPED_SDPA)
        try:
            got = model(input_ids=ids, attention_mask=mask).logits
        finally:
            fastpath.set_attention(model, "sdpa")
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)


def test_checkpointing_can_be_limited_to_the_first_layers(tiny_model_cfg, mistral_tokenizer) -> None:
    from nli_cot.models.modeling import attach_lora, load_base_model

    base = load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True, gradient_checkpointing=True)
    peft_model = attach_lora(base, compose(["lora=default"]).lora)
    assert fastpath.limit_checkpointed_layers(peft_model, None) == 2
    assert fastpath.limit_checkpointed_layers(peft_model, 1) == 1
    flags = [layer.gradient_checkpointing for layer in fastpath.decoder_layers(peft_model)]
    assert flags == [True, False]


def test_lora_can_be_limited_to_chosen_layers_and_a_wrong_index_is_a_clear_error(tiny_model_cfg, mistral_tokenizer):
    from nli_cot.models.modeling import ModelSetupError, attach_lora, load_base_model

    base = load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True)
    peft_model = attach_lora(base, compose(["lora=default", "lora.layers_to_transform=[1]"]).lora)
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert adapted == {"1"}  # only the last of the tiny model's 2 layers trains
    base = load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True)
    with pytest.raises(ModelSetupError, match=r"layers_to_transform=\[2\]: this model has layers 0\.\.1"):
        attach_lora(base, compose(["lora=default", "lora.layers_to_transform=[2]"]).lora)


@pytest.mark.parametrize("packed", [False, True])
def test_fused_micro_batches_compute_gradient_accumulations_loss_and_gradients(
    model, examples, packed
) -> None:
    """One forward over two micro-batches, weighted, equals accumulating them (mean of their token-mean losses)."""
    collate = collate_padding_free if packed else (lambda exs: collate_padded(exs, 0))
    micro = [examples[:2], examples[2:]]
    model.zero_grad()
    want = 0.0
    for part in micro:
        loss = model(**collate(part)).loss / len(micro)
        loss.backward()
        want += float(loss)
    want_grads = _lora_grads(model)
    model.zero_grad()
    batch = collate(examples)
    index, target = fastpath.loss_positions(batch["labels"])
    weight = fastpath.micro_batch_loss_weights(
        index, batch["labels"].shape[1], [len(ex["input_ids"]) for ex in examples], 2, packed
    )
    got = fastpath.completion_loss(
        model, dict(batch, loss_index=index, loss_target=target, loss_weight=weight), 5
    )
    got.backward()
    got_grads = _lora_grads(model)
    model.zero_grad()
    assert abs(float(got) - want) < 1e-5
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-6, rtol=1e-4), name


def test_a_short_last_step_is_scaled_as_lightning_scales_it(model, examples) -> None:
    """An epoch's last step may hold fewer micro-batches than grad_accum; Lightning still divides each micro-batch
    loss by grad_accum, so the fused step's gradients are scaled by present / grad_accum to match."""
    part = examples[:2]  # one micro-batch of 2, grad_accum 2
    model.zero_grad()
    (model(**collate_padding_free(part)).loss / 2).backward()
    want = _lora_grads(model)
    model.zero_grad()
    batch = collate_padding_free(part)
    index, target = fastpath.loss_positions(batch["labels"])
    weight = fastpath.micro_batch_loss_weights(index, batch["labels"].shape[1], [len(e["input_ids"]) for e in part], 2,
                                               True)
    scale = fastpath.fused_grad_scale(len(part), micro_size=2, accum=2)
    assert scale == 0.5 and fastpath.fused_grad_scale(4, micro_size=2, accum=2) is None
    (fastpath.completion_loss(model, dict(batch, loss_index=index, loss_target=target, loss_weight=weight)) * scale
     ).backward()
    got = _lora_grads(model)
    model.zero_grad()
    for name, g in want.items():
        assert torch.allclose(got[name], g, atol=1e-6, rtol=1e-4), name


def test_cuda_levers_resolve_to_what_a_cpu_supports(tiny_model_cfg, mistral_tokenizer, caplog) -> None:
    """The ablations' default (trainer=fast) on a CPU: compile skipped and varlen attention per example, said in one
    info line, no warning, no error."""
    import logging

    from nli_cot.models.modeling import attach_lora, load_base_model

    trainer_cfg = compose(["+experiment=abl1", "model=tiny_mistral"]).trainer
    assert trainer_cfg.compile and trainer_cfg.packed_attention == "varlen"
    peft_model = attach_lora(load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True),
                             compose(["lora=default"]).lora)
    with caplog.at_level(logging.INFO, logger="nli_cot.training.fastpath"):
        applied = fastpath.apply_training_levers(peft_model, _on_cpu(trainer_cfg))
    assert "compiled_layers" not in applied and applied["attention"] == fastpath.VARLEN_ATTENTION
    assert applied["without_cuda"] == ["packed_attention=varlen runs per-example sdpa", "compile is off"]
    lines = [r for r in caplog.records if r.name == "nli_cot.training.fastpath"]
    assert [r.levelname for r in lines] == ["INFO"], [r.getMessage() for r in lines]
    assert all(getattr(layer, "_compiled_call_impl", None) is None for layer in fastpath.decoder_layers(peft_model))


def _on_cpu(trainer_cfg):
    """The trainer config as a CPU-only machine sees it (this one may have a GPU: ask for the CPU accelerator)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(trainer_cfg))
    cfg.accelerator = "cpu"
    return cfg


def test_generation_under_varlen_training_attention_sees_the_padding_mask(model, examples) -> None:
    """nli_varlen builds no padding mask, so left-padded decoding (trainer.gen_eval) must switch back to sdpa."""
    ids, mask = _left_padded([ex["input_ids"][: 12 + 6 * i] for i, ex in enumerate(examples)])
    real = mask.bool()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits[real]
        fastpath.set_attention(model, fastpath.VARLEN_ATTENTION)
        try:
            leaky = model(input_ids=ids, attention_mask=mask).logits[real]
            with fastpath.generation_attention(model):
                got = model(input_ids=ids, attention_mask=mask).logits[real]
            assert model.get_base_model().config._attn_implementation == fastpath.VARLEN_ATTENTION  # restored
        finally:
            fastpath.set_attention(model, "sdpa")
    assert not torch.allclose(leaky, want, atol=1e-3)  # what the switch prevents
    assert torch.allclose(got, want, atol=1e-5)
