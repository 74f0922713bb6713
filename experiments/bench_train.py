"""Training-speed benchmark: the model card's stack (TRL SFTTrainer) vs nli_cot's own training path, same machine.

    python experiments/bench_train.py run --side baseline --variant card --model /tmp/m7b --results R.jsonl
    python experiments/bench_train.py run --side nli_cot --variant pf_varlen_ckpt --model /tmp/m7b --results R.jsonl
    python experiments/bench_train.py report --results R.jsonl --out experiments/results/train_h100

Both sides train the same random-weight Mistral-7B-shaped model (experiments/bench_common.py) on the same
tokenised rows (nli_cot's card prompt, completion-only labels, EOS learned), 4-bit NF4 + double quant, LoRA
r16/a32/0.05 on q,k,v,o, paged AdamW 8-bit (lr 2e-4, wd 0.01, cosine, 3% warm-up), batch 16 examples per
optimiser step, bf16 autocast, grad-norm clip 1.0.
- baseline: TRL SFTTrainer as the card ran it: rows right-padded to the longest in the batch, gradient
  checkpointing, peft's prepare_model_for_kbit_training, sdpa, the model's loss over full logits.
- nli_cot: ``NliCotModule`` + Lightning ``Trainer`` built by ``nli_cot.training.train.TrainRecipe`` (the product's code),
  with the variant's ``trainer.*``/``model.*`` overrides (the speed levers, see VARIANTS).
Measured: a callback synchronises the GPU at every step end; step time = interval between step ends (data, forward,
backward, optimiser, logging); the first ``--warmup`` steps are dropped. Real tokens = non-padding tokens.
First-batch loss: the same 16 examples (file order) through each side's model and loss, eval mode, bf16 autocast;
LoRA B starts at zero, so both must equal the base model's loss to bf16 tolerance.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import (  # noqa: E402
    FLOP_PER_TOKEN,
    REPO,
    append,
    env_record,
    fmt,
    gpu_mem,
    read,
    record_failure,
    status_cell,
    write_report,
)

# name -> (description, Hydra overrides on top of the card's settings)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "card_bs16_ckpt": (
        "nli_cot as the card (Abl0.1): padded bs16, grad-ckpt",
        ["trainer.gradient_checkpointing=true"],
    ),
    "card_bs8_nockpt": (
        "nli_cot as the card (Abl0.2/Abl1): padded bs8, no grad-ckpt",
        ["trainer.per_device_batch_size=8", "trainer.gradient_checkpointing=false"],
    ),
    "pf_sdpa_ckpt": (
        "padding-free, sdpa (transformers' packed mask), grad-ckpt",
        ["trainer.padding_free=true", "trainer.gradient_checkpointing=true"],
    ),
    "pf_varlen_ckpt": (
        "padding-free, varlen flash, grad-ckpt",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
        ],
    ),
    "pf_varlen_ckpt_ce": (
        "+ chunked completion-only CE",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.loss_impl=chunked",
        ],
    ),
    "pf_varlen_ckpt_ce_bf16": (
        "+ norms/embeddings kept bf16",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
        ],
    ),
    "pf_varlen_ckpt16_ce_bf16": (
        "+ recompute only 16 of 32 layers",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.checkpoint_layers=16",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
        ],
    ),
    "pf_varlen_nockpt_ce_bf16": (
        "no grad-ckpt at all",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=false",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
        ],
    ),
    "pf_varlen_ckpt_ce_bf16_compile": (
        "+ torch.compile of the decoder layers",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
            "trainer.compile=true",
        ],
    ),
    "pf_varlen_ckpt16_ce_bf16_compile": (
        "+ compile, 16 of 32 layers recompute",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.checkpoint_layers=16",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
            "trainer.compile=true",
        ],
    ),
    "pf_varlen_ckpt_ce_bf16_compile_fused": (
        "+ both micro-batches of an optimiser step in one packed pass (fused grad accumulation)",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
            "trainer.compile=true",
            "trainer.fuse_grad_accum=true",
        ],
    ),
    "pf_varlen_ckpt30_ce_bf16_compile_fused": (
        "+ fused, 30 of 32 layers recompute",
        [
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=true",
            "trainer.checkpoint_layers=30",
            "trainer.loss_impl=chunked",
            "model.upcast_fp32=false",
            "trainer.compile=true",
            "trainer.fuse_grad_accum=true",
        ],
    ),
    "bf16lora_pf_varlen_nockpt_ce": (
        "bf16 LoRA (no quantisation), padding-free, varlen, no ckpt",
        [
            "model.quantization=none",
            "trainer.padding_free=true",
            "trainer.packed_attention=varlen",
            "trainer.gradient_checkpointing=false",
            "trainer.loss_impl=chunked",
        ],
    ),
}


# The product's defaults as a user gets them: `+experiment=<name>` (its trainer=fast levers, fp32 norms), only the
# model/data paths and logging pointed at the bench; a few method-keeping levers on top of a preset.
# name -> (description, experiment preset, extra overrides)
EXPERIMENT_VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "abl0_1_default": ("`+experiment=abl0_1` as shipped (trainer=fast, fp32 norms, bs16 x2, grad-ckpt)", "abl0_1", []),
    "abl1_default": ("`+experiment=abl1` as shipped (trainer=fast, fp32 norms, bs8 x2, no grad-ckpt)", "abl1", []),
    # The memory lever: the two micro-batches of an optimiser step packed as two passes (the card's 16 examples at a
    # time) instead of one 32-example row, which holds twice the activations at once.
    "abl0_1_unfused": ("`+experiment=abl0_1 trainer.fuse_grad_accum=false` (two 16-example passes per step)",
                       "abl0_1", ["trainer.fuse_grad_accum=false"]),
    # The host-overhead lever (SPEED.md, Abl1's profile: ~37 ms of GPU idle behind ~25k launches per step): the
    # compiled layers replayed as CUDA graphs, rows padded to 256-token buckets (2.1% padding on the bench rows).
    "abl1_graphs": ("`+experiment=abl1 trainer.compile_mode=reduce-overhead trainer.row_bucket=256` (CUDA graphs)",
                    "abl1", ["trainer.compile_mode=reduce-overhead", "trainer.row_bucket=256"]),
    # The recompute lever (SPEED.md, Abl0.1's profile: the GEMMs of forward + recompute + backward bound the step):
    # each layer's checkpoint ends before the frozen down projection, so the recompute never runs it.
    "abl0_1_nodown": ("`+experiment=abl0_1 trainer.recompute_down_proj=false` (the recompute skips down_proj)",
                      "abl0_1", ["trainer.recompute_down_proj=false"]),
    "abl1_unfused": ("`+experiment=abl1 trainer.fuse_grad_accum=false` (two 8-example passes per step)",
                     "abl1", ["trainer.fuse_grad_accum=false"]),
}
# The card's stack at each ablation's batch: name -> (description, per-device batch, gradient checkpointing)
BASELINE_VARIANTS: dict[str, tuple[str, int, bool]] = {
    "card": ("card stack (Abl0.1): TRL SFTTrainer, padded bs16 x2, grad-ckpt", 16, True),
    "card_abl1": ("card stack (Abl0.2/Abl1): TRL SFTTrainer, padded bs8 x2, no grad-ckpt", 8, False),
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimes:
    """Per optimiser step: end timestamp and real tokens seen so far (micro-batches add up); losses."""

    def __init__(self) -> None:
        self.begin: list[float] = []
        self.end: list[float] = []
        self.cum: list[int] = []  # real tokens of all micro-batches up to the end of each optimiser step
        self.seen = 0  # real tokens collated so far
        self.rows: list[list[int]] = []
        self.losses: list[float] = []

    def summary(self, warmup: int) -> dict:
        n = len(self.end)
        w = max(1, warmup)
        iv = [self.end[i] - self.end[i - 1] for i in range(w, n)]
        tok = [self.cum[i] - self.cum[i - 1] for i in range(w, n)]
        total = sum(iv)
        rec = {
            "steps_done": n,
            "n_measured_steps": len(iv),
            "step_intervals_s": [round(x, 4) for x in iv],
            "losses": self.losses[:n],
            "batch_shapes": self.rows[:40],
        }
        if iv:
            rec.update(
                median_step_s=statistics.median(iv),
                mean_step_s=total / len(iv),
                steps_per_s=len(iv) / total,
                real_tok_per_step=sum(tok) / len(tok),
                real_tok_per_s=sum(tok) / total,
                first_step_s=self.end[0] - self.begin[0],
            )
        return rec


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a batch, padded or padding-free (less any row-bucket padding), as training logs them."""
    from nli_cot.training.module import count_real_tokens

    return count_real_tokens(batch)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import nli_cot.core.config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def base_overrides(a) -> list[str]:
    """The card's training settings, pointed at the bench model and data, with nothing written but a CSV log."""
    return [
        "model=mistral_7b_v0_3",
        f"model.name_or_path={a.model}",
        "dataset=sample",
        f"dataset.train_path={a.data}",
        f"dataset.eval_path={a.data}",
        "dataset.max_eval_examples=16",
        "dataset.max_seq_length=512",
        "lora=default",
        "optimizer=paged_adamw_8bit",
        "prompt=card",
        "logger=none",
        f"output_dir={a.workdir}",
        f"run_name={a.variant}",
        "trainer.per_device_batch_size=16",
        f"trainer.grad_accum={a.ga}",
        f"trainer.max_steps={a.warmup + a.steps + a.profile_steps}",
        "trainer.eval_every_n_steps=100",
        "trainer.save_steps=100000",
        "trainer.save_total_limit=1",
        "trainer.early_stopping_patience=null",
        "trainer.log_every_n_steps=1",
        "seed=42",
    ]


def probe_examples(datamodule, n: int = 16) -> list[dict]:
    return datamodule.train_set[:n]


# ------------------------------------------------------------------------------------------------ nli_cot
def run_nli_cot(a, rec: dict) -> None:
    import pytorch_lightning as pl

    from nli_cot.training.train import TrainRecipe, validate

    if a.variant in EXPERIMENT_VARIANTS:  # the preset's own batch, accumulation and levers; paths from the bench
        keep = ("trainer.per_device_batch_size=", "trainer.grad_accum=", "lora=", "optimizer=", "model=")
        _, preset, extra = EXPERIMENT_VARIANTS[a.variant]
        overrides = [f"+experiment={preset}"]
        overrides += [o for o in base_overrides(a) if not o.startswith(keep)] + extra + list(a.override)
    else:
        overrides = base_overrides(a) + VARIANTS[a.variant][1] + list(a.override)
    rec["overrides"] = overrides
    cfg = compose(overrides)
    validate(cfg)
    times = StepTimes()
    t0 = time.time()
    recipe = TrainRecipe(cfg)
    recipe.setup()
    rec["setup_s"] = time.time() - t0
    rec["mem_after_setup"] = gpu_mem()
    module, dm = recipe.module, recipe.datamodule
    rec["data"] = dm.stats
    model = module.model
    rec["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rec["attn_implementation"] = model.get_base_model().config._attn_implementation
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(dev)

    # first-batch loss: same 16 examples as the baseline, eval mode (no dropout), bf16 autocast
    batch = dm._collate(probe_examples(dm))
    batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
    model.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        rec["probe_loss"] = float(module.compute_loss(batch))
    model.train()
    del batch

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.prof = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            acc = trainer.accumulate_grad_batches
            if batch_idx % acc:
                return
            if a.profile_steps and batch_idx == (a.warmup + a.steps) * acc:
                self.prof = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]
                    + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                )
                self.prof.__enter__()
            sync()
            times.begin.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.seen += real_tokens(batch)
            if len(times.rows) < 40:
                times.rows.append(list(batch["input_ids"].shape))
            acc = trainer.accumulate_grad_batches
            if (batch_idx + 1) % acc:
                return
            sync()
            times.end.append(time.perf_counter())
            times.cum.append(times.seen)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            times.losses.append(float(loss))
            if self.prof is not None and batch_idx + 1 == (a.warmup + a.steps + a.profile_steps) * acc:
                self.prof.__exit__(None, None, None)
                rec["profile"] = profile_tables(self.prof, a, a.profile_steps, times)
                self.prof = None

    recipe.trainer.callbacks.append(Timer())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    recipe.trainer.fit(module, datamodule=dm)
    rec["fit_wall_s"] = time.time() - t0
    from nli_cot.training import fastpath

    rec["flash_varlen_check"] = dict(fastpath.FLASH_VARLEN_CHECK)
    from torch._dynamo.utils import counters

    # CUDA graphs: inductor's cudagraph counters (skips with their reasons, non-static inputs recorded; empty: none)
    rec["cudagraph_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    # Compiled frames and graphs: regional compilation should compile each part once for all layers (a count that
    # grows with the layers means recompiles, and past dynamo's cache limit the rest would run eagerly)
    rec["dynamo_counters"] = {group: dict(counters[group]) for group in ("frames", "stats", "recompiles")
                              if counters.get(group)}
    keep = a.warmup + a.steps  # profiled steps (after these) are not measured steps
    times.end, times.cum = times.end[:keep], times.cum[:keep]
    rec.update(times.summary(a.warmup))
    rec["accumulate_grad_batches"] = recipe.trainer.accumulate_grad_batches


def profile_tables(prof, a, n_steps: int, times: StepTimes) -> dict:
    """Top kernels/ops by device and host time, GPU busy share of the profiled wall time; full tables to a file."""
    ka = prof.key_averages()
    out = {}
    wall = times.end[-1] - times.begin[-n_steps] if len(times.end) >= n_steps else None
    dev_total = sum(getattr(e, "self_device_time_total", 0) or 0 for e in ka) / 1e6
    out["profiled_wall_s"] = wall
    out["device_self_time_s"] = dev_total
    out["device_busy_fraction"] = dev_total / wall if wall else None
    out["host_ops"] = sum(e.count for e in ka) / max(1, n_steps)
    rows = sorted(ka, key=lambda e: getattr(e, "self_device_time_total", 0) or 0, reverse=True)[:25]
    out["top_device"] = [
        (
            e.key[:90],
            e.count // max(1, n_steps),
            round((getattr(e, "self_device_time_total", 0) or 0) / 1e3 / n_steps, 2),
        )
        for e in rows
    ]
    rows = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    out["top_host"] = [
        (e.key[:90], e.count // max(1, n_steps), round(e.self_cpu_time_total / 1e3 / n_steps, 2))
        for e in rows
    ]
    if a.profile_out:
        Path(a.profile_out).parent.mkdir(parents=True, exist_ok=True)
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        with open(a.profile_out, "a") as f:
            f.write(f"==== {a.side} {a.variant}: {n_steps} steps\n")
            f.write(ka.table(sort_by=sort, row_limit=60, max_name_column_width=90) + "\n")
    return out


# ----------------------------------------------------------------------------------------------- baseline
def run_baseline(a, rec: dict) -> None:
    """The card's stack: TRL SFTTrainer, padded batches, grad-ckpt, peft's k-bit preparation, model loss."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from nli_cot.models.modeling import load_tokenizer
    from nli_cot.training.data import NliDataModule

    cfg = compose(base_overrides(a))
    tok = load_tokenizer(cfg.model)
    dm = NliDataModule(cfg.dataset, cfg.trainer, cfg.prompt, tok, seed=cfg.seed)
    dm.setup("fit")  # the same rows nli_cot trains on
    rec["data"] = dm.stats
    rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in dm.train_set]
    quant = torch.cuda.is_available()
    kw = {"dtype": torch.bfloat16 if quant else torch.float32, "attn_implementation": "sdpa"}
    if quant:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kw["device_map"] = {"": 0}
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, **kw)
    model.config.use_cache = False
    rec["load_s"] = time.time() - t0
    times = StepTimes()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            times.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            sync()
            times.end.append(time.perf_counter())
            times.cum.append(times.seen)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                times.losses.append(float(logs["loss"]))

    n_steps = a.warmup + a.steps
    args = SFTConfig(
        output_dir=str(Path(a.workdir) / "baseline"),
        per_device_train_batch_size=BASELINE_VARIANTS[a.variant][1],
        gradient_accumulation_steps=a.ga,
        max_steps=n_steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.01,
        optim="paged_adamw_8bit" if quant else "adamw_torch",
        bf16=quant,
        gradient_checkpointing=BASELINE_VARIANTS[a.variant][2],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=42,
        dataloader_num_workers=0,
        disable_tqdm=True,
        max_length=512,
        packing=False,
        **({} if quant else {"use_cpu": True}),
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora,
        callbacks=[Timer()],
    )
    inner = trainer.data_collator

    def counting(examples):
        out = inner(examples)
        times.seen += real_tokens(out)
        if len(times.rows) < 40:
            times.rows.append(list(out["input_ids"].shape))
        return out

    trainer.data_collator = counting
    pm = trainer.model
    rec["trainable_params"] = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    dev = next(pm.parameters()).device
    batch = inner([{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in probe_examples(dm)])
    batch = {k: v.to(dev) for k, v in batch.items()}
    pm.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=quant):
        rec["probe_loss"] = float(pm(**batch).loss)
    pm.train()
    del batch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    trainer.train()
    rec["fit_wall_s"] = time.time() - t0
    rec["grad_ckpt_active"] = any(bool(getattr(m, "gradient_checkpointing", False)) for m in pm.modules())
    rec.update(times.summary(a.warmup))


def cmd_run(a) -> None:
    import transformers

    # run_bench.sh's "+x" stages run on a second library stack (EXTRA wheels in front); the tag keeps their records
    # apart from the same variant on the device's own stack, and each record says which transformers it used
    stack = os.environ.get("BENCH_STACK", "")
    rec = {
        "stage": "train",
        "side": a.side,
        "variant": f"{a.variant}+{stack}" if stack else a.variant,
        "transformers": transformers.__version__,
        "description": BASELINE_VARIANTS[a.variant][0]
        if a.side == "baseline"
        else {**VARIANTS, **EXPERIMENT_VARIANTS}[a.variant][0],
        "repeat": a.repeat,
        "warmup": a.warmup,
        "steps": a.steps,
    }
    try:
        (run_baseline if a.side == "baseline" else run_nli_cot)(a, rec)
        rec["status"] = "ok"
    except Exception as err:  # noqa: BLE001 - one failed variant must not stop the others
        record_failure(rec, err)
    rec["mem"] = gpu_mem()
    append(a.results, rec)
    gc.collect()


# ------------------------------------------------------------------------------------------------- report


def cmd_report(a) -> None:
    recs = read(a.results)
    env = next((r for r in recs if r.get("stage") == "env"), {})
    peak = env.get("bf16_gemm_TFLOPs") or 790.0
    trains = [r for r in recs if r.get("stage") == "train"]
    cards = [r for r in trains if r["side"] == "baseline" and r.get("status") == "ok"]

    def base_of(r: dict) -> dict | None:
        """The card run a row is compared with: its preset's card configuration of the same repeat (the first run of
        that configuration for a card row), else the first card run of any kind."""
        card = r["variant"] if r["side"] == "baseline" else SPEED_PAIRS.get(r["variant"].split("+")[0])
        same = [c for c in cards if c["variant"] == card]
        rep = [c for c in same if c.get("repeat") == r.get("repeat")] if r["side"] != "baseline" else []
        return next(iter(rep or same or cards), None)

    lines = [
        f"# Training speed: card stack vs nli_cot ({env.get('gpu', '?')}, {env.get('date', '?')})",
        "",
        f"Versions: {json.dumps(env.get('versions', {}))}",
        "",
        f"Random-weight Mistral-7B-v0.3 shape, 4-bit NF4 + double quant (unless noted), LoRA r16/a32/0.05 "
        f"q,k,v,o, paged AdamW 8-bit, micro-batches of 16 examples (x grad_accum per optimiser step), bf16. MFU = 4 x 7.25e9 FLOP per real "
        f"token / measured bf16 GEMM peak ({peak:.0f} TFLOP/s on this card).",
        "",
        "| side | variant | real tok/s | x its card | opt steps/s | median step s | peak alloc GiB "
        "| peak reserved GiB | first-batch loss | rel. diff vs its card | MFU | status |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in trains:
        base = base_of(r)
        tps = r.get("real_tok_per_s")
        ratio = tps / base["real_tok_per_s"] if (base and tps) else None
        probe = r.get("probe_loss")
        rel = abs(probe - base["probe_loss"]) / base["probe_loss"] if (base and probe is not None) else None
        mfu = FLOP_PER_TOKEN * tps / (peak * 1e12) if tps else None
        mem = r.get("mem") or {}
        lines.append(
            f"| {r['side']} | {r['variant']} | {fmt(tps)} | {fmt(ratio, 2)} | {fmt(r.get('steps_per_s'), 2)} "
            f"| {fmt(r.get('median_step_s'), 3)} | {fmt(mem.get('max_alloc_GiB'), 1)} "
            f"| {fmt(mem.get('max_reserved_GiB'), 1)} | {fmt(probe, 4)} | {fmt(rel, 4)} | {fmt(mfu, 3)} | {status_cell(r)} |"
        )
    lines += ["", "Variants:"] + [f"- `{r['variant']}`: {r.get('description', '')}" for r in trains]
    prof = [r for r in trains if r.get("profile")]
    for r in prof:
        p = r["profile"]
        lines += [
            "",
            f"Profile of `{r['variant']}` ({fmt(p.get('profiled_wall_s'), 2)} s wall for the profiled steps; "
            f"device busy {fmt(p.get('device_busy_fraction'), 2)}; {fmt(p.get('host_ops'))} host ops/step). "
            "Top device time per step (ms):",
            "",
        ]
        lines += [f"- {name} x{cnt}: {ms}" for name, cnt, ms in p.get("top_device", [])[:15]]
    text = "\n".join(lines) + "\n"
    write_report(a.out, text, {"env": env, "runs": trains})


# The card configuration each nli_cot variant is compared with: the card at its preset's batch and checkpointing.
CARD_OF_PRESET = {"abl0_1": "card", "abl1": "card_abl1"}
SPEED_PAIRS = {variant: CARD_OF_PRESET[preset] for variant, (_, preset, _) in EXPERIMENT_VARIANTS.items()}


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def speed_summary(recs: list[dict], commit: str | None = None) -> dict:
    """Per configuration: real tok/s from the median step and over the whole measured run, each repeat's ratio to
    its card run of the same repeat index (interleaved in one call), their median and range, and memory."""
    env = next((r for r in recs if r.get("stage") == "env"), {})
    runs: dict[str, dict[int, dict]] = {}
    for r in recs:
        # a profiled run (prof:<variant>) is not one of the interleaved repeats: its steps ran under the profiler
        if r.get("stage") == "train" and r.get("status") == "ok" and r.get("median_step_s") and not r.get("profile"):
            runs.setdefault(r["variant"], {})[int(r.get("repeat", 0))] = r

    def med_tok(r: dict) -> float:
        return r["real_tok_per_step"] / r["median_step_s"]

    configs: dict[str, dict] = {}
    for name, by_rep in runs.items():
        rs = [by_rep[k] for k in sorted(by_rep)]
        mem = [r.get("mem", {}) for r in rs]
        c = {
            "description": rs[0].get("description"),
            "repeats": len(rs),
            "median_step_tok_s": _spread([med_tok(r) for r in rs]),
            "whole_run_tok_s": _spread([r["real_tok_per_s"] for r in rs]),
            "max_alloc_GiB": max((m.get("max_alloc_GiB", 0) for m in mem), default=None),
            "max_reserved_GiB": max((m.get("max_reserved_GiB", 0) for m in mem), default=None),
            "probe_loss": rs[0].get("probe_loss"),
        }
        card_name = SPEED_PAIRS.get(name.split("+")[0], "")  # a "+x" run is paired with the card on the own stack
        card = runs.get(card_name, {})
        both = [k for k in sorted(by_rep) if k in card]
        if both:
            c["card"] = card_name
            c["ratio_median_step"] = _spread([med_tok(by_rep[k]) / med_tok(card[k]) for k in both])
            c["ratio_whole_run"] = _spread([by_rep[k]["real_tok_per_s"] / card[k]["real_tok_per_s"] for k in both])
            card_res = max(card[k].get("mem", {}).get("max_reserved_GiB", 0) for k in both)
            c["card_max_reserved_GiB"] = card_res
            c["reserved_vs_card"] = (c["max_reserved_GiB"] or 0) / card_res if card_res else None
            cp = card[both[0]].get("probe_loss")
            if cp and c["probe_loss"]:
                c["probe_loss_rel_diff"] = abs(c["probe_loss"] - cp) / cp
        configs[name] = c
    return {"device": env.get("gpu"), "date": env.get("date"), "versions": env.get("versions"), "commit": commit,
            "configs": configs}


def infer_summary(recs: list[dict]) -> dict:
    """Per inference mode (experiments/bench_infer.py records): examples/s, its ratio to the card's evaluation in
    the same call, memory and the budget it ran under."""
    runs = [r for r in recs if r.get("stage") == "infer" and r.get("status") == "ok"]
    base = next((r for r in runs if r["mode"] == "baseline"), None)
    out: dict[str, dict] = {}
    for r in runs:
        key = r["mode"] + ("@budget" if (r.get("memory_budget") or {}).get("cap_gib") else "")
        eps = r.get("examples_per_s")
        out[key] = {
            "description": r.get("description"),
            "examples_per_s": eps,
            "ratio_to_card": eps / base["examples_per_s"] if (base and eps) else None,
            "batch": r.get("batch"),
            "parse_valid_rate": r.get("parse_valid_rate"),
            "max_alloc_GiB": r.get("mem", {}).get("max_alloc_GiB"),
            "max_reserved_GiB": r.get("mem", {}).get("max_reserved_GiB"),
            "memory_budget": r.get("memory_budget"),
            "oom_at_batch": r.get("oom_at_batch"),
        }
    return out


def cmd_speed(a) -> None:
    out = speed_summary(read(a.results), commit=a.commit)
    if a.infer and Path(a.infer).exists():
        out["inference"] = infer_summary(read(a.infer))
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    for name, c in out["configs"].items():
        r1, r2 = c.get("ratio_median_step", {}), c.get("ratio_whole_run", {})
        print(f"{name:16s} n={c['repeats']} median-step {c['median_step_tok_s'].get('median', 0):8.0f} tok/s "
              f"whole-run {c['whole_run_tok_s'].get('median', 0):8.0f} tok/s "
              + (f"x card {r1['median']:.2f} [{r1['min']:.2f}-{r1['max']:.2f}] / {r2['median']:.2f} "
                 f"[{r2['min']:.2f}-{r2['max']:.2f}] " if r1 else "")
              + f"reserved {c['max_reserved_GiB'] or 0:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--side", choices=["baseline", "nli_cot"], required=True)
    r.add_argument("--variant", default="card")
    r.add_argument("--model", default="/tmp/m7b")
    r.add_argument("--data", default=str(REPO / ".bench" / "sft_train.jsonl"))
    r.add_argument("--results", required=True)
    r.add_argument("--workdir", default="/tmp/bench_runs")
    r.add_argument("--warmup", type=int, default=2)
    r.add_argument("--steps", type=int, default=8)
    r.add_argument("--ga", type=int, default=2, help="micro-batches of 16 per optimiser step (the card: 2)")
    r.add_argument("--repeat", type=int, default=0, help="which repeat of this configuration (speed summary)")
    r.add_argument("--profile_steps", type=int, default=0)
    r.add_argument("--profile_out", default=None)
    r.add_argument(
        "--override", action="append", default=[], help="extra Hydra override for the nli_cot side"
    )
    e = sub.add_parser("env")
    e.add_argument("--results", required=True)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    sp = sub.add_parser("speed", help="speed_summary.json from interleaved repeats")
    sp.add_argument("--results", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--infer", default=None, help="bench_infer.py results to add as 'inference'")
    sp.add_argument("--commit", default=os.environ.get("NLI_COT_COMMIT"))
    a = ap.parse_args()
    if a.cmd == "speed":
        cmd_speed(a)
    elif a.cmd == "run":
        known = BASELINE_VARIANTS if a.side == "baseline" else {**VARIANTS, **EXPERIMENT_VARIANTS}
        if a.variant not in known:
            ap.error(f"unknown {a.side} variant {a.variant!r}; one of {', '.join(known)}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd_run(a)
    elif a.cmd == "env":
        append(a.results, env_record())
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
