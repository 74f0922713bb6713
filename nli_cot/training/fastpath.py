"""Speed levers for training and decoding that leave the method unchanged (same 4-bit base, LoRA, optimiser, loss).

Features
- ``nli_varlen`` attention (``trainer.packed_attention=varlen``): padding-free rows are attended with the
  variable-length FlashAttention-2 kernel that ships inside PyTorch (``aten._flash_attention_forward`` with
  cumulative sequence lengths; grouped KV heads handled by the kernel). No 4-D mask is built, nothing recompiles
  when the row length changes, and examples in a row cannot see each other. The collator passes the boundaries
  (``cu_seq_lens_q``, ``max_length_q``) so no device sync is needed. On the first CUDA call the kernel is checked
  against per-example sdpa (forward and gradients); if the check fails, or off CUDA, per-example sdpa is used.
- ``completion_loss`` (``trainer.loss_impl=chunked``): the same token-mean cross-entropy over completion tokens,
  but the output layer and the fp32 softmax run only at the positions whose next token carries a label, in
  checkpointed chunks, so full-vocabulary logits for prompt tokens are never built and at most one chunk of
  fp32 logits is alive at a time.
- ``limit_checkpointed_layers`` (``trainer.checkpoint_layers=N``): with gradient checkpointing on, only the first
  N decoder layers recompute; the others keep their activations (trades memory for speed, same gradients).
- ``recompute_before_down_proj`` (``trainer.recompute_down_proj=false``): with gradient checkpointing on, each
  layer's checkpoint ends before the MLP's down projection, which runs outside it. That projection is frozen (no
  LoRA), so its backward needs only its weight, never its input or output, and nothing is saved for it; the
  recompute in the backward never runs it: 27% of a Mistral layer's GEMM FLOPs (1 of the 3 MLP matrices), with the
  same gradients (the same ops in the same order, the same dropout draws) and the same saved tensor (the layer
  input). transformers' whole-layer checkpoint reruns it: eagerly, the checkpoint's early stop ends the recompute
  only at the last saved tensor, and a frozen ``nn.Linear`` saves its transposed weight (bitsandbytes' 4-bit matmul
  saves nothing, so there it would stop in time); around a compiled layer (where ``compile_decoder_layers`` places
  the checkpoint) the recompute is one compiled call and runs all of it. The split holds in every case (tests/test_recompute.py
  counts the matmuls).
- ``compile_decoder_layers`` (``trainer.compile=true``): ``torch.compile`` of each decoder layer (regional: one
  compiled graph shared by all layers, dynamic row length). A checkpointed layer gets its checkpoint from
  ``RecomputeLayer``, eager and around the compiled forward, whatever the transformers version (5.24 would put
  transformers' own inside the compiled graph, which torch 2.11's inductor fails to compile).
- CUDA graphs (``trainer.compile_mode=reduce-overhead`` with ``trainer.row_bucket``): the compiled layers' forward
  and backward are recorded once per row length and replayed as one launch each (CUDA graph trees), so the host's
  ~25k launches per step stop starving the GPU. The 4-bit weights' quantisation state is marked as a static address
  (it never moves), so replays copy nothing in. Each training step tells the trees a new step begins. No-grad
  forwards (eval loss) and generation run the layers eagerly: see ``eager_without_grad`` and
  ``generation_attention``.
- ``grouped_sdpa`` attention (``sdpa_grouped``) for decoding with a padded KV cache: grouped query heads attend
  their shared KV head without ``repeat_kv`` copying the whole cache 4x every step (sdpa only skips that copy
  when there is no mask, and batched decoding always has one).

Limits
- ``nli_varlen`` is for training/eval forwards on padding-free rows; without ``cu_seq_lens_q`` it is plain causal
  sdpa (right for unpadded or right-padded rows, wrong for left-padded generation: never use it to generate).
- CUDA graphs: CUDA only; for training steps only (eval forwards and decoding run uncompiled, so slower than with
  compile_mode=default); not with gradient checkpointing (checked in nli_cot.training.train.validate); each new
  row length costs one eager warm-up and one recording, and the recorded graphs keep their own memory pool.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

VARLEN_ATTENTION = "nli_varlen"
GROUPED_SDPA = "sdpa_grouped"
IGNORE_INDEX = -100

# None: not checked yet; True/False: result of the first CUDA self-check of the flash varlen kernel.
_FLASH_VARLEN_OK: bool | None = None
FLASH_VARLEN_CHECK: dict[str, Any] = {}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# Keys the collators add beside the model's inputs (loss positions and weights, a short step's gradient scale, the
# row-bucket padding count): every forward leaves them out of the model's keyword arguments.
COLLATOR_EXTRAS = ("loss_index", "loss_target", "loss_weight", "grad_scale", "row_padding")


# ------------------------------------------------------------------------------------------- packed batches
def packed_boundaries(lengths: list[int]) -> dict[str, Any]:
    """Cumulative sequence lengths of the examples in one padding-free row, as the attention kwargs expect."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    # An upper bound, not the exact longest: the kernel only sizes its grid by it, and a constant (512 for the
    # card's rows) keeps torch.compile from specialising on every batch's longest example.
    longest = max(512, 1 << (max(lengths) - 1).bit_length()) if lengths else 512
    return {"cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t, "max_length_q": longest, "max_length_k": longest}


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices t (into batch x length) whose next token carries a label, and those labels (CPU, collator)."""
    nxt = labels[:, 1:]
    keep = nxt != IGNORE_INDEX
    rows, cols = keep.nonzero(as_tuple=True)
    index = rows * labels.shape[1] + cols
    return index, nxt[keep]


def micro_batch_loss_weights(
    index: torch.Tensor, width: int, lengths: list[int], micro_size: int, padding_free: bool,
    token_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weights of the loss positions ``index`` that make one fused batch compute gradient accumulation's loss.

    Accumulating ``m`` micro-batches of ``micro_size`` examples averages their token-mean losses; one forward over
    all ``m * micro_size`` examples gives the same loss (and gradients) with weight 1 / (m * n_i) on each loss
    token of micro-batch i, whose loss-token count is n_i. With ``token_weight`` (one per position, see
    nli_cot.training.loss_weights) each micro-batch's loss is the weighted token mean: w_t / (m * sum of w in i).
    """
    if padding_free:
        example_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        example = example_of[index]
    else:
        example = index // width
    micro = example // micro_size
    m = (len(lengths) + micro_size - 1) // micro_size
    if token_weight is not None:
        totals = torch.bincount(micro, weights=token_weight.to(torch.float64), minlength=m).to(torch.float32)
        return token_weight.to(torch.float32) / (totals[micro] * m)
    counts = torch.bincount(micro, minlength=m).to(torch.float32)
    return 1.0 / (counts[micro] * m)


def fused_grad_scale(n_examples: int, micro_size: int, accum: int) -> float | None:
    """Factor on a fused step's loss before backward so its gradients equal Lightning's accumulation, or None.

    Lightning divides every micro-batch loss by ``accum``, also on an epoch's short last step that holds fewer
    micro-batches; the fused loss is the mean over the micro-batches present, so that step needs present / accum.
    """
    present = (n_examples + micro_size - 1) // micro_size
    return present / accum if present < accum else None


# ------------------------------------------------------------------------------------------ varlen attention
class _FlashVarlen(torch.autograd.Function):
    """Causal varlen FlashAttention-2 (PyTorch's bundled kernel); q [T, Hq, D], k/v [T, Hk, D], Hq % Hk == 0."""

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len, scale):
        out, lse, _, _, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale
        )
        # The philox seed/offset it returns are not kept: without dropout the backward never reads them, and they
        # are host tensors outside CUDA-graph capture but device tensors inside it; the backward gets placeholders.
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.max_len, ctx.scale = max_len, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu = ctx.saved_tensors
        rng = torch.empty(2, dtype=torch.uint64, device=q.device)  # placeholders: read only with dropout > 0
        unused = torch.empty((), dtype=torch.uint64, device=q.device)
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(),
            q,
            k,
            v,
            out,
            lse,
            cu,
            cu,
            ctx.max_len,
            ctx.max_len,
            0.0,
            True,
            rng,
            unused,
            scale=ctx.scale,
        )
        return dq, dk, dv, None, None, None


def _segments_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float | None):
    """Reference / fallback: causal sdpa per example. q [T, Hq, D], k/v [T, Hk, D] -> [T, Hq, D]."""
    groups = q.shape[1] // k.shape[1]
    outs = []
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        if groups > 1:
            ks = ks.repeat_interleave(groups, dim=1)
            vs = vs.repeat_interleave(groups, dim=1)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, dim=0)


def _flash_varlen_ok(device: torch.device) -> bool:
    """Check the kernel once against per-example sdpa in fp64 (forward and all three gradients)."""
    global _FLASH_VARLEN_OK
    if _FLASH_VARLEN_OK is not None:
        return _FLASH_VARLEN_OK
    try:
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            errs = _flash_varlen_errors(device)
        FLASH_VARLEN_CHECK.update({"rel_err_out_dq_dk_dv": errs})
        _FLASH_VARLEN_OK = all(math.isfinite(e) and e < 2e-2 for e in errs)
    except Exception as err:  # kernel missing in this build, wrong signature...
        FLASH_VARLEN_CHECK.update({"error": f"{type(err).__name__}: {err}"[:500]})
        _FLASH_VARLEN_OK = False
    FLASH_VARLEN_CHECK["ok"] = _FLASH_VARLEN_OK
    if not _FLASH_VARLEN_OK:
        log.warning(
            "flash varlen attention unavailable or wrong here (%s): using per-example sdpa",
            FLASH_VARLEN_CHECK,
        )
    return _FLASH_VARLEN_OK


def _flash_varlen_errors(device: torch.device) -> list[float]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    lengths = [37, 200, 1, 91]
    cu = packed_boundaries(lengths)["cu_seq_lens_q"].to(device)
    total = sum(lengths)
    q, k, v = (
        torch.randn(total, h, 128, generator=gen).to(device, torch.bfloat16).requires_grad_()
        for h in (8, 2, 2)
    )
    g = torch.randn(total, 8, 128, generator=gen).to(device, torch.bfloat16)
    scale = 128**-0.5
    out = _FlashVarlen.apply(q, k, v, cu, 512, scale)
    grads = torch.autograd.grad(out, (q, k, v), g)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _segments_sdpa(q64, k64, v64, cu.tolist(), scale)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), g.double())
    return [
        float(((a.double() - b).norm() / b.norm()).detach())
        for a, b in zip((out, *grads), (ref, *ref_grads), strict=True)
    ]


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: query [B, Hq, L, D] -> [B, L, Hq, D]."""
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    if q.is_cuda and _flash_varlen_ok(q.device):
        if cu.device != q.device:
            cu = cu.to(q.device, non_blocking=True)
        dtype = q.dtype
        if dtype not in (torch.float16, torch.bfloat16):  # fp32 norms (k-bit upcast) feed fp32 q/k/v
            half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            q, k, v = q.to(half), k.to(half), v.to(half)
        out = _FlashVarlen.apply(q, k, v, cu.to(torch.int32), int(max_len), scaling).to(dtype)
    else:
        out = _segments_sdpa(q, k, v, cu.tolist(), scaling)
    return out.unsqueeze(0), None


# -------------------------------------------------------------------------------------- grouped-query sdpa
def grouped_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa where each KV head serves its group of query heads by folding the group into the query length.

    q [B, Hkv*G, L, D] -> [B, Hkv, G*L, D]; mask [B, 1, L, S] -> [B, 1, G*L, S]. Same result as repeat_kv + sdpa,
    without materialising K and V G times (the whole static cache, every layer, every decode step).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if groups == 1 or attention_mask is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    b, hq, lq, d = query.shape
    hkv = key.shape[1]
    q = query.reshape(b, hkv, groups * lq, d)
    mask = attention_mask
    if mask.shape[1] != 1:
        raise ValueError("grouped sdpa expects a mask broadcast over heads")
    mask = (
        mask[:, :, None]
        .expand(mask.shape[0], 1, groups, lq, mask.shape[-1])
        .reshape(mask.shape[0], 1, groups * lq, mask.shape[-1])
    )
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    out = out.reshape(b, hq, lq, d).transpose(1, 2).contiguous()
    return out, None


def register_attention() -> None:
    """Make ``nli_varlen`` and ``sdpa_grouped`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention_forward)
    try:  # the grouped variant needs the same padding masks sdpa gets
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_SDPA, sdpa_mask)
    except ImportError:  # pragma: no cover - older transformers
        pass


def set_attention(model: torch.nn.Module, name: str) -> None:
    """Switch a loaded (possibly PEFT-wrapped) model's attention implementation."""
    register_attention()
    base = base_model(model)
    if hasattr(base, "set_attn_implementation"):
        try:
            base.set_attn_implementation(name)
            return
        except (ValueError, ImportError, TypeError) as err:
            log.debug("set_attn_implementation(%s) refused (%s); setting the config", name, err)
    base.config._attn_implementation = name


# ------------------------------------------------------------------------------------------------- the loss
def _ce_sum(lm_head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden)
    return F.cross_entropy(logits.float(), target, reduction="sum")


def _ce_weighted(lm_head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
    logits = lm_head(hidden)
    return (F.cross_entropy(logits.float(), target, reduction="none") * weight).sum()


def completion_loss(model: torch.nn.Module, batch: dict[str, Any], chunk_tokens: int = 2048) -> torch.Tensor:
    """Token-mean cross-entropy over completion tokens, logits only where a label follows, in chunks.

    Uses ``loss_index``/``loss_target`` from the collator when present (no device sync), else derives them.
    With ``loss_weight`` (a fused batch of several micro-batches, see ``micro_batch_loss_weights``) the loss is
    the weighted sum, i.e. the mean of the micro-batches' token-mean losses, as gradient accumulation computes it.
    """
    base = base_model(model)
    index, target = batch.get("loss_index"), batch.get("loss_target")
    if index is None:
        index, target = loss_positions(batch["labels"])
    skip = ("labels", "token_weight", *COLLATOR_EXTRAS)
    inputs = {k: v for k, v in batch.items() if k not in skip}
    hidden = base.model(**inputs, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index.to(hidden.device))
    target = target.to(hidden.device)
    weight = batch.get("loss_weight")
    n = target.numel()
    if n == 0:
        return hidden.sum() * 0.0
    total = None
    for start in range(0, n, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if weight is None:
            value = checkpoint(_ce_sum, base.lm_head, hidden[part], target[part], use_reentrant=False)
        else:
            w = weight[part].to(hidden.device)
            value = checkpoint(_ce_weighted, base.lm_head, hidden[part], target[part], w, use_reentrant=False)
        total = value if total is None else total + value
    return total / n if weight is None else total


# ------------------------------------------------------------------------------------ checkpointing, compile
def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = base_model(model)
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers in {type(base).__name__}")
    return list(layers)


def limit_checkpointed_layers(model: torch.nn.Module, n: int | None) -> int:
    """Keep gradient checkpointing on the first ``n`` decoder layers only; returns how many recompute."""
    layers = decoder_layers(model)
    if n is None:
        return sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)
    for i, layer in enumerate(layers):
        if i >= n:
            layer.gradient_checkpointing = False
    return sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)


# Decoder layers and MLPs whose forward is exactly ``h = x + attn(norm1(x)); out = h + down(act(gate(n)) * up(n))``
# with ``n = norm2(h)`` (transformers 5.x, checked in tests/test_recompute.py against the class's own forward). Other
# architectures keep the whole-layer recompute.
SPLIT_LAYER_TYPES = ("MistralDecoderLayer", "LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")
SPLIT_MLP_TYPES = ("MistralMLP", "LlamaMLP", "Qwen2MLP", "Qwen3MLP")
_CACHE_KWARGS = ("past_key_values", "cache", "layer_past")


def _pre_down(layer: torch.nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder layer's forward up to its MLP's down projection: (the post-attention residual, down's input)."""
    residual = hidden_states
    hidden_states, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
    hidden_states = residual + hidden_states
    normed = layer.post_attention_layernorm(hidden_states)
    mlp = layer.mlp
    return hidden_states, mlp.act_fn(mlp.gate_proj(normed)) * mlp.up_proj(normed)


def _layer_forward(layer: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """The layer class's own forward (compiled once for all layers when compile is on)."""
    return type(layer).forward(layer, hidden_states, *args, **kwargs)


class RecomputeLayer:
    """The forward of a checkpointed decoder layer, with the checkpoint placed here: eager, around the layer.

    ``compile_decoder_layers`` installs it on every checkpointed layer, so that the checkpoint sits outside the
    compiled graph whatever the transformers version. transformers 5.17 checkpoints ``__call__`` (outside a
    ``layer.compile()``); 5.24 checkpoints ``forward``, i.e. inside the compiled region, where torch 2.11's
    inductor fails on the shipped Abl0.1 path (``AssertionError: Node add_... was invalid, but is output``, an H100,
    2026-12-07, SPEED.md). In a training forward with gradients on, the layer runs under a non-reentrant checkpoint
    (only the layer input is kept; the RNG state too, so the recompute draws the same dropout masks), as
    transformers' own does. Any other call (eval, generation) runs the class's forward. ``full`` (and
    ``pre_down``) become compiled functions when the layers are compiled."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer
        self.pre_down: Any = _pre_down
        self.full: Any = _layer_forward

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        layer = self.layer
        if not (layer.training and torch.is_grad_enabled()):
            return self.full(layer, hidden_states, *args, **kwargs)
        if kwargs.get("use_cache"):  # as transformers' own checkpointing does: no cache under recompute
            kwargs["use_cache"] = False
        for key in _CACHE_KWARGS:
            if kwargs.get(key) is not None:
                kwargs[key] = None
        return self.recompute(hidden_states, *args, **kwargs)

    def recompute(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self.full, self.layer, hidden_states, *args, use_reentrant=False, **kwargs)


class RecomputeBeforeDown(RecomputeLayer):
    """A ``RecomputeLayer`` whose gradient checkpoint ends before the MLP's down projection.

    ``_pre_down`` runs under the checkpoint; then the frozen down projection and the residual add run outside it:
    neither saves an activation, so the backward's recompute stops at the projection's input. Arguments given by
    position (transformers passes them by name) get the whole-layer checkpoint instead."""

    def recompute(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args:  # arguments by position: their names are unknown here, so the whole layer is checkpointed
            return super().recompute(hidden_states, *args, **kwargs)
        residual, gated = checkpoint(self.pre_down, self.layer, hidden_states, use_reentrant=False, **kwargs)
        return residual + self.layer.mlp.down_proj(gated)


def split_problem(layer: torch.nn.Module) -> str | None:
    """Why ``layer`` can't end its checkpoint before the down projection, or None."""
    if type(layer).__name__ not in SPLIT_LAYER_TYPES:
        return f"{type(layer).__name__} is not one of the known layer types ({', '.join(SPLIT_LAYER_TYPES)})"
    mlp = getattr(layer, "mlp", None)
    if type(mlp).__name__ not in SPLIT_MLP_TYPES:
        return f"its MLP {type(mlp).__name__} is not one of {', '.join(SPLIT_MLP_TYPES)}"
    down = mlp.down_proj
    if any(p.requires_grad for p in down.parameters()) or hasattr(down, "lora_A"):
        return "its down projection trains (a LoRA target): its backward needs its input, so it must stay inside"
    return None


def recompute_before_down_proj(model: torch.nn.Module) -> int:
    """End the gradient checkpoint of every checkpointed decoder layer before its MLP's down projection (see
    ``RecomputeBeforeDown``); call after LoRA is attached and ``limit_checkpointed_layers``. Returns how many layers
    were split; layers of another shape (``split_problem``) keep the whole-layer recompute, with a warning."""
    split = 0
    for layer in decoder_layers(model):
        if not getattr(layer, "gradient_checkpointing", False):
            continue
        if problem := split_problem(layer):
            log.warning("trainer.recompute_down_proj=false: layer kept whole (%s)", problem)
            continue
        layer.gradient_checkpointing = False  # transformers' own checkpoint would wrap the whole layer again
        layer.forward = RecomputeBeforeDown(layer)
        split += 1
    return split


def compile_decoder_layers(model: torch.nn.Module, dynamic: bool | None = True, mode: str = "default") -> int:
    """``torch.compile`` each decoder layer in place (regional compilation); returns the number compiled.

    ``mode="reduce-overhead"`` adds CUDA graphs (see the module docstring); the model is marked so that
    ``graph_step_begin`` and ``generation_attention`` know.
    """
    layers = decoder_layers(model)
    if mode == "reduce-overhead":
        # Python floats the layers read (LoRA's alpha / r scaling) are otherwise traced as 0-dim host float64 inputs
        # and copied by a host kernel, which CUDA graph capture hands device memory (a segfault on the device, 4 per
        # layer: q, k, v, o). They are constants of a run: specialise them. Process-wide dynamo setting.
        torch._dynamo.config.specialize_float = True
    compiled_parts: tuple[Any, Any] | None = None
    for layer in layers:
        if getattr(layer, "gradient_checkpointing", False):  # keep the checkpoint out of the compiled graph
            layer.gradient_checkpointing = False  # (RecomputeLayer says why); transformers' would wrap it again
            layer.forward = RecomputeLayer(layer)
        recompute = layer.__dict__.get("forward")
        if isinstance(recompute, RecomputeLayer):  # compile its parts; the checkpoint around them stays eager
            if compiled_parts is None:  # one compiled function each, shared by every layer (regional compilation)
                compiled_parts = (torch.compile(_pre_down, dynamic=dynamic), torch.compile(_layer_forward, dynamic=dynamic))
            recompute.pre_down, recompute.full = compiled_parts
            continue
        layer.compile(dynamic=dynamic, mode=None if mode == "default" else mode)
    if mode == "reduce-overhead":
        base = base_model(model)
        base._nli_cuda_graphs = True
        mark_quant_states_static(model)
    return len(layers)


def mark_quant_states_static(model: torch.nn.Module) -> int:
    """Mark the CUDA tensors of every 4-bit weight's quantisation state (absmax, code, offset, nested state) as
    static addresses, so CUDA graphs read them in place instead of copying them in before each replay. They are not
    parameters (bitsandbytes keeps them on a plain object), so torch would otherwise treat them as changing inputs.
    Returns how many were marked."""
    marked = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:
            for name in ("absmax", "code", "offset"):
                tensor = getattr(state, name, None)
                if torch.is_tensor(tensor) and tensor.is_cuda:
                    torch._dynamo.mark_static_address(tensor, guard=False)
                    marked += 1
            state = getattr(state, "state2", None)
    return marked


def uses_cuda_graphs(model: torch.nn.Module) -> bool:
    base = base_model(model)
    return bool(getattr(base, "_nli_cuda_graphs", False))


def eager_without_grad(model: torch.nn.Module) -> Any:
    """A context that runs the compiled layers eagerly in a no-grad forward (eval loss, probes) when they are CUDA
    graphs. Without a backward pending, CUDA graph trees start a new iteration at every compiled call and free the
    previous call's output, which is the next layer's input; with gradients on, the pending backward keeps a step
    whole. A no-op otherwise."""
    if uses_cuda_graphs(model) and not torch.is_grad_enabled():
        return torch.compiler.set_stance("force_eager")
    return nullcontext()


def graph_step_begin(model: torch.nn.Module) -> None:
    """Tell CUDA graph trees that a new training step begins (its outputs may reuse the last step's memory); a
    no-op without CUDA graphs."""
    if uses_cuda_graphs(model):
        torch.compiler.cudagraph_mark_step_begin()


def trains_on_cuda(trainer_cfg: Any) -> bool:
    """Whether Lightning will put the model on a CUDA device (``accelerator=cpu`` on a GPU machine: no)."""
    accelerator = str(getattr(trainer_cfg, "accelerator", "auto")).lower()
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def apply_training_levers(model: torch.nn.Module, trainer_cfg: Any) -> dict[str, Any]:
    """Apply the ``trainer.*`` speed options to a freshly built PEFT model; returns what was applied.

    The CUDA-only levers resolve to what the device supports, so one config (the ablations' default) runs
    everywhere: off CUDA, ``compile`` is skipped (inductor on CPU compiles for minutes and gained nothing measured)
    and varlen attention runs example by example through sdpa (same results, see tests/test_packing.py).
    """
    applied: dict[str, Any] = {}
    cuda = trains_on_cuda(trainer_cfg)
    resolved: list[str] = []
    if getattr(trainer_cfg, "packed_attention", "model") == "varlen":
        if not trainer_cfg.padding_free:
            raise ValueError("trainer.packed_attention=varlen needs trainer.padding_free=true")
        set_attention(model, VARLEN_ATTENTION)
        applied["attention"] = VARLEN_ATTENTION
        if cuda:  # check the kernel now, eagerly, not inside a compiled or no-grad region
            applied["flash_varlen_ok"] = _flash_varlen_ok(torch.device("cuda", torch.cuda.current_device()))
        else:
            resolved.append("packed_attention=varlen runs per-example sdpa")
    if trainer_cfg.gradient_checkpointing:
        applied["checkpointed_layers"] = limit_checkpointed_layers(
            model, getattr(trainer_cfg, "checkpoint_layers", None)
        )
        if not getattr(trainer_cfg, "recompute_down_proj", True):
            applied["split_before_down_proj"] = recompute_before_down_proj(model)
    if getattr(trainer_cfg, "compile", False):
        if cuda:
            mode = getattr(trainer_cfg, "compile_mode", "default")
            applied["compiled_layers"] = compile_decoder_layers(model, mode=mode)
            applied["compile_mode"] = mode
        else:
            resolved.append("compile is off")
    if resolved:
        applied["without_cuda"] = resolved
        log.info("speed levers without CUDA: %s (same results; both are for CUDA speed)", "; ".join(resolved))
    applied["loss_impl"] = getattr(trainer_cfg, "loss_impl", "model")
    return applied


@contextmanager
def generation_attention(model: torch.nn.Module, name: str = "sdpa") -> Iterator[None]:
    """Decode with ``name`` while the training attention is ``nli_varlen``, which builds no padding mask and would
    let left-padded prompts attend their padding; restores the training attention afterwards. With CUDA graphs the
    layers run eagerly meanwhile: decoding changes length every token, and each length would record a graph."""
    base = base_model(model)
    current = getattr(base.config, "_attn_implementation", None)
    eager = torch.compiler.set_stance("force_eager") if uses_cuda_graphs(model) else nullcontext()
    if current != VARLEN_ATTENTION:
        with eager:
            yield
        return
    set_attention(model, name)
    try:
        with eager:
            yield
    finally:
        set_attention(model, VARLEN_ATTENTION)
