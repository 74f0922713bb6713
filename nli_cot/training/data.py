"""SFT records -> token ids with completion-only labels -> batches; the LightningDataModule of training.

Features
- Reads the SFT stage's JSONL (``id, premise, hypothesis, thought_process, label``; a JSON array of records too)
  and checks every record: valid UTF-8 and JSON, an object, ``id`` a string or integer, ``premise`` and
  ``hypothesis`` non-empty text, ``thought_process`` text or null, ``label`` exactly 0 or 1 (``true``/``"1"``
  are errors, never read as a label), and at least one record. Errors are ``file:line: field ...``, one line.
  Each record is rendered with the configured prompt (nli_cot.core.prompts), so the prompt is a training-time choice.
- Labels: prompt tokens are -100, the completion (JSON + EOS) is learned; the EOS label survives padding.
- Examples over ``max_seq_length`` are dropped and counted, never truncated (truncation would cut the EOS).
- Dev split: ``eval_path`` or a deterministic hash of the id (stable when the file grows or is reordered).
- Batches: right-padded, or padding-free (one packed row, position ids restarting per example, which
  transformers' sdpa/eager attention turns into per-example isolation when there is no attention mask).
- Exact resume: the train loader is stateful (epoch + batches served), the sampler's order is a pure function of
  (seed, epoch), so a resumed run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from nli_cot.core.pairs import id_hash
from nli_cot.core.prompts import completion_text, encode_example
from nli_cot.core.records import JsonTextError, json_rows
from nli_cot.training.fastpath import (
    fused_grad_scale,
    loss_positions,
    micro_batch_loss_weights,
    packed_boundaries,
)
from nli_cot.training.loss_weights import completion_token_weights, loss_position_weights, weighting_on

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "premise", "hypothesis", "label")
IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


class DataError(ValueError):
    """A user-facing problem with a data file (named with its line and field)."""


def _one_line(text: str) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return re.sub("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


def _check_sft_record(path: str, line_no: int, row: Any) -> dict:
    where = f"{path}:{line_no}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: not a JSON object record ({type(row).__name__})")
    for name in REQUIRED_FIELDS:
        if row.get(name) is None or row.get(name) == "":
            raise DataError(f"{where}: field {name!r} is missing or empty")
    rid = row["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or integer, got {type(rid).__name__}")
    for name in ("premise", "hypothesis"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise DataError(_one_line(f"{where}: field {name!r} must be non-empty text, got {row[name]!r}"[:300]))
    thought = row.get("thought_process")
    if thought is not None and not isinstance(thought, str):
        raise DataError(f"{where}: field 'thought_process' must be text or null, got {type(thought).__name__}")
    label = row["label"]
    if isinstance(label, float) and label in (0, 1):
        row["label"] = label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1):
        raise DataError(_one_line(f"{where}: field 'label' must be 0 or 1, got {label!r}"[:300]))
    return row


def read_sft_records(path: str) -> list[dict]:
    """Load an SFT JSONL file and check every record has the fields training needs, with their types."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found (build it with `python -m nli_cot.sft ...` or point dataset.train_path at one)")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line_no}: not valid utf-8 (byte 0x{data[err.start]:02x})") from None
    rows: list[dict] = []
    try:
        for n, line_no, row, problem in json_rows(text):
            if problem is not None:
                raise DataError(f"{path}:{line_no}: {problem}")
            rows.append(_check_sft_record(path, n if line_no is None else line_no, row))
    except JsonTextError as err:
        raise DataError(f"{path}: {err}") from None
    if not rows:
        raise DataError(f"{path}: no records (an empty SFT file; build it with `python -m nli_cot.sft ...`)")
    return rows


def in_dev_split(example_id: Any, fraction: float, salt: int) -> bool:
    """Deterministic dev membership from a hash of the id: independent of file order and size."""
    return id_hash(example_id, salt) < fraction


@dataclass
class TokenizedSet:
    examples: list[dict]
    dropped_too_long: int


def tokenize_records(records: Sequence[dict], tokenizer: Any, prompt_cfg: Any, max_len: int, label_only: bool,
                     weighting: Any = None) -> TokenizedSet:
    """Render and tokenise records; labels mask the prompt; over-long examples are dropped and counted.

    ``weighting`` (the dataset config) with ``loss_weight != 1`` adds per-token loss weights (nli_cot.training.loss_weights).
    """
    weigh = weighting is not None and weighting_on(weighting)
    examples, dropped = [], 0
    for row in records:
        thought = None if label_only else row.get("thought_process")
        completion = completion_text(thought, int(row["label"]))
        rendered = encode_example(row["premise"], row["hypothesis"], completion, prompt_cfg, tokenizer)
        input_ids = rendered.prompt_ids + rendered.completion_ids
        if len(input_ids) > max_len:
            dropped += 1
            continue
        labels = [IGNORE_INDEX] * len(rendered.prompt_ids) + rendered.completion_ids
        example = {"id": str(row["id"]), "input_ids": input_ids, "labels": labels}
        if weigh:
            example["weights"] = [1.0] * len(rendered.prompt_ids) + completion_token_weights(
                prompt_cfg.completion_prefix + completion, rendered.completion_ids, tokenizer,
                float(weighting.loss_weight), list(weighting.loss_weight_markers or []),
                bool(weighting.loss_weight_label),
            )
        examples.append(example)
    return TokenizedSet(examples, dropped)


def collate_padded(batch: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions get attention 0 and label -100."""
    width = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex["input_ids"])
        ids[row, :n] = torch.tensor(ex["input_ids"])
        labels[row, :n] = torch.tensor(ex["labels"])
        mask[row, :n] = 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if "weights" in batch[0]:  # padding weighs 1; its label is -100 anyway
        out["token_weight"] = torch.ones((len(batch), width), dtype=torch.float32)
        for row, ex in enumerate(batch):
            out["token_weight"][row, : len(ex["weights"])] = torch.tensor(ex["weights"])
    return out


def collate_padding_free(batch: Sequence[dict], bucket: int | None = None, pad_id: int = 0) -> dict[str, Any]:
    """All examples in one row, position ids restarting at 0 per example and no attention mask.

    The shifted label at each boundary is the next example's first prompt token, which is -100, so no example
    learns from another. The model must run with ``use_cache=False`` (set in modeling) for isolation to hold.

    ``bucket`` (trainer.row_bucket): the row is padded up to a multiple of it with one inert segment, its own
    attention segment with label -100, so it neither sees nor is seen by an example and carries no loss; the number
    of pad tokens is ``row_padding`` (real-token counts leave them out). Rows then take a few lengths, which is what
    CUDA graphs need (one recorded graph per length).
    """
    ids = [t for ex in batch for t in ex["input_ids"]]
    labels = [t for ex in batch for t in ex["labels"]]
    pos = [p for ex in batch for p in range(len(ex["input_ids"]))]
    lengths = [len(ex["input_ids"]) for ex in batch]
    pad = (-len(ids)) % bucket if bucket else 0
    if pad:
        ids += [pad_id] * pad
        labels += [IGNORE_INDEX] * pad
        pos += list(range(pad))
        lengths.append(pad)
    out: dict[str, Any] = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        # example boundaries for varlen attention kernels (nli_cot.training.fastpath); sdpa/eager ignore them
        **packed_boundaries(lengths),
    }
    if "weights" in batch[0]:
        weights = [w for ex in batch for w in ex["weights"]] + [1.0] * pad
        out["token_weight"] = torch.tensor([weights], dtype=torch.float32)
    if bucket:
        out["row_padding"] = pad
    return out


class ResumableBatchSampler:
    """Batches of indices whose order is a pure function of (seed, epoch); can skip the batches already served.

    ``group_by_length`` sorts each shuffled chunk of ``50 x batch_size`` examples by length before cutting batches
    (less padding, still random across chunks), then shuffles the batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool, group_by_length: bool,
                 num_replicas: int = 1, rank: int = 0):
        self.lengths = list(lengths)
        # Data parallel: every rank computes the same global order and takes every num_replicas-th batch.
        self.num_replicas, self.rank = num_replicas, rank
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            rng.shuffle(order)
        if self.group_by_length:
            chunk = self.batch_size * 50
            order = [
                i for start in range(0, len(order), chunk)
                for i in sorted(order[start:start + chunk], key=lambda j: self.lengths[j])
            ]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group_by_length and self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1:  # equal counts per rank, or the ranks' collectives would fall out of step
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[self.rank:usable:self.num_replicas]
        return batches

    def __len__(self) -> int:
        total = (len(self.lengths) + self.batch_size - 1) // self.batch_size
        return total // self.num_replicas if self.num_replicas > 1 else total

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        yield from self.batches(self.epoch)[skip:]


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch (it saves ``state_dict`` of stateful loaders)."""

    def __iter__(self):
        sampler = self.batch_sampler
        self._served = sampler.skip
        for batch in super().__iter__():
            self._served += 1  # counted as handed to the loop, so prefetching workers can't inflate it
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "served": getattr(self, "_served", 0)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.epoch = state["epoch"]
        self.batch_sampler.skip = state["served"]


class NliDataModule(pl.LightningDataModule):
    """Tokenises the SFT set once and serves train/dev loaders."""

    def __init__(self, dataset_cfg: Any, trainer_cfg: Any, prompt_cfg: Any, tokenizer: Any, seed: int):
        super().__init__()
        self.dataset_cfg, self.trainer_cfg, self.prompt_cfg = dataset_cfg, trainer_cfg, prompt_cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.train_set: list[dict] = []
        self.eval_set: list[dict] = []
        self.stats: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        cfg = self.dataset_cfg
        train_rows = read_sft_records(cfg.train_path)
        if cfg.eval_path:
            eval_rows = read_sft_records(cfg.eval_path)
        else:
            eval_rows = [r for r in train_rows if in_dev_split(r["id"], cfg.eval_fraction, cfg.split_seed)]
            train_rows = [r for r in train_rows if not in_dev_split(r["id"], cfg.eval_fraction, cfg.split_seed)]
        if cfg.max_train_examples:
            train_rows = train_rows[: cfg.max_train_examples]
        if cfg.max_eval_examples:
            eval_rows = eval_rows[: cfg.max_eval_examples]
        train = tokenize_records(train_rows, self.tokenizer, self.prompt_cfg, cfg.max_seq_length, cfg.label_only,
                                 weighting=cfg)
        dev = tokenize_records(eval_rows, self.tokenizer, self.prompt_cfg, cfg.max_seq_length, cfg.label_only)
        self.train_set, self.eval_set = train.examples, dev.examples
        self.stats = {
            "train_examples": len(train.examples),
            "eval_examples": len(dev.examples),
            "dropped_too_long_train": train.dropped_too_long,
            "dropped_too_long_eval": dev.dropped_too_long,
        }
        if weighting_on(cfg):  # how much the weighting touches: too few marked tokens means a marker is misspelt
            marked = [sum(w != 1.0 for w in ex["weights"]) for ex in self.train_set]
            self.stats["loss_weighted_tokens_per_example"] = round(sum(marked) / len(marked), 2) if marked else 0
            self.stats["train_examples_without_weighted_tokens"] = sum(n == 0 for n in marked)
        if train.dropped_too_long or dev.dropped_too_long:
            log.warning(
                "dropped %d train / %d eval examples longer than max_seq_length=%d",
                train.dropped_too_long, dev.dropped_too_long, cfg.max_seq_length,
            )
        if not self.train_set:
            raise DataError(f"{cfg.train_path}: no training examples left after the split and length filter")

    def _collate(self, batch: Sequence[dict], weighted: bool = False) -> dict[str, torch.Tensor]:
        if self.trainer_cfg.padding_free:
            out = collate_padding_free(batch, getattr(self.trainer_cfg, "row_bucket", None),
                                       self.tokenizer.pad_token_id or 0)
        else:
            out = collate_padded(batch, self.tokenizer.pad_token_id)
        if not weighted:  # eval: the plain token mean, comparable across loss weights
            out.pop("token_weight", None)
        if getattr(self.trainer_cfg, "loss_impl", "model") == "chunked":  # positions whose next token is learned
            out["loss_index"], out["loss_target"] = loss_positions(out["labels"])
        return out

    def _micro_batches(self) -> int:
        """Micro-batches per training batch: grad_accum with trainer.fuse_grad_accum, else 1."""
        return self.trainer_cfg.grad_accum if getattr(self.trainer_cfg, "fuse_grad_accum", False) else 1

    def _collate_train(self, batch: Sequence[dict]) -> dict[str, torch.Tensor]:
        out = self._collate(batch, weighted=True)
        token_weight = None
        # dataset.loss_weight: a weighted token mean (nli_cot.training.loss_weights). The chunked loss takes one weight per
        # loss position; the model-loss path keeps the [batch, length] grid (NliCotModule.compute_loss).
        if "token_weight" in out and "loss_index" in out:
            token_weight = loss_position_weights(out.pop("token_weight"), out["labels"])
        if self._micro_batches() > 1 or token_weight is not None:
            # one fused batch = grad_accum micro-batches, weighted as accumulation does (one micro-batch without
            # fusing: the weights are w / sum(w), the weighted token mean)
            out["loss_weight"] = micro_batch_loss_weights(
                out["loss_index"], out["labels"].shape[1], [len(ex["input_ids"]) for ex in batch],
                self.trainer_cfg.per_device_batch_size if self._micro_batches() > 1 else len(batch),
                self.trainer_cfg.padding_free, token_weight=token_weight,
            )
            scale = fused_grad_scale(len(batch), self.trainer_cfg.per_device_batch_size, self._micro_batches())
            if scale is not None:  # an epoch's short last step: scale its gradients as accumulation does
                out["grad_scale"] = scale
        return out

    def train_dataloader(self) -> ResumableDataLoader:
        sampler = ResumableBatchSampler(
            [len(ex["input_ids"]) for ex in self.train_set],
            self.trainer_cfg.per_device_batch_size * self._micro_batches(),
            seed=self.seed,
            shuffle=True,
            group_by_length=self.trainer_cfg.group_by_length,
            num_replicas=self.trainer.world_size if self.trainer else 1,
            rank=self.trainer.global_rank if self.trainer else 0,
        )
        return ResumableDataLoader(
            self.train_set, batch_sampler=sampler, collate_fn=self._collate_train,
            num_workers=self.trainer_cfg.num_workers,
            generator=self._loader_generator(),
        )

    def _loader_generator(self) -> torch.Generator:
        """Each DataLoader iterator draws a seed from this instead of torch's global RNG, so evaluating (or not,
        after a resume) does not shift the dropout masks of later training steps."""
        return torch.Generator().manual_seed(self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.eval_set,
            batch_size=self.trainer_cfg.eval_batch_size,
            shuffle=False,
            collate_fn=self._collate,
            num_workers=self.trainer_cfg.num_workers,
            generator=self._loader_generator(),
        )
