"""The predict stage on the tiny random Mistral: records, resume after SIGKILL, predict -> evaluate -> compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, compose

import nli_cot.inference.predict as predict_mod  # registers the predict schema
from nli_cot.core.records import read_records
from nli_cot.evaluation.compare import main as compare_main
from nli_cot.evaluation.evaluate import run as evaluate_run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def _overrides(output: Path, **extra: object) -> list[str]:
    base = {
        "model": "tiny_mistral",
        "pairs": "esnli",
        "data_root": str(SHARED_DATA),
        "output": str(output),
        "batch_size": 3,
        "limit": 6,
        "progress": "false",
        "decoding.max_new_tokens": 56,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _predict(output: Path, **extra: object) -> dict:
    return predict_mod.run(compose(_overrides(output, **extra), config_name="predict"))


@pytest.fixture(autouse=True)
def _data(shared_data: Path) -> None:
    """Every test here reads shared pairs: skip cleanly without them."""


@pytest.mark.slow  # an end-to-end run: `make test`, not `make test-fast`
def test_predict_evaluate_compare_end_to_end(tmp_path: Path) -> None:
    free = tmp_path / "free.jsonl"
    constrained = tmp_path / "constrained.jsonl"
    summary = _predict(free)
    _predict(constrained, **{"decoding.constrained": "true", "decoding.label_probs": "true"})
    assert summary["done"] == 6 and summary["examples_per_s"] > 0 and summary["generated_tokens_per_s"] > 0
    assert json.loads(Path(f"{free}.summary.json").read_text())["done"] == 6

    records = read_records(constrained)
    pairs = [json.loads(line) for line in (SHARED_DATA / "esnli" / "dev.jsonl").open()][:6]
    assert sorted(r["id"] for r in records) == sorted(p["id"] for p in pairs)
    gold = {p["id"]: p["label"] for p in pairs}
    for r in records:
        assert r["label"] == gold[r["id"]]
        assert r["ok"] and r["rule"] == "json" and r["predicted_label"] in (0, 1)
        assert json.loads(r["raw_text"])["thought_process"] == r["thought"]
        assert r["n_generated_tokens"] <= 56 and r["n_prompt_tokens"] > 0 and r["latency_s"] > 0
        assert 0 <= r["label_probs"]["p_label_1"] <= 1
    for r in read_records(free):
        assert {"raw_text", "predicted_label", "rule", "ok", "finish_reason"} <= set(r)

    evals = []
    for name, preds in (("free", free), ("constrained", constrained)):
        out = tmp_path / f"eval_{name}"
        cfg = compose(
            [f"predictions={preds}", f"out_dir={out}", f"name={name}", "bootstrap.n_resamples=50"], "evaluate"
        )
        metrics = evaluate_run(cfg)
        assert metrics["n"] == 6
        evals.append(out)
    assert json.loads((evals[1] / "metrics.json").read_text())["parsing"]["failure_rate"] == 0.0
    assert compare_main([str(e) for e in evals] + ["--out", str(tmp_path / "cmp")]) == 0
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert cmp["pairs"][0]["n_shared"] == 6


def test_self_consistency_records(tmp_path: Path) -> None:
    out = tmp_path / "sc.jsonl"
    _predict(
        out,
        limit=2,
        **{"decoding.self_consistency": 3, "decoding.constrained": "true", "decoding.temperature": 1.5},
    )
    for r in read_records(out):
        assert sum(r["votes"].values()) == 3 and r["votes"]["none"] == 0
        assert r["vote_share"] == max(r["votes"]["0"], r["votes"]["1"]) / 3
        assert len(r["samples"]) == 3
        assert r["predicted_label"] == (1 if r["votes"]["1"] > r["votes"]["0"] else 0)
        assert r["n_generated_tokens_all_samples"] == sum(s["n_generated_tokens"] for s in r["samples"])


def test_resume_refuses_another_config(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    _predict(out, limit=2, batch_size=2)
    again = _predict(out, limit=2, batch_size=2)
    assert again["already_done"] == 2 and again["done"] == 0
    with pytest.raises(predict_mod.PredictError, match="allow_mixed=true"):
        _predict(out, limit=3, **{"decoding.max_new_tokens": 57})
    assert (
        _predict(out, limit=3, batch_size=2, allow_mixed="true", **{"decoding.max_new_tokens": 57})["done"]
        == 1
    )
    assert len(read_records(out)) == 3


@pytest.mark.slow  # an end-to-end run: `make test`, not `make test-fast`
def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    args = _overrides(out, limit=6, batch_size=2, **{"decoding.max_new_tokens": 32})
    cmd = [sys.executable, "-m", "nli_cot.predict", *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (
            f"predict ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        )
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    before = out.read_bytes()
    complete_before = before[: before.rfind(b"\n") + 1]  # a torn last line, if any, is not a record
    done_before = [json.loads(line)["id"] for line in complete_before.splitlines()]
    assert 2 <= len(done_before) < 6

    resumed = _predict(out, limit=6, batch_size=2, **{"decoding.max_new_tokens": 32})
    assert resumed["already_done"] == len(done_before) and resumed["done"] == 6 - len(done_before)
    after = out.read_bytes()
    assert after.startswith(complete_before)  # finished records are never rewritten
    ids = [r["id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 6
    assert set(done_before) <= set(ids)


def test_bad_pairs_path_is_one_line(tmp_path: Path) -> None:
    args = _overrides(tmp_path / "x.jsonl", **{"pairs.path": str(tmp_path / "missing.jsonl")})
    done = subprocess.run(
        [sys.executable, "-m", "nli_cot.predict", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "missing.jsonl" in lines[-1] and "Traceback" not in done.stderr
