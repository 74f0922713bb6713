"""Training recipe: ``python -m nli_cot.train +experiment=abl0_2`` (Hydra; ``-m`` for sweeps).

Features
- Hydra composes dataset/model/lora/optimizer/trainer/logger/prompt groups, each validated by its schema
  (nli_cot.core.config) plus the checks in ``validate`` (choices, paths) before anything heavy is loaded.
- QLoRA (4-bit NF4, double quant, bf16 compute) + LoRA through PEFT, trained by a Lightning Trainer: gradient
  accumulation, clipping, checkpointing of activations, bf16 on GPU / fp32 on CPU, early stopping on eval loss.
- Checkpoints ``<output_dir>/<run_name>/checkpoint-<step>`` as PEFT folders (nli_cot.models.checkpoints).
- ``resume=auto|<checkpoint dir>``: exact continuation (optimiser, scheduler, step, data order, RNG).
  ``init_adapter_from=<checkpoint dir>``: warm start of the adapter with a fresh optimiser (the card's Abl0.2).
- Loggers: W&B (offline unless WANDB_API_KEY is set), TensorBoard, CSV or none; a CSV log is always kept in the
  run dir so a sweep report needs no account. ``status.json`` in the run dir says running/finished/failed.
- Multirun: each job has its own output dir; a failing job records its error in its ``status.json`` and the
  sweep goes on.

Limits
- One process per device (Lightning strategies ``ddp``/``fsdp`` through ``trainer.strategy``); the frozen base is
  rebuilt from the config on resume, so resume needs the same ``model`` config.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nli_cot.core import config as _schemas  # noqa: F401  (importing it registers the training schemas)

log = logging.getLogger("nli_cot.train")

CHOICES = {
    "model.source": ("hub", "tiny", "gguf"),
    "model.quantization": ("nf4", "none"),
    "model.dtype": ("auto", "bfloat16", "float16", "float32"),
    "optimizer.name": ("paged_adamw_8bit", "adamw"),
    "optimizer.scheduler": ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts"),
    "logger.kind": ("wandb", "tensorboard", "csv", "none"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "prompt.style": ("inst", "chat"),
    "trainer.early_stopping_mode": ("min", "max"),
    "trainer.packed_attention": ("model", "varlen"),
    "trainer.loss_impl": ("model", "chunked"),
    "trainer.compile_mode": ("default", "reduce-overhead"),
}


# Keys that decide what one data-loader batch is; a resume must keep them (see TrainRecipe._check_batch_layout).
BATCH_LAYOUT = ("per_device_batch_size", "grad_accum", "fuse_grad_accum")



class ConfigError(ValueError):
    """A user mistake in the configuration; reported as one line, never a stack trace."""


def validate(cfg: DictConfig) -> None:
    """Checks the schemas can't express: choices, ranges, files that must exist."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    from nli_cot.core.checks import ConfigCheckError, check_config

    try:  # unknown keys (a `+key=` on a schema group) and numeric ranges (nli_cot.core.checks.RANGES)
        check_config(cfg)
    except ConfigCheckError as err:
        raise ConfigError(str(err)) from None
    if cfg.trainer.fuse_grad_accum and cfg.trainer.loss_impl != "chunked":
        raise ConfigError("trainer.fuse_grad_accum=true needs trainer.loss_impl=chunked (it weights the loss tokens)")
    if problem := _cuda_graph_problem(cfg.trainer):
        raise ConfigError(problem)
    for key in ("dataset.train_path", "dataset.eval_path"):
        path = OmegaConf.select(cfg, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}: file not found: {path} (build it with `python -m nli_cot.sft ...`)")
    if cfg.resume and cfg.init_adapter_from:
        raise ConfigError("resume and init_adapter_from exclude each other: resume continues a run, "
                          "init_adapter_from starts a new one from an adapter")
    if cfg.init_adapter_from and not (Path(cfg.init_adapter_from) / "adapter_config.json").is_file():
        raise ConfigError(f"init_adapter_from: no complete adapter checkpoint at {cfg.init_adapter_from} "
                          "(is the run it comes from finished? a checkpoint folder holds adapter_config.json)")
    from nli_cot.training.gen_eval import config_problem
    from nli_cot.training.loss_weights import config_problem as loss_weight_problem

    if problem := config_problem(cfg) or loss_weight_problem(cfg.dataset):
        raise ConfigError(problem)


def _cuda_graph_problem(trainer: Any) -> str | None:
    """What keeps ``trainer.compile_mode=reduce-overhead`` / ``trainer.row_bucket`` from working, or None."""
    if trainer.row_bucket is not None and not trainer.padding_free:
        return "trainer.row_bucket pads padding-free rows: it needs trainer.padding_free=true"
    if trainer.compile_mode != "reduce-overhead":
        return None
    if not trainer.compile:
        return "trainer.compile_mode=reduce-overhead needs trainer.compile=true (it is a mode of the compiled layers)"
    if trainer.row_bucket is None:
        return ("trainer.compile_mode=reduce-overhead needs trainer.row_bucket (e.g. 256): CUDA graphs record one "
                "graph per row length, and unbucketed rows almost never repeat a length")
    if trainer.gradient_checkpointing:
        return ("trainer.compile_mode=reduce-overhead does not combine with trainer.gradient_checkpointing=true: "
                "recompute runs a layer's forward inside the backward, which the recorded graphs can't replay")
    return None


def _absolute_paths(cfg: DictConfig) -> None:
    """Relative data/checkpoint paths are relative to where the command was launched."""
    from hydra.utils import to_absolute_path

    for key in ("dataset.train_path", "dataset.eval_path", "init_adapter_from"):
        value = OmegaConf.select(cfg, key)
        if value:
            OmegaConf.update(cfg, key, to_absolute_path(value))
    if cfg.resume and cfg.resume != "auto":
        cfg.resume = to_absolute_path(cfg.resume)


def _precision(trainer_cfg: Any) -> str:
    import torch

    if trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class TrainRecipe:
    """One fine-tuning run: ``setup`` builds tokenizer, data, model and trainer; ``train`` fits; ``cleanup`` closes.

    The order of ``setup`` matters for speed of failure: config and data are checked before the model is loaded.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir) / cfg.run_name
        self.trainer: Any = None
        self.module: Any = None
        self.datamodule: Any = None
        self.ckpt_path: str | None = None

    def _resolve_resume(self) -> str | None:
        from nli_cot.models.checkpoints import STATE_FILE, latest_resumable, list_checkpoints

        resume = self.cfg.resume
        if resume == "auto":
            found = latest_resumable(self.run_dir)
            if found:
                self._check_batch_layout(found)
            return str(found / STATE_FILE) if found else None
        if resume:
            state = Path(resume) / STATE_FILE
            if not state.is_file():
                raise ConfigError(f"resume: {state} not found (a checkpoint-<step> folder of a run holds it)")
            self._check_batch_layout(Path(resume))
            return str(state)
        if list_checkpoints(self.run_dir):
            raise ConfigError(f"{self.run_dir} already holds checkpoints: pass resume=auto to continue that run, "
                              "or choose another run_name/output_dir")
        return None

    def _check_batch_layout(self, folder: Path) -> None:
        """The saved loader position counts batches of the run's layout (fused grad-accum serves one batch per
        optimiser step); continuing it under another layout would skip or repeat examples."""
        from nli_cot.models.checkpoints import TRAINER_STATE

        state = folder / TRAINER_STATE
        saved = json.loads(state.read_text()).get("config", {}).get("trainer", {}) if state.is_file() else {}
        for key in BATCH_LAYOUT:
            if key in saved and saved[key] != self.cfg.trainer[key]:
                raise ConfigError(f"resume: {folder.name} was written with trainer.{key}={saved[key]}, this run has "
                                  f"{self.cfg.trainer[key]}; pass trainer.{key}={saved[key]} to continue it")

    def setup(self) -> None:
        import pytorch_lightning as pl
        import torch
        from pytorch_lightning.callbacks import LearningRateMonitor

        from nli_cot.models.checkpoints import PeftCheckpoint
        from nli_cot.models.modeling import attach_lora, load_adapter, load_base_model, load_tokenizer
        from nli_cot.training.data import NliDataModule
        from nli_cot.training.module import NliCotModule

        cfg = self.cfg
        self.ckpt_path = self._resolve_resume()
        from nli_cot.models.modeling import configure_cuda_memory

        configure_cuda_memory(cfg.trainer.cuda_alloc_conf)  # before the model takes device memory
        pl.seed_everything(cfg.seed, workers=True)
        resolved = OmegaConf.to_container(cfg, resolve=True)

        tokenizer = load_tokenizer(cfg.model)
        self.datamodule = NliDataModule(cfg.dataset, cfg.trainer, cfg.prompt, tokenizer, seed=cfg.seed)
        self.datamodule.setup("fit")  # fail on bad data before paying for the model
        log.info("data: %s", json.dumps(self.datamodule.stats))

        base = load_base_model(cfg.model, tokenizer, for_training=True,
                               gradient_checkpointing=cfg.trainer.gradient_checkpointing)
        if cfg.init_adapter_from:
            model = load_adapter(base, cfg.init_adapter_from, is_trainable=True)
            log.info("warm start: adapter weights from %s, fresh optimiser and schedule", cfg.init_adapter_from)
        else:
            model = attach_lora(base, cfg.lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("trainable parameters: %d", trainable)
        from nli_cot.training.fastpath import apply_training_levers

        log.info("speed levers: %s", json.dumps(apply_training_levers(model, cfg.trainer)))
        self.module = NliCotModule(
            model,
            cfg.optimizer,
            resolved,
            loss_impl=cfg.trainer.loss_impl,
            ce_chunk_tokens=cfg.trainer.ce_chunk_tokens,
        )

        callbacks: list[Any] = [
            PeftCheckpoint(self.run_dir, cfg.trainer.save_steps, cfg.trainer.save_total_limit, tokenizer,
                           cfg.trainer.early_stopping_metric, cfg.trainer.early_stopping_mode, resolved),
            LearningRateMonitor(logging_interval="step"),
        ]
        if cfg.trainer.gen_eval.enabled:  # logs eval/accuracy, eval/f1, eval/parse_rate beside eval/loss
            from nli_cot.training.gen_eval import GenerationEval

            callbacks.append(GenerationEval.from_config(cfg, tokenizer, self.datamodule))
        if cfg.trainer.progress_every_n_steps:  # visible in a log file too, where a tqdm bar is not
            from nli_cot.training.loggers import ProgressLog

            callbacks.append(ProgressLog(cfg.trainer.progress_every_n_steps))
        if cfg.trainer.throughput_window:
            from nli_cot.training.loggers import throughput_monitor

            callbacks.append(throughput_monitor(cfg.trainer.throughput_window))
        if cfg.trainer.early_stopping_patience:
            from nli_cot.models.checkpoints import EarlyStoppingAfter

            callbacks.append(EarlyStoppingAfter(
                cfg.trainer.early_stopping_min_steps,
                monitor=cfg.trainer.early_stopping_metric, mode=cfg.trainer.early_stopping_mode,
                patience=cfg.trainer.early_stopping_patience, check_on_train_epoch_end=False,
            ))
        from nli_cot.training.loggers import build_loggers

        loggers = build_loggers(cfg, self.run_dir)
        for lg in loggers:
            lg.log_hyperparams(resolved)
        self.trainer = pl.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=cfg.trainer.strategy,
            precision=_precision(cfg.trainer),
            max_epochs=cfg.trainer.max_epochs if cfg.trainer.max_steps == -1 else -1,
            max_steps=cfg.trainer.max_steps,
            accumulate_grad_batches=1 if cfg.trainer.fuse_grad_accum else cfg.trainer.grad_accum,
            gradient_clip_val=cfg.trainer.gradient_clip_val,
            # Lightning counts validation intervals in batches, the card in optimiser steps.
            val_check_interval=cfg.trainer.eval_every_n_steps
            * (1 if cfg.trainer.fuse_grad_accum else cfg.trainer.grad_accum),
            check_val_every_n_epoch=None,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
            num_sanity_val_steps=0,
            enable_progress_bar=sys.stderr.isatty(),  # redirected: ProgressLog's lines instead of carriage returns
            enable_checkpointing=False,  # PeftCheckpoint writes adapter folders instead of full model dumps
            enable_model_summary=False,  # the trainable-parameter count is logged above; the table's per-module
            #                              modes are read before on_fit_start sets them
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=str(self.run_dir),
            deterministic=cfg.trainer.deterministic,
            # The batch sampler shards itself by rank (same global order on every rank, exact resume);
            # Lightning's DistributedSampler injection can't wrap a custom batch sampler.
            use_distributed_sampler=False,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def train(self) -> dict[str, Any]:
        from nli_cot.models.checkpoints import PeftCheckpoint

        started = time.time()
        # Our own checkpoint (it holds RNG states as numpy arrays), so the full unpickler is safe here.
        self.trainer.fit(self.module, datamodule=self.datamodule, ckpt_path=self.ckpt_path, weights_only=False)
        if self._final_step_unjudged():
            # The checkpoint of the last step was written at train end; this evaluation lets PeftCheckpoint judge it
            # (best by eval loss) and records its metrics in its trainer_state.json.
            self.trainer.validate(self.module, datamodule=self.datamodule, verbose=False)
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        ckpt = next(c for c in self.trainer.callbacks if isinstance(c, PeftCheckpoint))
        best = {"metric": ckpt.monitor, "value": ckpt.best_value, "checkpoint": ckpt.best_checkpoint}
        return {"global_step": self.trainer.global_step, "epoch": self.trainer.current_epoch,
                "metrics": metrics, "best": best, "wall_s": time.time() - started, "data": self.datamodule.stats}

    def _final_step_unjudged(self) -> bool:
        t, every = self.trainer, self.cfg.trainer.eval_every_n_steps
        return (self.cfg.trainer.eval_at_end and bool(self.datamodule.eval_set) and t.state.finished
                and not t.interrupted and t.global_step > 0 and t.global_step % every != 0)

    def cleanup(self) -> None:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except ImportError:
            pass


def _write_status(run_dir: Path, status: str, **extra: Any) -> None:
    from nli_cot.core.records import write_json_atomic
    from nli_cot.core.sweep import job_overrides

    run_dir.mkdir(parents=True, exist_ok=True)
    # The overrides identify the job, so a re-run of the same sweep can skip it (nli_cot.core.sweep).
    write_json_atomic(run_dir / "status.json",
                      {"status": status, "time": time.time(), "overrides": job_overrides(), **extra})


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def user_errors() -> tuple[type[BaseException], ...]:
    from nli_cot.models.modeling import ModelSetupError
    from nli_cot.training.data import DataError

    return (ConfigError, DataError, ModelSetupError)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate, set up, train, clean up; returns the final summary (also written to status.json)."""
    from nli_cot.training.loggers import quiet_third_party

    _absolute_paths(cfg)
    validate(cfg)
    quiet_third_party()
    recipe = TrainRecipe(cfg)
    _write_status(recipe.run_dir, "running")
    try:
        recipe.setup()
        summary = recipe.train()
    except BaseException as err:  # whatever ends the run after it started, status.json must not stay "running"
        message = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, user_errors()):
            message = f"{type(err).__name__}: {message}"
        _write_status(recipe.run_dir, "failed", error=message, traceback=traceback.format_exc())
        raise
    finally:
        recipe.cleanup()
    _write_status(recipe.run_dir, "finished", **summary)
    log.info("finished: %s", json.dumps(summary["metrics"]))
    return summary


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from nli_cot.core.sweep import already_finished, job_overrides, objective

    run_dir = Path(cfg.output_dir) / cfg.run_name
    if _is_multirun() and (done := already_finished(run_dir, job_overrides())) is not None:
        log.info("skipped: %s already finished with these overrides (a new hydra.sweep.dir runs it again)", run_dir)
        return objective(done, cfg.trainer.early_stopping_metric)
    try:
        summary = run(cfg)
        # What a sweeper optimises: the monitored metric at the best checkpoint.
        return objective(summary, cfg.trainer.early_stopping_metric)
    except user_errors() as err:
        _write_status(run_dir, "failed", error=str(err))
        if _is_multirun():  # keep the sweep going; the report reads status.json
            log.error("job failed: %s", err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if not _is_multirun():
            raise
        _write_status(run_dir, "failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        log.error("job crashed: %s\n%s", err, traceback.format_exc())
        return None


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    preflight("config")
    main()
