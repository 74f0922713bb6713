"""Comparing evaluation dirs: table, plot, paired McNemar on shared ids."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_evaluate import _cfg, write_predictions  # noqa: E402

from nli_cot.evaluation.compare import holm, main  # noqa: E402
from nli_cot.evaluation.evaluate import run  # noqa: E402


def _eval(tmp: Path, name: str, seed: int, n: int = 40) -> Path:
    preds = tmp / f"{name}.jsonl"
    write_predictions(preds, n=n, seed=seed)
    out = tmp / name
    run(_cfg(predictions=preds, out_dir=out, plots=False, name=name))
    return out


def test_compare_three_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = [_eval(tmp_path, "abl0_1", 0), _eval(tmp_path, "abl0_2", 1), _eval(tmp_path, "abl1", 2, n=30)]
    out = tmp_path / "cmp"
    assert main([str(d) for d in dirs] + ["--out", str(out)]) == 0
    md = (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 0
    for name in ("abl0_1", "abl0_2", "abl1"):
        assert f"| {name} |" in md
    data = json.loads((out / "comparison.json").read_text())
    assert len(data["pairs"]) == 3
    full = data["pairs"][0]
    assert (full["a"], full["b"], full["n_shared"], full["only_a"]) == ("abl0_1", "abl0_2", 40, 0)
    assert full["test"]["method"] in ("exact_binomial", "chi2_continuity")
    # McNemar's discordant counts agree with the per-example rows
    rows = [
        {r["id"]: r["correct"] for r in map(json.loads, (d / "per_example.jsonl").open())} for d in dirs[:2]
    ]
    b = sum(rows[0][i] and not rows[1][i] for i in rows[0])
    assert full["test"]["b"] == b
    partial = data["pairs"][1]
    assert (partial["n_shared"], partial["only_a"], partial["only_b"]) == (30, 10, 0)
    assert "outside their shared set" in md
    assert all(p["p_holm"] >= p["test"]["p_value"] for p in data["pairs"])


def test_missing_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _eval(tmp_path, "a", 0, n=10)
    assert main([str(good), str(tmp_path / "nope"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "metrics.json" in err[0]


def test_holm() -> None:
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
