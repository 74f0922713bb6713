"""The LightningModule: a PEFT/QLoRA causal LM, its loss, optimiser, schedule and logged throughput.

Features
- Loss: the model's token-mean cross-entropy over completion tokens (prompt and padding are -100).
- Eval loss: summed over all dev tokens and divided once (not a mean of batch means), logged as ``eval/loss``.
- Optimiser: bitsandbytes ``PagedAdamW8bit`` (the card's paged_adamw_8bit) on CUDA; torch AdamW elsewhere or
  when ``optimizer.name=adamw`` (one warning line when a requested paged optimiser falls back).
- Schedule: transformers' cosine/linear/constant with warm-up = ceil(warmup_ratio x total optimiser steps), as
  the HF Trainer computes it; stepped every optimiser step.
- Logged: train/loss, lr, real (non-padding) tokens per second, peak device memory.
- Checkpoints keep only trainable (adapter) weights in the Lightning state plus RNG states, so a resume is exact
  and a checkpoint of a 7B QLoRA run weighs megabytes, not gigabytes.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from nli_cot.models.modeling import warn_once
from nli_cot.training.data import IGNORE_INDEX
from nli_cot.training.fastpath import COLLATOR_EXTRAS, eager_without_grad, graph_step_begin


def count_loss_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the causal shift (the first position never does)."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens: the attention mask's ones, or a padding-free row's tokens less its bucket padding."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    return int(batch["input_ids"].numel()) - int(batch.get("row_padding", 0))


def build_optimizer(params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "paged_adamw_8bit":
        if torch.cuda.is_available():
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(params, **kwargs)
        warn_once("No CUDA device: optimizer paged_adamw_8bit falls back to torch AdamW (same hyper-parameters)")
    elif cfg.name != "adamw":
        raise ValueError(f"optimizer.name must be paged_adamw_8bit or adamw, got {cfg.name!r}")
    return torch.optim.AdamW(params, **kwargs)


class NliCotModule(pl.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer_cfg: Any,
        resolved_config: dict | None = None,
        loss_impl: str = "model",
        ce_chunk_tokens: int = 2048,
    ):
        super().__init__()
        self.model = model
        self.loss_impl = loss_impl  # "model": the model's own loss; "chunked": nli_cot.training.fastpath.completion_loss
        self.ce_chunk_tokens = ce_chunk_tokens
        self.optimizer_cfg = optimizer_cfg
        self.resolved_config = resolved_config or {}
        # Checkpoints hold only the adapter; the frozen base is rebuilt from the config on resume.
        self.strict_loading = False
        self._val_loss_sum = 0.0
        self._val_tokens = 0
        self._step_started: float | None = None
        self._step_loss_sum, self._step_batches = 0.0, 0

    def on_fit_start(self) -> None:
        # from_pretrained returns the base in eval mode and Lightning keeps each module's mode as it finds it; in eval
        # mode transformers' decoder layers skip gradient checkpointing (they check `self.training`), silently, so
        # `trainer.gradient_checkpointing=true` (Abl0.1) recomputed nothing. The card's HF Trainer puts the whole
        # model in train mode; so do we. Nothing else changes: these bases have no dropout outside the LoRA layers.
        self.model.train()

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Token-mean cross-entropy over completion tokens (both implementations compute the same value); weighted
        per token when the train collator adds weights (``dataset.loss_weight``, nli_cot.training.loss_weights)."""
        with eager_without_grad(self.model):  # no-grad forwards can't run as CUDA graphs layer by layer
            return self._loss(batch)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.loss_impl == "chunked":
            from nli_cot.training.fastpath import completion_loss

            return completion_loss(self.model, batch, self.ce_chunk_tokens)
        batch = {k: v for k, v in batch.items() if k not in COLLATOR_EXTRAS}
        token_weight = batch.pop("token_weight", None)
        if token_weight is None:
            return self.model(**batch).loss
        from nli_cot.training.loss_weights import (
            weighted_causal_lm_loss,  # dataset.loss_weight != 1, training only
        )

        labels = batch.pop("labels")
        return weighted_causal_lm_loss(self.model(**batch).logits, labels, token_weight)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        graph_step_begin(self.model)
        loss = self.compute_loss(batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self._step_loss_sum = self._step_loss_sum + loss.detach()  # a tensor: float() would sync the GPU
        self._step_batches += 1
        self.log("train/real_tokens", float(count_real_tokens(batch)), reduce_fx="sum", batch_size=bs)
        scale = batch.get("grad_scale")  # a fused short last step (nli_cot.training.fastpath.fused_grad_scale); logged unscaled
        return loss if scale is None else loss * scale

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self._step_started is None:
            return
        seconds = time.perf_counter() - self._step_started
        self.log("perf/real_tokens_per_s", count_real_tokens(batch) / max(seconds, 1e-9), batch_size=1)
        if torch.cuda.is_available():
            self.log("perf/peak_mem_gib", torch.cuda.max_memory_allocated() / 2**30, batch_size=1)
            self.log("perf/peak_reserved_gib", torch.cuda.max_memory_reserved() / 2**30, batch_size=1)
        opt = self.optimizers(use_pl_optimizer=False)
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # The loss of the whole optimiser step: mean over its micro-batches and over ranks. train/loss is the last
        # micro-batch of rank 0 only, so it can't compare runs that split the same step differently (1 GPU x
        # grad_accum 2 vs 2 GPUs x 1).
        if self._step_batches:
            value = torch.as_tensor(self._step_loss_sum / self._step_batches, device=self.device).float()
            self.log("train/step_loss", value, sync_dist=True, on_step=True, on_epoch=False, batch_size=1)
        self._step_loss_sum, self._step_batches = 0.0, 0

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum, self._val_tokens = 0.0, 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.compute_loss(batch)
        n = count_loss_tokens(batch["labels"])
        self._val_loss_sum += float(loss) * n
        self._val_tokens += n

    def on_validation_epoch_end(self) -> None:
        if self._val_tokens:
            # On the module's device: NCCL can't reduce a CPU tensor across GPUs.
            value = torch.tensor(self._val_loss_sum / self._val_tokens, device=self.device)
            self.log("eval/loss", value, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        from transformers import get_scheduler

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.optimizer_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(total * self.optimizer_cfg.warmup_ratio)  # how the HF Trainer rounds it
        scheduler = get_scheduler(
            self.optimizer_cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint content -------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
        checkpoint["rng"] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if not rng:
            return
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
