"""The evaluate stage on synthetic prediction files built from shared NLI pairs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_inprocess
from hydra import compose, initialize_config_dir

from nli_cot.evaluation.evaluate import EvaluationError, run

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def _pairs(n: int) -> list[dict]:
    path = DATA / "rte" / "dev.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (expected <repo>/../shared/data)")
    return [json.loads(line) for line in path.open()][:n]


def _output(label: int, kind: str, rng: random.Random) -> str:
    words = " ".join(
        rng.choice(["the", "man", "premise", "states", "a", "dog", "runs"])
        for _ in range(rng.randint(5, 400))
    )
    thought = f"step 1: {words}. step 3: the hypothesis {'can' if label else 'cannot'} be inferred."
    if kind == "json":
        return json.dumps({"thought_process": thought, "predicted_label": label})
    if kind == "fence":
        return "```json\n" + json.dumps({"thought_process": thought, "predicted_label": str(label)}) + "\n```"
    if kind == "loop":
        return json.dumps({"thought_process": thought, "predicted_label": label}) + " step 3: the" * 50
    return "step 1: " + words  # unparseable


def write_predictions(path: Path, n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for pair in _pairs(n):
        pred = pair["label"] if rng.random() < 0.7 else 1 - pair["label"]
        raw = _output(pred, rng.choice(["json", "json", "json", "fence", "loop", "bad"]), rng)
        rows.append(
            {
                "id": pair["id"],
                "premise": pair["premise"],
                "hypothesis": pair["hypothesis"],
                "label": pair["label"],
                "raw_text": raw,
                "n_generated_tokens": rng.randint(20, 300),
                "latency_s": rng.random(),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _cfg(**overrides: object):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[f"{k}={v}" for k, v in overrides.items()] + ["bootstrap.n_resamples=100"],
        )


def test_run_writes_everything(tmp_path: Path) -> None:
    preds = tmp_path / "pred.jsonl"
    rows = write_predictions(preds)
    out = tmp_path / "eval"
    m = run(_cfg(predictions=preds, out_dir=out))
    for name in (
        "metrics.json",
        "report.md",
        "per_example.jsonl",
        "confusion_matrix.png",
        "accuracy_by_length.png",
        "length_histogram.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*tmp*"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["n"] == len(rows) == m["n"]
    assert sum(map(sum, on_disk["confusion_matrix"]["counts"])) == len(rows)
    lo, hi = on_disk["accuracy"]["ci"]
    assert lo <= on_disk["accuracy"]["value"] <= hi
    assert 0 < on_disk["parsing"]["failure_rate"] < 1
    assert on_disk["parsing"]["rules"]["json"] > 0 and on_disk["parsing"]["rules"]["label_string"] > 0
    assert sum(b["n"] for b in on_disk["accuracy_by_length"].values()) == len(rows)
    assert list(on_disk["accuracy_by_length"]) == ["0-100", "101-200", "201-300", "301+"]
    assert on_disk["repetition"]["loop_share"] > 0
    assert on_disk["generation"]["n_generated_tokens"]["max"] <= 300
    report = (out / "report.md").read_text()
    assert "whitespace-separated words" in report and "| accuracy |" in report
    per = [json.loads(line) for line in (out / "per_example.jsonl").open()]
    assert [p["id"] for p in per] == [r["id"] for r in rows]


def test_stored_fields_are_used_unless_reparse(tmp_path: Path) -> None:
    preds = tmp_path / "pred.jsonl"
    rec = {
        "id": "a",
        "label": 1,
        "raw_text": '{"predicted_label": 1}',
        "predicted_label": 0,
        "ok": True,
        "rule": "json",
    }
    preds.write_text(json.dumps(rec) + "\n")
    assert run(_cfg(predictions=preds, out_dir=tmp_path / "e1", plots=False))["accuracy"]["value"] == 0.0
    assert (
        run(_cfg(predictions=preds, out_dir=tmp_path / "e2", plots=False, reparse=True))["accuracy"]["value"]
        == 1.0
    )


def test_tokenizer_unit(tmp_path: Path) -> None:
    preds = tmp_path / "pred.jsonl"
    write_predictions(preds, n=10)
    m = run(
        _cfg(
            predictions=preds,
            out_dir=tmp_path / "e",
            plots=False,
            tokenizer="mistral_common_v3",
            cache_dir=tmp_path / "cache",
        )
    )
    assert "mistral_common_v3" in m["length_unit"]
    words = run(_cfg(predictions=preds, out_dir=tmp_path / "w", plots=False))
    assert m["thought_length"]["median"] > words["thought_length"]["median"]  # subword tokens outnumber words


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "raw_text": "1"}', "field 'label'"),
        ('{"id": "a", "label": 1}', "field 'raw_text'"),
        ('{"id": "a", "label": 1, "predicted_label": 3}', "field 'predicted_label'"),
        ('{"label": 1, "raw_text": "1"}', "field 'id'"),
    ],
)
def test_bad_records_name_the_field(tmp_path: Path, line: str, message: str) -> None:
    preds = tmp_path / "pred.jsonl"
    preds.write_text(line + "\n")
    with pytest.raises(EvaluationError, match=message):
        run(_cfg(predictions=preds, out_dir=tmp_path / "e"))


def test_cli(tmp_path: Path) -> None:
    preds = tmp_path / "pred.jsonl"
    write_predictions(preds, n=20)
    out = tmp_path / "eval"
    # the successful run: the same __main__ in-process; the error's exit status through a real interpreter
    done = run_inprocess("nli_cot.evaluate", [f"predictions={preds}", f"out_dir={out}", "bootstrap.n_resamples=50"])
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.json").exists() and (out / ".hydra" / "config.yaml").exists()

    missing = [
        sys.executable,
        "-m",
        "nli_cot.evaluate",
        f"predictions={tmp_path / 'nope.jsonl'}",
        f"out_dir={out}",
    ]
    done = subprocess.run(missing, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in done.stderr


def test_scores_from_label_probs_and_votes(tmp_path: Path) -> None:
    preds = tmp_path / "pred.jsonl"
    rows = [
        {
            "id": "a",
            "label": 1,
            "raw_text": '{"predicted_label": 1}',
            "label_probs": {"p_label_1": 0.9},
            "vote_share": 1.0,
        },
        {
            "id": "b",
            "label": 0,
            "raw_text": '{"predicted_label": 1}',
            "label_probs": {"p_label_1": 0.6},
            "vote_share": 0.6,
        },
        {
            "id": "c",
            "label": 0,
            "raw_text": '{"predicted_label": 0}',
            "label_probs": {"p_label_1": 0.2},
            "vote_share": 0.8,
        },
        {"id": "d", "label": 1, "raw_text": "nothing", "label_probs": None},
    ]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = run(_cfg(predictions=preds, out_dir=tmp_path / "e", plots=False))
    lp, votes = m["scores"]["label_probs"], m["scores"]["vote_share"]
    assert lp["n"] == 3 and votes["n"] == 3
    assert lp["brier"] == pytest.approx((0.1**2 + 0.6**2 + 0.2**2) / 3)
    assert lp["roc_auc"] == 1.0
    # vote share -> P(1): 1.0 (voted 1), 0.6 (voted 1), 1 - 0.8 = 0.2 (voted 0)
    assert votes["brier"] == pytest.approx((0.0 + 0.6**2 + 0.2**2) / 3)
    assert "## Scores" in (tmp_path / "e" / "report.md").read_text()
