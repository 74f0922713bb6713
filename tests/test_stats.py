"""nli_cot.core.stats against hand-computed values, brute-force definitions and (when installed) scikit-learn."""

from __future__ import annotations

import itertools
import math
import time
import warnings

import numpy as np
import pytest

from nli_cot.core import metrics
from nli_cot.core import stats as S
from nli_cot.evaluation import compare

# Case A (the one in test_metrics): gold 6 x 0, 4 x 1; one unparsed output (gold 1).
GOLD_A = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
PRED_A = [0, 0, 0, 0, 1, 1, 1, 1, 0, None]
# Case B: unparsed outputs on both gold classes.
GOLD_B = [1, 1, 1, 0, 0]
PRED_B = [1, None, 1, None, 0]


def test_encode_preds() -> None:
    assert S.encode_preds(PRED_A).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, -1]
    two = S.encode_preds([[1, None], [0, 1]])
    assert two.shape == (2, 2) and two.tolist() == [[1, -1], [0, 1]]
    with pytest.raises(ValueError):
        S.encode_preds([[1, 0], [1]])
    with pytest.raises(ValueError):
        S.encode_preds([0, 2])


def test_hand_values_case_a() -> None:
    pred = S.encode_preds(PRED_A)
    # Rows gold 0, 1; columns predicted 0, 1, unparsed.
    assert S.confusion_counts(GOLD_A, pred).tolist() == [[4, 2, 0], [1, 2, 1]]
    assert S.accuracy(GOLD_A, pred) == pytest.approx(6 / 10)
    # recall_0 = 4/6, recall_1 = 2/4 (the unparsed gold-1 output is a miss) -> (2/3 + 1/2) / 2 = 7/12
    assert S.balanced_accuracy(GOLD_A, pred) == pytest.approx(7 / 12)
    # F1_0 = 2*4 / (predicted 5 + support 6) = 8/11; F1_1 = 2*2 / (predicted 4 + support 4) = 1/2
    # macro = (8/11 + 1/2) / 2 = 27/44
    assert S.macro_f1(GOLD_A, pred) == pytest.approx(27 / 44)
    assert S.macro_f1(GOLD_A, pred) == pytest.approx(metrics.macro_f1(GOLD_A, PRED_A))
    # MCC, unparsed (gold 1) -> predicted 0: TP 2, FN 1 + 1 = 2, TN 4, FP 2
    # (2*4 - 2*2) / sqrt((2+2)(2+2)(4+2)(4+2)) = 4 / 24 = 1/6
    assert S.mcc(GOLD_A, pred) == pytest.approx(1 / 6)
    # Plain lists with None are accepted as they are (encoded on the way in).
    assert S.accuracy(GOLD_A, PRED_A) == pytest.approx(0.6)
    assert S.mcc(GOLD_A, [PRED_A, PRED_A]).tolist() == pytest.approx([1 / 6, 1 / 6])


def test_hand_values_case_b() -> None:
    pred = S.encode_preds(PRED_B)
    assert S.confusion_counts(GOLD_B, pred).tolist() == [[1, 0, 1], [0, 2, 1]]
    assert S.accuracy(GOLD_B, pred) == pytest.approx(3 / 5)
    # recall_0 = 1/2, recall_1 = 2/3 -> 7/12
    assert S.balanced_accuracy(GOLD_B, pred) == pytest.approx(7 / 12)
    # F1_0 = 2*1 / (1 + 2) = 2/3; F1_1 = 2*2 / (2 + 3) = 4/5 -> (2/3 + 4/5) / 2 = 11/15
    assert S.macro_f1(GOLD_B, pred) == pytest.approx(11 / 15)
    # MCC: unparsed gold 1 -> FN, unparsed gold 0 -> FP: TP 2, FN 1, TN 1, FP 1
    # (2*1 - 1*1) / sqrt((2+1)(2+1)(1+1)(1+1)) = 1 / 6
    assert S.mcc(GOLD_B, pred) == pytest.approx(1 / 6)


def test_undefined_values() -> None:
    # Everything predicted 1: a margin of the 2x2 table is empty -> MCC 0 (sklearn's convention).
    assert S.mcc([0, 1, 1], [1, 1, 1]) == 0.0
    # Only gold 1: balanced accuracy is the recall of the class present; F1_0 has no support and no prediction.
    assert S.balanced_accuracy([1, 1, 1, 1], [1, 1, 0, -1]) == pytest.approx(0.5)
    assert S.macro_f1([1, 1], [1, 1]) == pytest.approx(0.5)
    assert math.isnan(S.accuracy(np.array([], int), np.array([], int)))
    with pytest.raises(ValueError):
        S.accuracy([0, 2], [0, 1])
    with pytest.raises(ValueError):
        S.accuracy([0, 1], [0, 3])


def test_batch_shapes() -> None:
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 50)
    pred = rng.integers(-1, 2, (2, 3, 50))
    for name, fn in S.METRICS.items():
        out = fn(gold, pred)
        assert out.shape == (2, 3), name
        for i, j in itertools.product(range(2), range(3)):
            assert out[i, j] == pytest.approx(fn(gold, pred[i, j])), name
        # gold with its own batch dimension (e.g. resampled gold) broadcasts against pred.
        gold_b = rng.integers(0, 2, (3, 50))
        out_b = fn(gold_b, pred)
        assert out_b.shape == (2, 3)
        assert out_b[1, 2] == pytest.approx(fn(gold_b[2], pred[1, 2]))
        assert isinstance(fn(gold, pred[0, 0]), float)
    assert set(S.METRICS) == {"accuracy", "balanced_accuracy", "macro_f1", "mcc"}


def _auc_pairs(gold: list[int], score: list[float]) -> float:
    """The definition: share of (positive, negative) pairs ranked right, ties one half."""
    pos = [s for g, s in zip(gold, score, strict=True) if g == 1]
    neg = [s for g, s in zip(gold, score, strict=True) if g == 0]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_roc_auc_ties_and_nan() -> None:
    gold = [0, 0, 1, 1, 0, 1]
    score = [0.1, 0.4, 0.4, 0.8, 0.8, 0.8]
    # positives 0.4, 0.8, 0.8 vs negatives 0.1, 0.4, 0.8:
    # 0.4 -> 1 + 0.5 + 0 = 1.5; each 0.8 -> 1 + 1 + 0.5 = 2.5; (1.5 + 5) / 9 = 13/18
    assert S.roc_auc(gold, score) == pytest.approx(13 / 18)
    assert _auc_pairs(gold, score) == pytest.approx(13 / 18)
    assert S.roc_auc(gold, score) == pytest.approx(metrics.roc_auc(gold, score))
    # NaN scores are dropped and counted.
    summary = S.roc_auc_summary(gold + [1], score + [float("nan")])
    assert summary == {"auc": pytest.approx(13 / 18), "n_pos": 3, "n_neg": 3, "n_nan_dropped": 1}
    assert S.roc_auc(gold + [1], score + [float("nan")]) == pytest.approx(13 / 18)
    assert math.isnan(S.roc_auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(2)
    g = rng.integers(0, 2, 40)
    s = rng.integers(0, 5, (3, 40)).astype(float)  # many ties
    out = S.roc_auc(g, s)
    assert out.shape == (3,)
    for row in range(3):
        assert out[row] == pytest.approx(_auc_pairs(g.tolist(), s[row].tolist()))


def test_holm_textbook() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = S.holm([0.01, None, float("nan"), 0.04, 0.03, 0.005, 0.9])
    assert out[1] is None and math.isnan(out[2])
    # 5 tests: 0.005x5 = 0.025, 0.01x4 = 0.04, 0.03x3 = 0.09, 0.04x2 = 0.08 -> 0.09, 0.9x1 = 0.9
    assert [out[i] for i in (0, 3, 4, 5, 6)] == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.9])
    assert S.holm([0.5, 0.6]) == [1.0, 1.0]  # capped
    assert S.holm([]) == []
    rng = np.random.default_rng(3)
    ps = rng.random(12).tolist()
    assert S.holm(ps) == pytest.approx(compare.holm(ps))


def _seeds_at(gold: np.ndarray, accs: list[float], rng: np.random.Generator) -> np.ndarray:
    """One row per seed, each right on a random share ``acc`` of the examples."""
    return np.stack([np.where(rng.random(len(gold)) < a, gold, 1 - gold) for a in accs])


def test_identical_systems() -> None:
    rng = np.random.default_rng(4)
    gold = rng.integers(0, 2, 300)
    preds = _seeds_at(gold, [0.7, 0.75, 0.8], rng)
    for name in S.METRICS:
        r = S.paired_bootstrap_diff(gold, preds, preds.copy(), name, 500, 0.95, 0)
        # Same seeds resampled independently for a and b can differ, so the CI is not a point; p must be 1.
        assert r["diff"] == 0.0 and r["p"] == 1.0 and r["n"] == 300 and r["seeds"] == [3, 3]
        assert r["ci"][0] <= 0.0 <= r["ci"][1]
        one = preds[:1]
        r1 = S.paired_bootstrap_diff(gold, one, one, name, 500, 0.95, 0)
        assert r1["diff"] == 0.0 and r1["ci"] == [0.0, 0.0] and r1["p"] == 1.0
        t = S.tost(gold, one, one, name, 1e-6, 0.05, 500, 0)
        assert t["diff"] == 0.0 and t["ci90"] == [0.0, 0.0] and t["equivalent"] is True
        assert t["p"] == pytest.approx(1 / 501) and t["margin"] == 1e-6


def test_large_difference() -> None:
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 2, 500)
    a = _seeds_at(gold, [0.9, 0.9, 0.9], rng)
    b = _seeds_at(gold, [0.6, 0.6], rng)
    b[:, :20] = -1
    for name in S.METRICS:
        r = S.paired_bootstrap_diff(gold, a, b, name, 1000, 0.95, 0)
        assert r["diff"] > 0.1 and r["p"] < 0.01 and r["ci"][0] > 0, (name, r)
        assert r["p"] == pytest.approx(2 / 1001)
        assert r["seeds"] == [3, 2]
        # reversed: the same magnitude, the other sign
        rb = S.paired_bootstrap_diff(gold, b, a, name, 1000, 0.95, 0)
        assert rb["diff"] == pytest.approx(-r["diff"]) and rb["ci"][1] < 0 and rb["p"] < 0.01
        t = S.tost(gold, a, b, name, 0.05, 0.05, 1000, 0)
        assert t["equivalent"] is False and t["p"] > 0.5


def test_tost_matches_paired_distribution() -> None:
    rng = np.random.default_rng(6)
    gold = rng.integers(0, 2, 2000)
    a = _seeds_at(gold, [0.80, 0.81], rng)
    b = _seeds_at(gold, [0.80, 0.80], rng)
    r = S.paired_bootstrap_diff(gold, a, b, "accuracy", 1000, 0.90, 7)
    t = S.tost(gold, a, b, "accuracy", 0.03, 0.05, 1000, 7)
    assert t["diff"] == r["diff"] and t["ci90"] == r["ci"]  # same resamples, same 90% interval
    assert t["equivalent"] is True and t["p"] < 0.05
    # A margin inside the interval: not equivalent, p large.
    t2 = S.tost(gold, a, b, "accuracy", abs(r["diff"]) / 10 + 1e-4, 0.05, 1000, 7)
    assert t2["equivalent"] is False and t2["p"] > 0.05


def test_seed_resampling_widens_ci() -> None:
    rng = np.random.default_rng(8)
    gold = rng.integers(0, 2, 1000)
    disagree = _seeds_at(gold, [0.6, 0.75, 0.9], rng)
    for name in S.METRICS:
        both = S.seed_mean_ci(gold, disagree, name, 1000, 0.95, 0)
        ex = S.seed_mean_ci(gold, disagree, name, 1000, 0.95, 0, resample_seeds=False)
        assert both["mean"] == ex["mean"] == pytest.approx(np.mean(both["per_seed"]))
        assert both["ci"][1] - both["ci"][0] > 2 * (ex["ci"][1] - ex["ci"][0]), name
        assert both["ci"][0] < both["mean"] < both["ci"][1]
        # Identical seed rows: resampling seeds changes nothing (same example indices either way).
        same = np.repeat(disagree[:1], 3, axis=0)
        assert (S.seed_mean_ci(gold, same, name, 300, 0.95, 0)["ci"]
                == S.seed_mean_ci(gold, same, name, 300, 0.95, 0, resample_seeds=False)["ci"])
    r = S.seed_mean_ci(gold, disagree, "accuracy", 200, 0.95, 0)
    assert set(r) == {"mean", "ci", "per_seed", "sd", "n", "seeds"}
    assert r["per_seed"] == pytest.approx([float(S.accuracy(gold, p)) for p in disagree])
    assert r["sd"] == pytest.approx(float(np.std(r["per_seed"], ddof=1))) and r["n"] == 1000 and r["seeds"] == 3
    single = S.seed_mean_ci(gold, disagree[0], "accuracy", 200, 0.95, 0)
    assert single["seeds"] == 1 and single["sd"] is None


def test_ci_width_matches_binomial() -> None:
    # One seed, accuracy: the bootstrap SE should be close to sqrt(p(1-p)/n).
    rng = np.random.default_rng(9)
    gold = rng.integers(0, 2, 2000)
    pred = _seeds_at(gold, [0.8], rng)
    r = S.seed_mean_ci(gold, pred, "accuracy", 2000, 0.95, 0)
    acc = r["mean"]
    expected = 2 * 1.959964 * math.sqrt(acc * (1 - acc) / 2000)
    assert r["ci"][1] - r["ci"][0] == pytest.approx(expected, rel=0.15)


def test_fast_path_equals_explicit_resampling() -> None:
    # A callable outside METRICS is evaluated on explicitly resampled copies; with the same seed the example
    # indices are the same, so the weight-matrix (counts) path must give the very same numbers.
    rng = np.random.default_rng(10)
    gold = rng.integers(0, 2, 120)
    a = _seeds_at(gold, [0.7, 0.8, 0.75], rng)
    b = _seeds_at(gold, [0.7, 0.65], rng)
    a[0, :5] = -1
    for name, fn in S.METRICS.items():
        def wrapped(g: np.ndarray, p: np.ndarray, fn=fn) -> np.ndarray:
            return fn(g, p)

        slow_ci = S.seed_mean_ci(gold, a, wrapped, 300, 0.9, 3)
        fast_ci = S.seed_mean_ci(gold, a, name, 300, 0.9, 3)
        assert slow_ci["ci"] == pytest.approx(fast_ci["ci"]) and slow_ci["mean"] == pytest.approx(fast_ci["mean"])
        fast = S.paired_bootstrap_diff(gold, a, b, fn, 300, 0.9, 3)
        slow = S.paired_bootstrap_diff(gold, a, b, wrapped, 300, 0.9, 3)
        assert fast["ci"] == pytest.approx(slow["ci"]) and fast["p"] == slow["p"]


def test_determinism() -> None:
    rng = np.random.default_rng(11)
    gold = rng.integers(0, 2, 400)
    a = _seeds_at(gold, [0.7, 0.8, 0.75], rng)
    b = _seeds_at(gold, [0.72, 0.74, 0.73], rng)
    assert S.seed_mean_ci(gold, a, "macro_f1", 300, 0.95, 42) == S.seed_mean_ci(gold, a, "macro_f1", 300, 0.95, 42)
    r1 = S.paired_bootstrap_diff(gold, a, b, "mcc", 300, 0.95, 42)
    assert r1 == S.paired_bootstrap_diff(gold, a, b, "mcc", 300, 0.95, 42)
    assert r1["ci"] != S.paired_bootstrap_diff(gold, a, b, "mcc", 300, 0.95, 43)["ci"]
    assert S.tost(gold, a, b, "accuracy", 0.05, 0.05, 300, 1) == S.tost(gold, a, b, "accuracy", 0.05, 0.05, 300, 1)


def test_bad_inputs() -> None:
    gold = np.array([0, 1, 1])
    with pytest.raises(ValueError):
        S.seed_mean_ci(gold, np.array([[0, 1]]), "accuracy", 10, 0.95, 0)
    with pytest.raises(ValueError):
        S.seed_mean_ci(gold, np.array([0, 1, 1]), "auc", 10, 0.95, 0)
    with pytest.raises(ValueError):
        S.tost(gold, gold, gold, "accuracy", 0.0, 0.05, 10, 0)
    with pytest.raises(ValueError):
        S.seed_mean_ci(np.array([[0, 1, 1]]), gold, "accuracy", 10, 0.95, 0)


def test_mcnemar_is_reused() -> None:
    assert S.mcnemar is metrics.mcnemar
    gold = np.array([1, 0, 1, 1, 0, 0])
    a = np.array([1, 0, 1, 1, 0, 1])
    b = np.array([1, -1, 0, 1, 1, 1])
    t = S.mcnemar(S.correct(gold, a), S.correct(gold, b), 25)
    assert (t["b"], t["c"]) == (3, 0) and t["p_value"] == pytest.approx(0.25)


def test_speed() -> None:
    # 2,000 resamples x 10,000 examples x 5 seeds (x 2 systems for the paired test): a few seconds at most.
    rng = np.random.default_rng(12)
    gold = rng.integers(0, 2, 10_000)
    a = _seeds_at(gold, [0.8] * 5, rng)
    b = _seeds_at(gold, [0.79] * 5, rng)
    start = time.perf_counter()
    S.seed_mean_ci(gold, a, "macro_f1", 2000, 0.95, 0)
    S.paired_bootstrap_diff(gold, a, b, "mcc", 2000, 0.95, 0)
    assert time.perf_counter() - start < 10.0


@pytest.mark.parametrize("seed", range(4))
def test_against_sklearn(seed: int) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(100 + seed)
    gold = rng.integers(0, 2, 300)
    pred = rng.choice([0, 1, 1, 0, -1], size=300)
    assert S.accuracy(gold, pred) == pytest.approx(skm.accuracy_score(gold, pred))
    assert S.balanced_accuracy(gold, pred) == pytest.approx(
        skm.recall_score(gold, pred, labels=[0, 1], average="macro", zero_division=0))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" (the -1)
        warnings.simplefilter("ignore")
        assert S.balanced_accuracy(gold, pred) == pytest.approx(skm.balanced_accuracy_score(gold, pred))
    assert S.macro_f1(gold, pred) == pytest.approx(
        skm.f1_score(gold, pred, labels=[0, 1], average="macro", zero_division=0))
    worst = np.where(pred == -1, 1 - gold, pred)  # our MCC convention, spelled out for sklearn
    assert S.mcc(gold, pred) == pytest.approx(skm.matthews_corrcoef(gold, worst))
    score = rng.integers(0, 10, 300) / 10  # ties
    assert S.roc_auc(gold, score) == pytest.approx(skm.roc_auc_score(gold, score))
