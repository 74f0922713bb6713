"""Pure metric functions for binary NLI with written reasoning (no I/O, no model, no config).

Features
- Classification: accuracy, per-class and macro precision/recall/F1, confusion matrix with an extra
  "no label" column, label bias (share predicted 0 vs share gold 0).
- Parsing health: parse-failure rate, rate of labels rescued by a fallback parser rule.
- Reasoning text: repeated n-gram rate (per text), distinct-n (corpus), length quartiles, accuracy by
  length bucket (the source report's 0-100 / 101-200 / 201-300 / 301+ tokens).
- Uncertainty: seeded percentile-bootstrap confidence intervals for any statistic; McNemar's paired test
  (exact binomial for few discordant pairs, chi-square with continuity correction otherwise).

Conventions (limits)
- A prediction is 0, 1 or None (unparseable). None is always wrong: accuracy and recall count it against the
  example's gold class; it is a false positive of no class, so it never raises precision.
- Rates over an empty input are NaN (``float("nan")``), never an exception; JSON writers map NaN to null.
- Token lists are whatever the caller tokenised with; the functions do not tokenise.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Label = int | None
LABELS: tuple[int, int] = (0, 1)
NAN = float("nan")


def _check_lengths(*seqs: Sequence[Any]) -> int:
    lengths = {len(s) for s in seqs}
    if len(lengths) > 1:
        raise ValueError(f"inputs have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _rate(num: float, den: float) -> float:
    return num / den if den else NAN


def accuracy(gold: Sequence[int], pred: Sequence[Label]) -> float:
    """Share of examples whose prediction equals the gold label (None counts as wrong)."""
    n = _check_lengths(gold, pred)
    return _rate(sum(g == p for g, p in zip(gold, pred, strict=True)), n)


def confusion_matrix(gold: Sequence[int], pred: Sequence[Label]) -> list[list[int]]:
    """Rows gold 0, 1; columns predicted 0, 1, None (unparseable)."""
    _check_lengths(gold, pred)
    matrix = [[0, 0, 0], [0, 0, 0]]
    for g, p in zip(gold, pred, strict=True):
        if g not in LABELS:
            raise ValueError(f"gold label must be 0 or 1, got {g!r}")
        matrix[g][2 if p is None else p] += 1
    return matrix


def precision_recall_f1(gold: Sequence[int], pred: Sequence[Label]) -> dict[str, dict[str, float]]:
    """Per class ("0", "1") and "macro": precision, recall, f1 (support for classes). 0/0 gives 0.0 like sklearn."""
    matrix = confusion_matrix(gold, pred)
    out: dict[str, dict[str, float]] = {}
    for c in LABELS:
        tp = matrix[c][c]
        predicted = matrix[0][c] + matrix[1][c]
        support = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[str(c)] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    out["macro"] = {
        k: float(np.mean([out[str(c)][k] for c in LABELS])) for k in ("precision", "recall", "f1")
    }
    return out


def macro_f1(gold: Sequence[int], pred: Sequence[Label]) -> float:
    return precision_recall_f1(gold, pred)["macro"]["f1"]


def balanced_accuracy(gold: Sequence[int], pred: Sequence[Label]) -> float:
    """Mean of the per-class recalls (None counts as wrong): 0.5 for any constant predictor."""
    prf = precision_recall_f1(gold, pred)
    return float(np.mean([prf[str(c)]["recall"] for c in LABELS]))


def parse_failure_rate(ok: Sequence[bool]) -> float:
    """Share of outputs from which no label could be read."""
    return _rate(sum(not o for o in ok), len(ok))


def rescued_rate(rules: Sequence[str], ok: Sequence[bool], strict_rule: str = "json") -> float:
    """Share of all outputs whose label was found only by a fallback rule (parsed, but not as clean JSON)."""
    n = _check_lengths(rules, ok)
    return _rate(sum(o and r != strict_rule for r, o in zip(rules, ok, strict=True)), n)


def rule_counts(rules: Sequence[str]) -> dict[str, int]:
    """How often each parser rule fired, most frequent first."""
    return dict(Counter(rules).most_common())


def label_bias(gold: Sequence[int], pred: Sequence[Label]) -> dict[str, float]:
    """Share predicted 0 (among parsed outputs) vs share gold 0; positive ``bias_to_0`` = leans to 0."""
    _check_lengths(gold, pred)
    parsed = [p for p in pred if p is not None]
    pred0 = _rate(sum(p == 0 for p in parsed), len(parsed))
    gold0 = _rate(sum(g == 0 for g in gold), len(gold))
    return {"pred_share_0": pred0, "gold_share_0": gold0, "bias_to_0": pred0 - gold0}


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(tokens: Sequence[str], n: int) -> float:
    """Share of a text's n-grams that repeat an earlier n-gram of the same text (0 = no repetition).

    A model stuck in a loop ("step 3: the step 3: the ...") drives this towards 1; NaN when the text is
    shorter than n tokens.
    """
    grams = ngrams(tokens, n)
    return _rate(len(grams) - len(set(grams)), len(grams))


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Corpus distinct-n (Li et al., 2016): unique n-grams / all n-grams over every text."""
    grams = [g for tokens in token_lists for g in ngrams(tokens, n)]
    return _rate(len(set(grams)), len(grams))


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """min, q1, median, q3, max and mean (numpy's linear interpolation); NaN for an empty input."""
    if not len(values):
        return {k: NAN for k in ("min", "q1", "median", "q3", "max", "mean")}
    arr = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {
        "min": float(arr.min()),
        "q1": float(q1),
        "median": float(med),
        "q3": float(q3),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
    }


def bucket_names(edges: Sequence[int]) -> list[str]:
    """Names of the buckets cut at inclusive upper ``edges``: [100, 200] -> 0-100, 101-200, 201+."""
    names, low = [], 0
    for edge in edges:
        names.append(f"{low}-{edge}")
        low = edge + 1
    names.append(f"{low}+")
    return names


def bucket_of(length: int, edges: Sequence[int]) -> int:
    for i, edge in enumerate(edges):
        if length <= edge:
            return i
    return len(edges)


def accuracy_by_bucket(
    lengths: Sequence[int], correct: Sequence[bool], edges: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Per length bucket: n and accuracy (NaN for an empty bucket). ``edges`` are inclusive upper bounds."""
    _check_lengths(lengths, correct)
    names = bucket_names(edges)
    hits = [0] * len(names)
    counts = [0] * len(names)
    for length, ok in zip(lengths, correct, strict=True):
        b = bucket_of(length, edges)
        counts[b] += 1
        hits[b] += bool(ok)
    return {name: {"n": counts[i], "accuracy": _rate(hits[i], counts[i])} for i, name in enumerate(names)}


def bootstrap_ci(
    statistic: Callable[..., float],
    *columns: Sequence[Any],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*columns)``, resampling rows (the same rows for every column).

    Seeded: the same inputs and seed give the same interval. NaN bounds for an empty input.
    """
    n = _check_lengths(*columns)
    if n == 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(c, dtype=object) for c in columns]
    stats = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        stats[i] = statistic(*(a[idx].tolist() for a in arrays))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def binom_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair coin flips (doubling the smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact_below: int) -> dict[str, Any]:
    """McNemar's test on paired correctness of two systems on the same examples.

    b = A right and B wrong, c = A wrong and B right. With b + c < ``exact_below`` the exact binomial test
    (b ~ Bin(b + c, 1/2)); otherwise chi-square with continuity correction, (|b - c| - 1)^2 / (b + c), 1 df.
    """
    _check_lengths(correct_a, correct_b)
    b = sum(bool(x) and not bool(y) for x, y in zip(correct_a, correct_b, strict=True))
    c = sum(not bool(x) and bool(y) for x, y in zip(correct_a, correct_b, strict=True))
    if b + c < exact_below:
        return {
            "b": b,
            "c": c,
            "method": "exact_binomial",
            "statistic": float(min(b, c)),
            "p_value": binom_two_sided_p(b, b + c),
        }
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    # Survival function of chi-square with 1 df: P(X > s) = erfc(sqrt(s / 2)).
    return {
        "b": b,
        "c": c,
        "method": "chi2_continuity",
        "statistic": stat,
        "p_value": math.erfc(math.sqrt(stat / 2)),
    }


def brier(gold: Sequence[int], p1: Sequence[float]) -> float:
    """Mean squared error of P(label 1) against the gold label (0 is perfect, 0.25 is a coin)."""
    n = _check_lengths(gold, p1)
    return _rate(sum((p - g) ** 2 for g, p in zip(gold, p1, strict=True)), n)


def expected_calibration_error(gold: Sequence[int], p1: Sequence[float], n_bins: int) -> float:
    """ECE of the predicted label's confidence max(p1, 1 - p1), in ``n_bins`` equal-width bins over [0, 1].

    Sum over bins of (bin share) x |accuracy - mean confidence|; the predicted label is 1 when p1 >= 0.5.
    """
    n = _check_lengths(gold, p1)
    if n == 0:
        return NAN
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for g, p in zip(gold, p1, strict=True):
        conf = max(p, 1.0 - p)
        bins[min(int(conf * n_bins), n_bins - 1)].append((conf, (p >= 0.5) == bool(g)))
    return sum(
        len(b) / n * abs(sum(ok for _, ok in b) / len(b) - sum(c for c, _ in b) / len(b)) for b in bins if b
    )


def roc_auc(gold: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve of ``score`` for gold label 1 (ties count one half); NaN with one class only."""
    _check_lengths(gold, score)
    pos = [s for g, s in zip(gold, score, strict=True) if g == 1]
    neg = [s for g, s in zip(gold, score, strict=True) if g != 1]
    if not pos or not neg:
        return NAN
    # Mann-Whitney U through average ranks: O(n log n).
    order = sorted(range(len(score)), key=lambda i: score[i])
    ranks = [0.0] * len(score)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and score[order[j + 1]] == score[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = sum(r for r, g in zip(ranks, gold, strict=True) if g == 1)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg))
