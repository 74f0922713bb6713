"""Surface-cue baselines of the demo task: can the label be guessed without reasoning?

    python -m nli_cot.demo_baselines [--n-train 4000] [--n-eval 600] [--split dev|test] [--seed 0] [--families ...]

Each baseline is fit on the demo's train pairs only (hyper-parameters, where there are any, on dev) and scored on
the held-out split; ``nli_cot.demo`` puts them beside zero-shot and fine-tuned in its before/after table.

- ``hypothesis-only BoW``, ``premise + hypothesis BoW``: ``nli_cot.baselines``' logistic regressions (``hyp_bow``,
  ``bow``: n-grams of each side plus word/bigram overlap and negation features, C chosen on dev).
- ``length``: a depth-2 decision tree on premise length, hypothesis length and their difference (words).
- ``keyword rules, per family``: for each rule family, a depth-4 decision tree on which words occur in the premise
  and which in the hypothesis (a learned set of if-then keyword rules), fit on that family's train pairs.

A baseline near the fine-tuned model would mean the task leaks its label through the surface; the demo's
templates keep every one near chance on held-out vocabulary (tests/test_demo_data.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from nli_cot.core.pairs import Pair
from nli_cot.evaluation.baselines import BowConfig, fit_bow, tokenize
from nli_cot.orchestration import demo_data as dd

KEYWORD_TREE_DEPTH = 4  # a few if-then rules per family: enough for "H has 'not' and P has one" kinds of rule
LENGTH_TREE_DEPTH = 2  # two thresholds on lengths: the classic length artefact check, a little stronger


def _pairs(records: Sequence[dict[str, Any]]) -> list[Pair]:
    return [Pair(str(r["id"]), r["premise"], r["hypothesis"], int(r["label"])) for r in records]


def _family(record: dict[str, Any]) -> str:
    return str(record.get("source", "")).removeprefix(dd.SOURCE_PREFIX)


def _lengths(records: Sequence[dict[str, Any]]) -> np.ndarray:
    p = np.array([len(tokenize(r["premise"])) for r in records])
    h = np.array([len(tokenize(r["hypothesis"])) for r in records])
    return np.stack([p, h, h - p], axis=1)


def _keyword_text(record: dict[str, Any]) -> str:
    return " ".join(["P_" + w for w in tokenize(record["premise"])] + ["H_" + w for w in tokenize(record["hypothesis"])])


def surface_baselines(
    train: Sequence[dict[str, Any]], dev: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]], seed: int = 0
) -> dict[str, list[int]]:
    """Baseline name -> predicted label of every ``test`` record (records in the demo's SFT schema)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.tree import DecisionTreeClassifier

    y_train = np.array([int(r["label"]) for r in train])
    out: dict[str, list[int]] = {}
    train_p, dev_p, test_p = _pairs(train), _pairs(dev), _pairs(test)
    for name, hyp_only in (("hypothesis-only BoW", True), ("premise + hypothesis BoW", False)):
        predict, _ = fit_bow(train_p, dev_p, BowConfig(), seed, hyp_only=hyp_only)
        out[name] = [int(p >= 0.5) for p in predict(test_p)]
    tree = DecisionTreeClassifier(max_depth=LENGTH_TREE_DEPTH, random_state=seed).fit(_lengths(train), y_train)
    out["length"] = [int(x) for x in tree.predict(_lengths(test))]
    keyword = [0] * len(test)
    for family in sorted({_family(r) for r in test}):
        fam_train = [r for r in train if _family(r) == family]
        idx = [i for i, r in enumerate(test) if _family(r) == family]
        if not fam_train:  # a family the training pairs lack: the train majority label
            for i in idx:
                keyword[i] = int(y_train.mean() >= 0.5)
            continue
        vec = CountVectorizer(binary=True, lowercase=False, token_pattern=r"\S+")
        x = vec.fit_transform([_keyword_text(r) for r in fam_train])
        rules = DecisionTreeClassifier(max_depth=KEYWORD_TREE_DEPTH, random_state=seed)
        rules.fit(x, [int(r["label"]) for r in fam_train])
        for i, p in zip(idx, rules.predict(vec.transform([_keyword_text(test[i]) for i in idx])), strict=True):
            keyword[i] = int(p)
    out["keyword rules, per family"] = keyword
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-eval", type=int, default=600, help="pairs of the scored split (and of dev, for C)")
    ap.add_argument("--split", choices=["dev", "test"], default="dev", help="test only for final numbers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="+", default=list(dd.FAMILIES))
    a = ap.parse_args(argv)
    try:
        splits = dd.build_splits(a.n_train, a.n_eval, a.n_eval if a.split == "test" else 12, a.seed, a.families)
    except dd.DemoDataError as err:
        raise SystemExit(f"error: {err}") from None
    recs = {k: [dd.to_record(e, k, i) for i, e in enumerate(v)] for k, v in splits.items()}
    scored = recs[a.split]
    preds = surface_baselines(recs["train"], recs["dev"], scored, a.seed)
    families = sorted({_family(r) for r in scored})
    print(f"| baseline (train {a.n_train}, {a.split} {len(scored)}, seed {a.seed}) | accuracy | "
          + " | ".join(families) + " |")
    print("| --- | ---: |" + " ---: |" * len(families))
    for name, pred in preds.items():
        right = [int(p == r["label"]) for p, r in zip(pred, scored, strict=True)]
        fam = {f: np.mean([c for c, r in zip(right, scored, strict=True) if _family(r) == f]) for f in families}
        print(f"| {name} | {np.mean(right):.1%} | " + " | ".join(f"{fam[f]:.0%}" for f in families) + " |")


if __name__ == "__main__":
    main()
