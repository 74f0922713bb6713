"""Vectorised statistics for comparing binary NLI systems over test examples and training seeds (numpy only).

Features
- Label metrics on arrays, batched: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``mcc``. ``gold`` is (n,)
  or broadcastable to ``pred``; ``pred`` is (..., n) with values 0, 1 or -1 (unparsed); the result is (...,)
  (a numpy float for a single row). ``METRICS`` maps their names to the functions; ``encode_preds`` turns
  lists with None into such arrays. Each metric is a function of the 2 x 3 confusion counts
  (``confusion_counts``: rows gold 0, 1; columns predicted 0, 1, unparsed, as ``nli_cot.core.metrics``), which is
  what makes the bootstrap fast: a resample's counts are one weight-matrix product, not a copy of the data.
- ``roc_auc``: rank-based (Mann-Whitney U, tied scores get their average rank, i.e. a tie counts one half).
- ``seed_mean_ci``: two-level percentile bootstrap of the seed-mean score: each resample draws test examples
  with replacement (the same indices for every seed) and then seed rows with replacement, and averages the
  metric over the drawn seeds. ``resample_seeds=False`` gives the examples-only interval.
- ``paired_bootstrap_diff``: mean over seeds of system a minus that of b, paired over examples (one set of
  example indices per resample, shared by a and b); the seeds of a and of b are resampled independently.
  Two-sided bootstrap p.
- ``tost``: two one-sided tests for equivalence within +-margin, on the same bootstrap distribution as
  ``paired_bootstrap_diff`` (same seed -> same resamples).
- ``holm``: Holm step-down adjusted p-values. ``mcnemar`` is ``nli_cot.core.metrics.mcnemar``, re-exported.
- Seeded and deterministic: the same inputs and ``seed`` give the same numbers. 2,000 resamples x 10,000
  examples x 5 seeds take well under a second per call on one CPU core.

Limits
- Unparsed predictions (-1) are always wrong. Accuracy and balanced accuracy count them against the gold
  class; macro F1 counts them as a false negative of their gold class and as a positive of no class (as
  ``nli_cot.core.metrics`` and sklearn with ``labels=[0, 1]``); MCC, which needs a 2 x 2 table, counts an unparsed
  output as predicting the wrong label (1 - gold), i.e. the worst case for that example.
- Undefined values: accuracy of an empty input is NaN; balanced accuracy averages the recall of the classes
  present in ``gold`` (NaN if none); a class with no prediction and no support has F1 0 (sklearn's
  ``zero_division=0``); MCC is 0 when a margin of the 2 x 2 table is empty (sklearn's convention).
- ``roc_auc`` drops NaN scores (``roc_auc_summary`` reports how many); it is NaN when a class is absent.
- Percentile intervals only (no BCa). The bootstrap p values are ``(count + 1) / (n_resamples + 1)`` style,
  so the smallest attainable is about 2 / n_resamples (two-sided). With few seeds (e.g. 3), the seed level of
  the bootstrap is coarse: it can only draw 10 distinct multisets of 3 seeds.
- A ``metric`` passed as a callable that is not one of ``METRICS`` is evaluated on resampled copies of the
  data, in chunks (slower); it must accept ``gold`` (c, n) and ``pred`` (k, c, n) and return (k, c).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nli_cot.core.metrics import mcnemar

__all__ = [
    "METRICS",
    "accuracy",
    "balanced_accuracy",
    "confusion_counts",
    "correct",
    "encode_preds",
    "holm",
    "macro_f1",
    "mcc",
    "mcnemar",
    "paired_bootstrap_diff",
    "roc_auc",
    "roc_auc_summary",
    "seed_mean_ci",
    "tost",
]

NAN = float("nan")
UNPARSED = -1
Metric = Callable[[np.ndarray, np.ndarray], Any]
# At most this many int64 cells of resampled indices are held at once (~32 MB).
_CHUNK_CELLS = 4_000_000


# ------------------------------------------------------------------------------------------------ inputs


def encode_preds(preds: Sequence[Any]) -> np.ndarray:
    """Labels (or lists of labels, one list per seed) with None for unparsed -> int8 array with -1 for None.

    Raises ValueError on ragged lists or on a value other than 0, 1, None (or -1).
    """
    def enc(p: Any) -> int:
        return UNPARSED if p is None else int(p)

    if len(preds) and isinstance(preds[0], Sequence | np.ndarray):
        lengths = {len(row) for row in preds}
        if len(lengths) > 1:
            raise ValueError(f"prediction rows have different lengths: {sorted(lengths)}")
        out = np.array([[enc(p) for p in row] for row in preds], dtype=np.int8)
    else:
        out = np.array([enc(p) for p in preds], dtype=np.int8)
    if not np.isin(out, (0, 1, UNPARSED)).all():
        raise ValueError("predictions must be 0, 1, None or -1")
    return out


def _gold(gold: Any) -> np.ndarray:
    g = np.asarray(gold)
    if not np.isin(g, (0, 1)).all():
        raise ValueError("gold labels must be 0 or 1")
    return g.astype(np.int64)


def _pred(pred: Any) -> np.ndarray:
    p = np.asarray(pred)
    if p.dtype == object:
        p = encode_preds(p.tolist())
    if not np.isin(p, (0, 1, UNPARSED)).all():
        raise ValueError("predictions must be 0, 1 or -1 (unparsed)")
    return p.astype(np.int64)


def _seeds(preds: Any, n: int, name: str) -> np.ndarray:
    p = _pred(preds)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != n or p.shape[0] == 0:
        raise ValueError(f"{name} must be (n,) or (seeds, n) with n = {n}, got shape {p.shape}")
    return p


def _scalar(x: np.ndarray) -> Any:
    """A 0-d result as a numpy float (a ``float`` subclass), anything else unchanged."""
    x = np.asarray(x, dtype=float)
    return x[()] if x.ndim == 0 else x


# ----------------------------------------------------------------------------------------------- metrics


def confusion_counts(gold: Any, pred: Any) -> np.ndarray:
    """Counts (..., 2, 3): rows gold 0, 1; columns predicted 0, 1, unparsed. ``gold`` broadcasts to ``pred``."""
    g, p = np.broadcast_arrays(_gold(gold), _pred(pred))
    col = p % 3  # 0 -> 0, 1 -> 1, -1 -> 2
    cells = np.stack([((g == r) & (col == c)).sum(-1) for r in (0, 1) for c in (0, 1, 2)], axis=-1)
    return cells.reshape(*cells.shape[:-1], 2, 3).astype(float)


def _div(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    return np.divide(num, den, out=np.full(num.shape, empty), where=den > 0)


def _accuracy_c(c: np.ndarray) -> np.ndarray:
    return _div(c[..., 0, 0] + c[..., 1, 1], c.sum((-2, -1)), NAN)


def _balanced_accuracy_c(c: np.ndarray) -> np.ndarray:
    support = c.sum(-1)  # (..., 2)
    recall = _div(np.stack([c[..., 0, 0], c[..., 1, 1]], -1), support, 0.0)
    present = (support > 0).sum(-1)
    return _div((recall * (support > 0)).sum(-1), present, NAN)


def _macro_f1_c(c: np.ndarray) -> np.ndarray:
    # F1 = 2 tp / (predicted + support); 0 when both are 0. Unparsed: in the support, never predicted.
    f1 = [_div(2 * c[..., k, k], c[..., 0, k] + c[..., 1, k] + c[..., k, :].sum(-1), 0.0) for k in (0, 1)]
    return (f1[0] + f1[1]) / 2


def _mcc_c(c: np.ndarray) -> np.ndarray:
    tp, tn = c[..., 1, 1], c[..., 0, 0]
    fn = c[..., 1, 0] + c[..., 1, 2]  # unparsed on gold 1 = predicted 0
    fp = c[..., 0, 1] + c[..., 0, 2]  # unparsed on gold 0 = predicted 1
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return _div(tp * tn - fp * fn, den, 0.0)


def accuracy(gold: Any, pred: Any) -> Any:
    """Share correct over the last axis (unparsed = wrong); NaN for no examples."""
    return _scalar(_accuracy_c(confusion_counts(gold, pred)))


def balanced_accuracy(gold: Any, pred: Any) -> Any:
    """Mean recall of class 0 and class 1 (unparsed = wrong), over the classes present in ``gold``."""
    return _scalar(_balanced_accuracy_c(confusion_counts(gold, pred)))


def macro_f1(gold: Any, pred: Any) -> Any:
    """Mean of F1 for class 1 and F1 for class 0; unparsed = a false negative of its gold class only."""
    return _scalar(_macro_f1_c(confusion_counts(gold, pred)))


def mcc(gold: Any, pred: Any) -> Any:
    """Matthews correlation; an unparsed output counts as predicting 1 - gold; 0 when undefined."""
    return _scalar(_mcc_c(confusion_counts(gold, pred)))


def correct(gold: Any, pred: Any) -> np.ndarray:
    """Boolean array of right predictions (for ``mcnemar``); unparsed is never right."""
    return _pred(pred) == _gold(gold)


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "macro_f1": macro_f1,
    "mcc": mcc,
}
_FROM_COUNTS: dict[Metric, Callable[[np.ndarray], np.ndarray]] = {
    accuracy: _accuracy_c,
    balanced_accuracy: _balanced_accuracy_c,
    macro_f1: _macro_f1_c,
    mcc: _mcc_c,
}


def _resolve(metric: str | Metric) -> Metric:
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
        return METRICS[metric]
    return metric


# ------------------------------------------------------------------------------------------------- AUC


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    group_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc_summary(gold: Any, score: Any) -> dict[str, Any]:
    """AUC of a 1-D ``score`` for gold 1, with counts: {"auc", "n_pos", "n_neg", "n_nan_dropped"}."""
    g = _gold(gold).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if g.shape != s.shape:
        raise ValueError(f"gold and score have different shapes: {g.shape} vs {s.shape}")
    keep = ~np.isnan(s)
    g, s = g[keep], s[keep]
    n_pos, n_neg = int(g.sum()), int(len(g) - g.sum())
    auc = NAN
    if n_pos and n_neg:
        rank_sum = _average_ranks(s)[g == 1].sum()
        auc = float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return {"auc": auc, "n_pos": n_pos, "n_neg": n_neg, "n_nan_dropped": int((~keep).sum())}


def roc_auc(gold: Any, score: Any) -> Any:
    """Rank-based ROC AUC of ``score`` for gold label 1 (ties count one half), over the last axis.

    ``score`` (..., n), ``gold`` broadcastable. NaN scores are dropped (their count: ``roc_auc_summary``);
    NaN when, after that, one class is absent.
    """
    g, s = np.broadcast_arrays(_gold(gold), np.asarray(score, dtype=float))
    if s.ndim == 0:
        raise ValueError("score must have at least one axis")
    lead = s.shape[:-1]
    flat_g, flat_s = g.reshape(-1, s.shape[-1]), s.reshape(-1, s.shape[-1])
    out = np.array([roc_auc_summary(gr, sr)["auc"] for gr, sr in zip(flat_g, flat_s, strict=True)])
    return _scalar(out.reshape(lead))


# ---------------------------------------------------------------------------------------------- bootstrap


def _resample_seed_means(
    gold: np.ndarray,
    systems: list[np.ndarray],
    metric: Metric,
    n_resamples: int,
    seed: int,
    resample_seeds: bool,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per system: the per-seed metric on the full data (k,) and the bootstrap seed means (n_resamples,).

    One set of example indices per resample is shared by all systems and all seeds; each system's seed rows
    are then drawn with replacement, independently of the other systems'.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if gold.ndim != 1:
        raise ValueError(f"gold must be 1-D, got shape {gold.shape}")
    n = gold.shape[0]
    if n == 0:
        raise ValueError("no examples")
    ex_ss, *seed_ss = np.random.SeedSequence(seed).spawn(1 + len(systems))
    ex_rng = np.random.default_rng(ex_ss)
    ks = [p.shape[0] for p in systems]
    sidx = [
        np.random.default_rng(ss).integers(0, k, size=(n_resamples, k)) if resample_seeds and k > 1
        else np.broadcast_to(np.arange(k), (n_resamples, k))
        for ss, k in zip(seed_ss, ks, strict=True)
    ]
    preds = np.concatenate(systems, axis=0)  # (K, n)
    from_counts = _FROM_COUNTS.get(metric)
    full = [np.asarray(metric(gold, p), dtype=float).reshape(-1) for p in systems]

    if from_counts is not None:
        # One-hot of the 6 confusion cells per (seed, example): a resample's counts = weights @ one-hot.
        cell = 3 * gold[None, :] + preds % 3  # (K, n) in 0..5
        onehot = (cell[:, :, None] == np.arange(6)).astype(float)  # (K, n, 6)
        onehot = onehot.transpose(1, 0, 2).reshape(n, -1)  # (n, K * 6)
    values = np.empty((n_resamples, preds.shape[0]))
    chunk = max(1, min(n_resamples, _CHUNK_CELLS // n))
    for start in range(0, n_resamples, chunk):
        c = min(chunk, n_resamples - start)
        idx = ex_rng.integers(0, n, size=(c, n))
        if from_counts is not None:
            weights = np.bincount((idx + n * np.arange(c)[:, None]).ravel(), minlength=c * n).reshape(c, n)
            counts = (weights.astype(float) @ onehot).reshape(c, -1, 2, 3)
            values[start : start + c] = from_counts(counts)
        else:
            values[start : start + c] = np.asarray(metric(gold[idx], preds[:, idx]), dtype=float).T
    means, offset = [], 0
    for k, si in zip(ks, sidx, strict=True):
        v = values[:, offset : offset + k]
        means.append(np.take_along_axis(v, si, axis=1).mean(1))
        offset += k
    return full, means


def _interval(x: np.ndarray, confidence: float) -> list[float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    tail = (1.0 - confidence) / 2.0 * 100.0
    return [float(v) for v in np.nanpercentile(x, [tail, 100.0 - tail])]


def seed_mean_ci(
    gold: Any,
    preds: Any,
    metric: str | Metric,
    n_resamples: int,
    confidence: float,
    seed: int,
    *,
    resample_seeds: bool = True,
) -> dict[str, Any]:
    """Mean over seeds of ``metric`` with a two-level percentile bootstrap CI.

    ``preds`` (k, n) or (n,). Each resample: examples with replacement (the same indices for every seed), then
    seed rows with replacement (skipped if ``resample_seeds`` is False or k = 1), statistic = mean over the
    drawn seeds. Returns {"mean", "ci": [lo, hi], "per_seed": [...], "sd" (ddof 1; None for one seed),
    "n", "seeds"}.
    """
    g = _gold(gold)
    p = _seeds(preds, g.shape[-1], "preds")
    m = _resolve(metric)
    (full,), (boot,) = _resample_seed_means(g, [p], m, n_resamples, seed, resample_seeds)
    return {
        "mean": float(full.mean()),
        "ci": _interval(boot, confidence),
        "per_seed": [float(x) for x in full],
        "sd": float(full.std(ddof=1)) if len(full) > 1 else None,
        "n": int(g.shape[-1]),
        "seeds": int(p.shape[0]),
    }


def _paired(
    gold: Any, preds_a: Any, preds_b: Any, metric: str | Metric, n_resamples: int, seed: int
) -> tuple[float, np.ndarray, int, list[int]]:
    g = _gold(gold)
    a = _seeds(preds_a, len(g), "preds_a")
    b = _seeds(preds_b, len(g), "preds_b")
    (fa, fb), (ba, bb) = _resample_seed_means(g, [a, b], _resolve(metric), n_resamples, seed, True)
    return float(fa.mean() - fb.mean()), ba - bb, len(g), [int(a.shape[0]), int(b.shape[0])]


def paired_bootstrap_diff(
    gold: Any,
    preds_a: Any,
    preds_b: Any,
    metric: str | Metric,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Seed-mean ``metric`` of a minus that of b, paired over examples, seeds of a and b resampled independently.

    Returns {"diff", "ci": [lo, hi] (percentile), "p", "n", "seeds": [ka, kb]}. ``p`` is two-sided:
    min(1, 2 * (min(#{d* <= 0}, #{d* >= 0}) + 1) / (n_resamples + 1)) over the resampled differences d*,
    i.e. twice the (smoothed) share on the far side of 0; resampled zeros count on both sides (conservative).
    """
    diff, boot, n, ks = _paired(gold, preds_a, preds_b, metric, n_resamples, seed)
    far = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
    p = min(1.0, 2.0 * (far + 1) / (n_resamples + 1))
    return {"diff": diff, "ci": _interval(boot, confidence), "p": p, "n": n, "seeds": ks}


def tost(
    gold: Any,
    preds_a: Any,
    preds_b: Any,
    metric: str | Metric,
    margin: float,
    alpha: float,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Bootstrap two one-sided tests: is |seed-mean a - seed-mean b| < ``margin``?

    The resampled differences are those of ``paired_bootstrap_diff`` with the same seed. p_lower =
    (#{d* <= -margin} + 1) / (n_resamples + 1), p_upper = (#{d* >= margin} + 1) / (n_resamples + 1); the TOST
    p is their max. Returns {"diff", "ci90": the (1 - 2 alpha) percentile interval, "margin", "p",
    "equivalent": ci90 inside (-margin, margin), "n", "seeds"}.
    """
    if margin <= 0:
        raise ValueError("margin must be > 0")
    if not 0.0 < alpha < 0.5:
        raise ValueError("alpha must be in (0, 0.5)")
    diff, boot, n, ks = _paired(gold, preds_a, preds_b, metric, n_resamples, seed)
    ci = _interval(boot, 1.0 - 2.0 * alpha)
    p_lower = (int((boot <= -margin).sum()) + 1) / (n_resamples + 1)
    p_upper = (int((boot >= margin).sum()) + 1) / (n_resamples + 1)
    return {
        "diff": diff,
        "ci90": ci,
        "margin": float(margin),
        "p": max(p_lower, p_upper),
        "equivalent": bool(-margin < ci[0] and ci[1] < margin),
        "n": n,
        "seeds": ks,
    }


# ------------------------------------------------------------------------------------- multiple testing


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values, in the input order; monotone in the sorted order, capped at 1.

    None and NaN are passed through unchanged and do not count as tests. Ties keep their input order.
    """
    def missing(p: float | None) -> bool:
        return p is None or math.isnan(p)

    out: list[float | None] = list(pvalues)
    tested = sorted((float(p), i) for i, p in enumerate(pvalues) if not missing(p))
    m, running = len(tested), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
