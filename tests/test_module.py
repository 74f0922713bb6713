"""The Lightning module trains the model as the card's HF Trainer does: every module in train mode."""

from __future__ import annotations

import torch
from conftest import compose


def test_fit_start_puts_the_base_in_train_mode_so_gradient_checkpointing_recomputes():
    # from_pretrained returns the base in eval mode; transformers' decoder layers skip gradient checkpointing in eval
    # mode without a word, so before this fix Abl0.1's trainer.gradient_checkpointing=true recomputed nothing.
    from nli_cot.models.modeling import attach_lora, load_base_model, load_tokenizer
    from nli_cot.training.fastpath import decoder_layers
    from nli_cot.training.module import NliCotModule

    cfg = compose(["+experiment=abl0_1", "model=tiny_mistral"])
    assert cfg.trainer.gradient_checkpointing
    tok = load_tokenizer(cfg.model)
    model = attach_lora(load_base_model(cfg.model, tok, for_training=True, gradient_checkpointing=True), cfg.lora)
    layers = decoder_layers(model)
    calls = [0]
    for layer in layers:
        layer.self_attn.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    x = torch.randint(0, 1000, (2, 16))

    def attention_calls_per_step() -> int:
        calls[0] = 0
        model(input_ids=x, labels=x).loss.backward()
        return calls[0]

    assert attention_calls_per_step() == len(layers)  # as loaded: no recompute
    NliCotModule(model, cfg.optimizer).on_fit_start()
    assert all(m.training for m in model.modules())
    assert attention_calls_per_step() == 2 * len(layers)  # forward + the backward's recompute
