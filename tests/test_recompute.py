"""``trainer.recompute_down_proj=false``: each checkpoint ends before the MLP's frozen down projection.

The lever is only worth having if it changes nothing but the work: the same loss and LoRA gradients as
transformers' whole-layer checkpointing and as no checkpoint at all (dropout on, so the recompute must draw the same
masks), one down-projection matmul fewer per layer and step, compiled or not, and every other call (eval, no-grad, layers left unchecked, a LoRA on down_proj, an
unknown architecture) on the layer's own forward."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from nli_cot.training import fastpath
from nli_cot.training.data import collate_padding_free, tokenize_records

RECORDS = [
    {"id": "a", "premise": "A man plays a guitar on a stage.", "hypothesis": "A man performs music.",
     "thought_process": "Playing a guitar on a stage is performing music.", "label": 1},
    {"id": "b", "premise": "Two dogs run through the snow.", "hypothesis": "The animals are asleep.",
     "thought_process": "Running dogs are awake.", "label": 0},
]


@pytest.fixture(scope="module")
def batch(mistral_tokenizer):
    examples = tokenize_records(RECORDS, mistral_tokenizer, compose(["prompt=card"]).prompt, 512, False).examples
    return collate_padding_free(examples)


def _model(tiny_model_cfg, mistral_tokenizer, lora_overrides=(), checkpointing=True):
    from nli_cot.models.modeling import attach_lora, load_base_model

    torch.manual_seed(0)
    base = load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True,
                           gradient_checkpointing=checkpointing)
    model = attach_lora(base, compose(["lora=default", *lora_overrides]).lora)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter so their gradients are compared too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.train()  # dropout on: the recompute must draw the same masks as the first pass


def _loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(123)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss), grads


def _calls(model, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for layer in fastpath.decoder_layers(model):
        for name in names:
            module = layer.mlp.get_submodule(name) if hasattr(layer.mlp, name) else layer.self_attn.get_submodule(name)

            def hook(*_, _name=name):
                counts[_name] += 1

            module.register_forward_hook(hook)
    return counts


def test_the_split_checkpoint_gives_the_whole_layer_checkpoints_loss_and_gradients(
    tiny_model_cfg, mistral_tokenizer, batch
) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer)
    want_loss, want = _loss_and_grads(model, batch)
    assert fastpath.recompute_before_down_proj(model) == 2
    got_loss, got = _loss_and_grads(model, batch)
    assert got_loss == want_loss
    assert want.keys() == got.keys() and len(want) == 2 * 4 * 2  # 2 layers x q,k,v,o x A,B
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    plain = _model(tiny_model_cfg, mistral_tokenizer, checkpointing=False)  # and no checkpoint at all: the same
    plain_loss, plain_grads = _loss_and_grads(plain, batch)
    assert plain_loss == want_loss
    for name in want:
        torch.testing.assert_close(plain_grads[name], got[name], rtol=0, atol=0, msg=name)


def _down_shaped_matmuls(model, batch) -> int:
    """Matmuls of a [tokens, intermediate] x [intermediate, hidden] shape in one training step (the second, after
    compiling): the down projection's forward and its recomputes, plus the gate's and up's backward to their input.

    Counted with the profiler, which (unlike a TorchDispatchMode, under which torch.compile runs eagerly) sees the
    compiled graphs' own ops."""
    from torch.profiler import ProfilerActivity, profile

    config = fastpath.base_model(model).config
    _loss_and_grads(model, batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _loss_and_grads(model, batch)
    shape = [config.intermediate_size, config.hidden_size]
    return sum(
        1 for e in prof.events()
        if e.name == "aten::mm" and e.input_shapes[1] == shape and e.input_shapes[0][-1:] == shape[:1]
    )


@pytest.fixture
def eager_backend_compile(monkeypatch):
    """torch.compile through AOTAutograd without inductor (fast on CPU; the same graphs, run op by op)."""
    import torch._dynamo

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "aot_eager"}))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_the_recompute_skips_the_down_projection_compiled_or_not(
    tiny_model_cfg, mistral_tokenizer, batch, eager_backend_compile
) -> None:
    """Per layer and step, the whole-layer checkpoint runs 4 down-shaped matmuls (down forward, down again in the
    recompute, gate and up backward), the split 3: eagerly (transformers' own checkpoint: its early stop cannot end
    the recompute before down, because the frozen matmul saves its transposed weight, which counts as a saved
    tensor) and compiled (a checkpoint around a compiled layer, where compile_decoder_layers places it, reruns
    all of it)."""
    whole = _model(tiny_model_cfg, mistral_tokenizer)
    assert _down_shaped_matmuls(whole, batch) == 2 * 4
    fastpath.compile_decoder_layers(whole)
    assert _down_shaped_matmuls(whole, batch) == 2 * 4
    split = _model(tiny_model_cfg, mistral_tokenizer)
    fastpath.recompute_before_down_proj(split)
    assert _down_shaped_matmuls(split, batch) == 2 * 3
    fastpath.compile_decoder_layers(split)
    assert _down_shaped_matmuls(split, batch) == 2 * 3


def test_eval_and_no_grad_forwards_run_the_layers_own_forward(tiny_model_cfg, mistral_tokenizer, batch) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer)
    fastpath.recompute_before_down_proj(model)
    model.eval()
    with torch.no_grad():
        want = model(**batch).logits
    counts = _calls(model, ("down_proj",))
    layer = fastpath.decoder_layers(model)[0]
    calls = []
    layer.forward.pre_down = lambda *a, **k: calls.append(1) or fastpath._pre_down(*a, **k)
    with torch.no_grad():
        got = model(**batch).logits
    assert calls == [] and counts == {"down_proj": 2}
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    model.train()
    with torch.no_grad():  # training mode without gradients: nothing to recompute, so no checkpoint either
        model(**batch)
    assert calls == []
    model(**batch).loss.backward()
    assert calls == [1, 1]  # the forward and the recompute of layer 0


def test_arguments_by_position_keep_a_whole_layer_checkpoint(tiny_model_cfg, mistral_tokenizer) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer)
    fastpath.recompute_before_down_proj(model)
    layer = fastpath.decoder_layers(model)[0]
    config = fastpath.base_model(model).config
    hidden = torch.randn(1, 5, config.hidden_size, requires_grad=True)
    rotary = fastpath.base_model(model).model.rotary_emb
    position_ids = torch.arange(5)[None]
    cos_sin = rotary(hidden, position_ids)
    torch.manual_seed(0)
    want = type(layer).forward(layer, hidden, None, position_ids, position_embeddings=cos_sin)
    saved = []  # tensors saved outside a checkpoint (inside one, the checkpoint's own hooks take them)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = layer(hidden, None, position_ids, position_embeddings=cos_sin)  # mask and positions by position
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    inputs = (hidden, position_ids, *cos_sin)
    assert saved and all(any(t is x for x in inputs) for t in saved)  # only the checkpoint's own inputs are kept
    got.sum().backward()
    assert hidden.grad is not None


def test_only_checkpointed_layers_are_split(tiny_model_cfg, mistral_tokenizer) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer)
    assert fastpath.limit_checkpointed_layers(model, 1) == 1
    assert fastpath.recompute_before_down_proj(model) == 1
    kinds = [isinstance(layer.__dict__.get("forward"), fastpath.RecomputeBeforeDown)
             for layer in fastpath.decoder_layers(model)]
    assert kinds == [True, False]
    assert fastpath.recompute_before_down_proj(_model(tiny_model_cfg, mistral_tokenizer, checkpointing=False)) == 0


def test_a_lora_on_down_proj_keeps_the_whole_layer_checkpoint(tiny_model_cfg, mistral_tokenizer, caplog) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer,
                   ["lora.target_modules=[q_proj,k_proj,v_proj,o_proj,down_proj]"])
    with caplog.at_level("WARNING"):
        assert fastpath.recompute_before_down_proj(model) == 0
    assert "its down projection trains" in caplog.text
    assert all(layer.gradient_checkpointing for layer in fastpath.decoder_layers(model))


def test_an_unknown_layer_type_is_named(tiny_model_cfg, mistral_tokenizer) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer)
    layer = fastpath.decoder_layers(model)[0]
    assert fastpath.split_problem(layer) is None
    layer.__class__ = type("GemmaLikeDecoderLayer", (type(layer),), {})
    assert "GemmaLikeDecoderLayer is not one of the known layer types" in fastpath.split_problem(layer)


def test_the_trainer_option_applies_the_split(tiny_model_cfg, mistral_tokenizer) -> None:
    model = _model(tiny_model_cfg, mistral_tokenizer)
    trainer = compose(["+experiment=abl0_1", "trainer.recompute_down_proj=false", "trainer.accelerator=cpu"]).trainer
    applied = fastpath.apply_training_levers(model, trainer)
    assert applied["checkpointed_layers"] == 2 and applied["split_before_down_proj"] == 2
    trainer = compose(["+experiment=abl0_1", "trainer.accelerator=cpu"]).trainer
    assert "split_before_down_proj" not in fastpath.apply_training_levers(
        _model(tiny_model_cfg, mistral_tokenizer), trainer)


def test_compiled_parts_are_shared_by_every_layer(
    tiny_model_cfg, mistral_tokenizer, batch, eager_backend_compile
) -> None:
    """One compiled ``_pre_down`` for all layers (regional compilation): the second layer reuses the first's graph,
    and the compiled split gives the uncompiled whole layer's loss and gradients."""
    import torch._dynamo

    model = _model(tiny_model_cfg, mistral_tokenizer)
    fastpath.recompute_before_down_proj(model)
    assert fastpath.compile_decoder_layers(model) == 2
    parts = {(layer.forward.pre_down, layer.forward.full) for layer in fastpath.decoder_layers(model)}
    assert len(parts) == 1
    want_loss, want = _loss_and_grads(_model(tiny_model_cfg, mistral_tokenizer), batch)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got_loss, got = _loss_and_grads(model, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)


def test_compiling_keeps_the_whole_layer_checkpoint_outside_the_compiled_graph(
    tiny_model_cfg, mistral_tokenizer, batch, eager_backend_compile, monkeypatch
) -> None:
    """transformers 5.24 checkpoints a layer's ``forward``, inside ``layer.compile()``'s graph, which torch 2.11's
    inductor failed to compile on the GPU (the shipped Abl0.1 path). ``compile_decoder_layers`` gives each checkpointed
    layer an eager checkpoint around one shared compiled forward instead: one checkpoint call per layer per forward,
    the same loss and gradients as the uncompiled model, and no recompile from one layer to the next."""
    import torch._dynamo

    want_loss, want = _loss_and_grads(_model(tiny_model_cfg, mistral_tokenizer), batch)
    model = _model(tiny_model_cfg, mistral_tokenizer)
    assert fastpath.compile_decoder_layers(model) == 2
    layers = fastpath.decoder_layers(model)
    assert all(type(layer.__dict__["forward"]) is fastpath.RecomputeLayer for layer in layers)
    assert not any(layer.gradient_checkpointing for layer in layers)  # transformers' own would checkpoint again
    assert len({layer.forward.full for layer in layers}) == 1
    calls = []
    real = fastpath.checkpoint
    monkeypatch.setattr(fastpath, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    with torch._dynamo.config.patch(error_on_recompile=True):
        got_loss, got = _loss_and_grads(model, batch)
    assert calls == [layers[0].forward.full] * 2
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    model.eval()
    with torch.no_grad():  # eval: the compiled forward without a checkpoint
        model(**batch)
    assert len(calls) == 2


def test_no_checkpoint_lands_inside_a_compiled_graph(tiny_model_cfg, mistral_tokenizer, batch, monkeypatch) -> None:
    """The pinned transformers (5.24) checkpoints a layer's ``forward``, so ``layer.compile()`` traces the checkpoint
    into its graph: the graph torch 2.11's inductor failed on (GPU, 2026-12-07, SPEED.md seventh set). After
    ``compile_decoder_layers`` no graph holds one, whatever the transformers version."""
    import torch._dynamo

    graphs = []  # every graph dynamo hands a backend, run as traced (no AOT, no inductor)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn=None, *a, **kw: real_compile(
        fn, *a, **{**kw, "backend": lambda gm, _inputs: graphs.append(gm) or gm.forward}))

    def checkpoints() -> list[int]:  # activation-checkpoint regions per graph
        return [sum("checkpoint" in str(node.target) for node in g.graph.nodes) for g in graphs]

    torch._dynamo.reset()
    control = _model(tiny_model_cfg, mistral_tokenizer)
    if hasattr(type(fastpath.decoder_layers(control)[0]).forward, "__wrapped__"):  # transformers >= 5.2x
        for layer in fastpath.decoder_layers(control):
            layer.compile(dynamic=True)
        _loss_and_grads(control, batch)
        assert graphs and all(c > 0 for c in checkpoints())  # the hazard this guards against is real here
    graphs.clear()
    torch._dynamo.reset()
    model = _model(tiny_model_cfg, mistral_tokenizer)
    fastpath.compile_decoder_layers(model)
    _loss_and_grads(model, batch)
    assert graphs and checkpoints() == [0] * len(graphs)
    torch._dynamo.reset()
