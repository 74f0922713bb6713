"""Trivial baselines on the synthetic demo task: can the label be guessed from surface cues alone?

    python experiments/demo_baselines.py [--n-train 2000] [--n-test 600] [--seed 0]

Trained on the demo's train split, scored on its held-out test split (unseen vocabulary): the majority label,
one-feature threshold rules on lengths (the best threshold and direction chosen on train), and bag-of-words
logistic regressions on the hypothesis alone and on the premise + hypothesis (the classic NLI artefact checks).
A learned model should beat all of these clearly; a baseline near 100% would mean the task leaks its label.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from nli_cot import demo_data as dd


def _stump(xs: list[float], ys: list[int]) -> tuple[float, int]:
    """Best threshold t and sign s of the rule label = [s * (x - t) > 0] on the training data."""
    best = (0.0, 0.0, 1)
    for t in sorted(set(xs)):
        for s in (1, -1):
            acc = sum((s * (x - t) > 0) == y for x, y in zip(xs, ys, strict=True)) / len(ys)
            best = max(best, (acc, t, s))
    return best[1], best[2]


def run(n_train: int, n_test: int, seed: int) -> dict[str, tuple[float, dict[str, float]]]:
    """Baseline name -> (test accuracy, accuracy per family)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    splits = dd.build_splits(n_train, 0, n_test, seed)
    train, test = splits["train"], splits["test"]
    y_train, y_test = [e.label for e in train], [e.label for e in test]

    def report(preds: list[int]) -> tuple[float, dict[str, float]]:
        fam: dict[str, list[int]] = defaultdict(list)
        for e, p in zip(test, preds, strict=True):
            fam[e.family].append(int(p == e.label))
        acc = sum(int(p == y) for p, y in zip(preds, y_test, strict=True)) / len(y_test)
        return acc, {f: sum(v) / len(v) for f, v in sorted(fam.items())}

    out = {"majority label of train": report([max((0, 1), key=y_train.count)] * len(test))}
    features = {
        "hypothesis length (words)": lambda e: len(e.hypothesis.split()),
        "length difference h - p (words)": lambda e: len(e.hypothesis.split()) - len(e.premise.split()),
        "word overlap share of h": lambda e: len(dd.words(e.hypothesis) & dd.words(e.premise))
        / max(1, len(dd.words(e.hypothesis))),
    }
    for name, f in features.items():
        t, s = _stump([f(e) for e in train], y_train)
        out[f"threshold on {name}"] = report([int(s * (f(e) - t) > 0) for e in test])
    for name, text in {
        "bag of words, hypothesis only": lambda e: e.hypothesis,
        "bag of words, premise + hypothesis": lambda e: "P_" + " P_".join(e.premise.split()) + " " + e.hypothesis,
    }.items():
        vec = CountVectorizer(token_pattern=r"[A-Za-z_]+", ngram_range=(1, 2), lowercase=False)
        clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform([text(e) for e in train]), y_train)
        out[name] = report(list(clf.predict(vec.transform([text(e) for e in test]))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = run(args.n_train, args.n_test, args.seed)
    families = sorted(next(iter(results.values()))[1])
    print(f"| baseline (train {args.n_train}, test {args.n_test}, seed {args.seed}) | test acc. | "
          + " | ".join(families) + " |")
    print("| --- | ---: |" + " ---: |" * len(families))
    for name, (acc, fam) in results.items():
        print(f"| {name} | {acc:.1%} | " + " | ".join(f"{fam[f]:.0%}" for f in families) + " |")


if __name__ == "__main__":
    main()
