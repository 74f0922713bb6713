"""Generation-based dev evaluation during training: accuracy, not only loss (a Lightning Callback).

Features
- At every evaluation (or every ``trainer.gen_eval.every_n_steps`` optimiser steps, a multiple of
  ``trainer.eval_every_n_steps``), greedy-decodes answers for a fixed dev subset (the first ``max_examples`` of the
  data module's dev set, in its order), reads them with ``nli_cot.core.parsing.parse_output`` (the parser ``predict``
  uses) and logs ``eval/accuracy``, ``eval/balanced_accuracy``, ``eval/f1`` (macro) and ``eval/parse_rate`` beside ``eval/loss``.
- Logged in the validation epoch, so ``EarlyStopping`` and the best-checkpoint choice can monitor
  ``eval/accuracy`` (``trainer.early_stopping_metric=eval/accuracy trainer.early_stopping_mode=max``).
- Prompts come from ``nli_cot.core.prompts.encode_prompt`` (byte-for-byte the training prompt), left-padded and decoded
  by ``nli_cot.models.generation.generate_batch``, which stops a row at its closing brace.

Limits
- Unconstrained greedy decoding: the score includes the model's own format errors (a constrained decode would
  hide them, which is what parse_rate is for).
- Under DDP every rank decodes the whole subset (same numbers, no speed-up).
- Decoding time counts as evaluation time; with ``every_n_steps`` larger than the eval interval, evaluations in
  between have no accuracy, so accuracy can then not be the early-stopping metric.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

from nli_cot.core.metrics import accuracy, balanced_accuracy, macro_f1
from nli_cot.core.parsing import parse_output
from nli_cot.core.prompts import encode_prompt

log = logging.getLogger(__name__)

METRICS = ("eval/accuracy", "eval/balanced_accuracy", "eval/f1", "eval/parse_rate")


def config_problem(cfg: Any) -> str | None:
    """The one-line reason a training config's gen-eval settings can't work, or None."""
    gen = cfg.trainer.gen_eval
    monitor = cfg.trainer.early_stopping_metric
    if monitor in METRICS and not gen.enabled:
        return (
            f"trainer.early_stopping_metric={monitor} needs generation-based eval: "
            "add trainer.gen_eval.enabled=true"
        )
    if not gen.enabled:
        return None
    for key in ("max_examples", "batch_size", "max_new_tokens"):
        if gen[key] <= 0:
            return f"trainer.gen_eval.{key} must be > 0, got {gen[key]}"
    every, interval = gen.every_n_steps, cfg.trainer.eval_every_n_steps
    if every is not None and (every <= 0 or every % interval):
        return (
            f"trainer.gen_eval.every_n_steps={every} must be a positive multiple of "
            f"trainer.eval_every_n_steps={interval} (generation runs inside an evaluation)"
        )
    if monitor in METRICS and every not in (None, interval):
        return (
            f"trainer.early_stopping_metric={monitor} needs accuracy at every evaluation: "
            "set trainer.gen_eval.every_n_steps=null"
        )
    return None


def dev_subset(dataset_cfg: Any, dev_ids: list[str], n: int) -> list[dict]:
    """The first ``n`` dev records (premise, hypothesis, label) in the data module's dev order."""
    from nli_cot.training.data import read_sft_records

    wanted = dev_ids[:n]
    # The data module keeps token ids only; the raw fields come from the same file, matched by id.
    rows = read_sft_records(dataset_cfg.eval_path or dataset_cfg.train_path)
    by_id = {str(r["id"]): r for r in rows}
    return [by_id[i] for i in wanted if i in by_id]


def score(gold: list[int], texts: list[str]) -> dict[str, float]:
    """Accuracy, macro F1 and parse rate of raw model outputs against gold labels."""
    parsed = [parse_output(t) for t in texts]
    pred = [p.label for p in parsed]
    return {
        "eval/accuracy": accuracy(gold, pred),
        # the selection metric of the study: a constant predictor scores 0.5 whatever the label prior
        "eval/balanced_accuracy": balanced_accuracy(gold, pred),
        "eval/f1": macro_f1(gold, pred),
        "eval/parse_rate": sum(p.ok for p in parsed) / len(parsed) if parsed else float("nan"),
    }


class GenerationEval(pl.Callback):
    """Decode a fixed dev subset at evaluation time and log accuracy, F1 and parse rate."""

    def __init__(
        self,
        records: list[dict],
        prompt_cfg: Any,
        tokenizer: Any,
        every_n_steps: int | None,
        batch_size: int,
        max_new_tokens: int,
        stop_at_json_close: bool = True,
    ):
        if not records:
            raise ValueError("generation-based eval needs at least one dev example")
        self.records = records
        self.prompt_cfg = prompt_cfg
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.prompts = [encode_prompt(r["premise"], r["hypothesis"], prompt_cfg, tokenizer) for r in records]
        self.gold = [int(r["label"]) for r in records]
        # greedy, unconstrained: DecodingConfig's defaults
        from nli_cot.models.generation import DecodingConfig

        self.decoding = DecodingConfig(max_new_tokens=max_new_tokens, stop_at_json_close=stop_at_json_close)
        self.last: dict[str, float] = {}
        self.last_texts: list[str] = []

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Any, datamodule: Any) -> GenerationEval:
        from nli_cot.training.data import DataError

        gen = cfg.trainer.gen_eval
        ids = [ex["id"] for ex in datamodule.eval_set]
        records = dev_subset(cfg.dataset, ids, gen.max_examples)
        if not records:
            raise DataError("trainer.gen_eval.enabled=true but the dev set is empty "
                            "(set dataset.eval_path or a larger dataset.eval_fraction)")
        log.info(
            "generation eval: %d dev examples, greedy, max_new_tokens=%d", len(records), gen.max_new_tokens
        )
        return cls(
            records,
            cfg.prompt,
            tokenizer,
            gen.every_n_steps,
            gen.batch_size,
            gen.max_new_tokens,
            gen.stop_at_json_close,
        )

    def generate(self, model: Any) -> list[str]:
        """Greedy answers (text after the prompt) for every record, in order."""
        from nli_cot.models.generation import generate_batch
        from nli_cot.training.fastpath import generation_attention

        texts: list[str] = []
        prefix = getattr(self.prompt_cfg, "completion_prefix", "")
        with generation_attention(model):  # the packed-row attention of training can't decode left-padded rows
            for start in range(0, len(self.prompts), self.batch_size):
                batch = self.prompts[start : start + self.batch_size]
                result = generate_batch(model, self.tokenizer, batch, self.decoding, completion_prefix=prefix)
                texts.extend(samples[0].text for samples in result.outputs)
        return texts

    def evaluate(self, model: Any) -> dict[str, float]:
        self.last_texts = self.generate(model)
        self.last = score(self.gold, self.last_texts)
        return self.last

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return self.every_n_steps is None or trainer.global_step % self.every_n_steps == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            return
        model = pl_module.model
        was_training = model.training
        model.eval()  # validation already switched it; a direct call may not have
        try:
            values = self.evaluate(model)
        finally:
            model.train(was_training)
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)
        log.info(
            "generation eval at step %d: %s",
            trainer.global_step,
            ", ".join(f"{k}={v:.4f}" for k, v in values.items()),
        )
