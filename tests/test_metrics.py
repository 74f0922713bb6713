"""Metric functions against hand-computed values, scikit-learn and scipy."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nli_cot.core import metrics as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")
scipy_stats = pytest.importorskip("scipy.stats")

# 10 examples, hand-checked: gold 6 x 0, 4 x 1; one unparseable (gold 1).
GOLD = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
PRED = [0, 0, 0, 0, 1, 1, 1, 1, 0, None]


def test_hand_values() -> None:
    assert M.accuracy(GOLD, PRED) == pytest.approx(0.6)
    assert M.confusion_matrix(GOLD, PRED) == [[4, 2, 0], [1, 2, 1]]
    prf = M.precision_recall_f1(GOLD, PRED)
    # class 0: tp 4, predicted 5, support 6; class 1: tp 2, predicted 4, support 4
    assert prf["0"]["precision"] == pytest.approx(4 / 5)
    assert prf["0"]["recall"] == pytest.approx(4 / 6)
    assert prf["0"]["f1"] == pytest.approx(2 * 0.8 * (2 / 3) / (0.8 + 2 / 3))
    assert prf["1"]["precision"] == pytest.approx(0.5)
    assert prf["1"]["recall"] == pytest.approx(0.5)
    assert prf["1"]["f1"] == pytest.approx(0.5)
    assert prf["0"]["support"] == 6 and prf["1"]["support"] == 4
    assert prf["macro"]["f1"] == pytest.approx((prf["0"]["f1"] + 0.5) / 2)
    bias = M.label_bias(GOLD, PRED)
    assert bias["pred_share_0"] == pytest.approx(5 / 9)
    assert bias["gold_share_0"] == pytest.approx(0.6)
    assert bias["bias_to_0"] == pytest.approx(5 / 9 - 0.6)


def _random_case(seed: int, n: int = 200) -> tuple[list[int], list[int | None]]:
    rng = random.Random(seed)
    gold = [rng.randint(0, 1) for _ in range(n)]
    pred = [rng.choice([0, 1, 1, 0, None]) for _ in range(n)]
    return gold, pred


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed: int) -> None:
    gold, pred = _random_case(seed)
    as_int = [-1 if p is None else p for p in pred]  # sklearn needs a number: -1 is a class of neither
    assert M.accuracy(gold, pred) == pytest.approx(sklearn_metrics.accuracy_score(gold, as_int))
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(gold, as_int, labels=[0, 1], zero_division=0)
    ours = M.precision_recall_f1(gold, pred)
    for c in (0, 1):
        assert ours[str(c)]["precision"] == pytest.approx(p[c])
        assert ours[str(c)]["recall"] == pytest.approx(r[c])
        assert ours[str(c)]["f1"] == pytest.approx(f[c])
        assert ours[str(c)]["support"] == s[c]
    macro = sklearn_metrics.f1_score(gold, as_int, labels=[0, 1], average="macro", zero_division=0)
    assert M.macro_f1(gold, pred) == pytest.approx(macro)
    cm = sklearn_metrics.confusion_matrix(gold, as_int, labels=[0, 1, -1])
    assert M.confusion_matrix(gold, pred) == cm[:2].tolist()


def test_zero_division_and_empty() -> None:
    prf = M.precision_recall_f1([0, 0], [None, None])
    assert prf["0"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert math.isnan(M.accuracy([], []))
    assert math.isnan(M.parse_failure_rate([]))
    with pytest.raises(ValueError, match="different lengths"):
        M.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="gold label"):
        M.confusion_matrix([2], [0])


def test_parse_rates() -> None:
    ok = [True, True, True, False]
    rules = ["json", "truncated", "label_word", "unparseable"]
    assert M.parse_failure_rate(ok) == pytest.approx(0.25)
    assert M.rescued_rate(rules, ok) == pytest.approx(0.5)
    assert M.rule_counts(["json", "json", "truncated"]) == {"json": 2, "truncated": 1}


def test_repetition() -> None:
    loop = "step 3 : the step 3 : the step 3 : the".split()
    # 12 tokens -> 10 trigrams; distinct: (step 3 :), (3 : the), (: the step), (the step 3) = 4 -> 6 repeats
    assert M.repeated_ngram_rate(loop, 3) == pytest.approx(6 / 10)
    assert M.repeated_ngram_rate("a b c d".split(), 2) == 0.0
    assert math.isnan(M.repeated_ngram_rate(["a"], 2))
    # distinct-2 over two texts: a b, b c | a b, b d -> 4 bigrams, 3 unique
    assert M.distinct_n([["a", "b", "c"], ["a", "b", "d"]], 2) == pytest.approx(3 / 4)
    assert M.distinct_n([["a", "b", "c"]], 1) == 1.0


def test_quartiles() -> None:
    q = M.quartiles([1, 2, 3, 4, 5, 6, 7, 8])
    assert q == {"min": 1.0, "q1": 2.75, "median": 4.5, "q3": 6.25, "max": 8.0, "mean": 4.5}
    assert math.isnan(M.quartiles([])["median"])


def test_length_buckets() -> None:
    edges = [100, 200, 300]
    assert M.bucket_names(edges) == ["0-100", "101-200", "201-300", "301+"]
    assert [M.bucket_of(x, edges) for x in (0, 100, 101, 200, 201, 300, 301, 5000)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    got = M.accuracy_by_bucket([50, 100, 150, 350, 400], [True, False, True, True, True], edges)
    assert got["0-100"] == {"n": 2, "accuracy": 0.5}
    assert got["101-200"] == {"n": 1, "accuracy": 1.0}
    assert got["201-300"]["n"] == 0 and math.isnan(got["201-300"]["accuracy"])
    assert got["301+"] == {"n": 2, "accuracy": 1.0}


def test_bootstrap_ci_is_seeded_and_sane() -> None:
    gold, pred = _random_case(0, n=300)
    kwargs = {"n_resamples": 300, "confidence": 0.95, "seed": 7}
    low, high = M.bootstrap_ci(M.accuracy, gold, pred, **kwargs)
    assert (low, high) == M.bootstrap_ci(M.accuracy, gold, pred, **kwargs)
    acc = M.accuracy(gold, pred)
    assert low < acc < high
    # Normal-approximation half-width for a proportion; the percentile bootstrap should be close.
    half = 1.96 * math.sqrt(acc * (1 - acc) / len(gold))
    assert (high - low) / 2 == pytest.approx(half, rel=0.25)
    assert M.bootstrap_ci(M.accuracy, [1] * 20, [1] * 20, **kwargs) == (1.0, 1.0)
    assert all(math.isnan(x) for x in M.bootstrap_ci(M.accuracy, [], [], **kwargs))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (3, 9), (10, 2), (12, 12)])
def test_mcnemar_exact_vs_scipy(b: int, c: int) -> None:
    a = [True] * b + [False] * c + [True] * 5 + [False] * 4
    bb = [False] * b + [True] * c + [True] * 5 + [False] * 4
    res = M.mcnemar(a, bb, exact_below=25)
    assert (res["b"], res["c"], res["method"]) == (b, c, "exact_binomial")
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert res["p_value"] == pytest.approx(expected)


@pytest.mark.parametrize(("b", "c"), [(30, 10), (20, 25), (100, 60)])
def test_mcnemar_chi2_vs_scipy(b: int, c: int) -> None:
    a = [True] * b + [False] * c
    bb = [False] * b + [True] * c
    res = M.mcnemar(a, bb, exact_below=25)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert res["method"] == "chi2_continuity"
    assert res["statistic"] == pytest.approx(stat)
    assert res["p_value"] == pytest.approx(scipy_stats.chi2.sf(stat, 1))


def test_mcnemar_hand_value() -> None:
    # b=1, c=7: exact two-sided p = 2 * (C(8,0) + C(8,1)) / 2^8 = 18/256
    a = [True] + [False] * 7
    b = [False] + [True] * 7
    assert M.mcnemar(a, b, exact_below=25)["p_value"] == pytest.approx(18 / 256)
    assert np.isclose(M.binom_two_sided_p(4, 8), 1.0)


def test_brier_and_auc_vs_sklearn() -> None:
    rng = random.Random(3)
    gold = [rng.randint(0, 1) for _ in range(150)]
    p1 = [round(rng.random(), 2) for _ in range(150)]  # rounded: ties exercise the average ranks
    assert M.brier(gold, p1) == pytest.approx(sklearn_metrics.brier_score_loss(gold, p1))
    assert M.roc_auc(gold, p1) == pytest.approx(sklearn_metrics.roc_auc_score(gold, p1))
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.3]))


def test_ece_hand_value() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.8 (right) with 10 bins:
    # bin 9: {0.9 ok, 0.9 wrong} -> |0.5 - 0.9| * 2/4 = 0.2; bin 6: |1 - 0.6| * 1/4 = 0.1; bin 8: |1 - 0.8| * 1/4 = 0.05
    gold = [1, 0, 0, 1]
    p1 = [0.9, 0.9, 0.4, 0.8]
    assert M.expected_calibration_error(gold, p1, n_bins=10) == pytest.approx(0.35)
    assert M.expected_calibration_error([1, 0], [1.0, 0.0], n_bins=10) == 0.0
