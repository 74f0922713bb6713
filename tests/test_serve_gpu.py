"""experiments/serve_gpu.py's bookkeeping (no model): pairs sampling, quality, agreement, the per-round ratios."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
serve_gpu = pytest.importorskip("serve_gpu")


def ans(label, ok=True, text=None):
    return {"label": label, "ok": ok, "text": text if text is not None else f"t{label}"}


def test_read_pairs_seeded_sample(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2, **({"id": f"x{i}"} if i % 3 else {})}
            for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = serve_gpu.read_pairs(str(path), 4, 0), serve_gpu.read_pairs(str(path), 4, 0)
    assert a == b and len(a) == 4 and len({p["id"] for p in a}) == 4
    assert serve_gpu.read_pairs(str(path), 4, 1) != a  # another seed, another sample
    every = serve_gpu.read_pairs(str(path), 99, 0)
    assert len(every) == 10 and {p["id"] for p in every} >= {"row-0", "x1"}  # an id-less row gets its line's


def test_quality_and_agreement():
    pairs = [{"label": 1}, {"label": 0}, {"label": None}, {"label": 1}]
    answers = [ans(1), ans(1), ans(0), None]  # the last request failed
    q = serve_gpu.quality(answers, pairs)
    assert q == {"answered": 3, "parse_rate": 0.75, "accuracy": 0.5}  # gold known and answered: pairs 0 and 1
    other = [ans(1), ans(0), ans(0, text="other"), ans(1)]
    ag = serve_gpu.agreement(answers, other)
    assert ag["pairs"] == 3 and ag["labels"] == pytest.approx(2 / 3) and ag["texts"] == pytest.approx(1 / 3)
    assert serve_gpu.agreement([None], [ans(1)]) == {"pairs": 0, "labels": None, "texts": None}


def test_summarize_pairs_rounds():
    runs = [
        {"side": "serve", "repeat": 0, "examples_per_s": 10.0},
        {"side": "unmerged", "repeat": 0, "examples_per_s": 20.0, "decode_examples_per_s": 25.0,
         "agreement_with_serve": {"labels": 1.0}},
        {"side": "serve", "repeat": 1, "examples_per_s": 30.0},
        {"side": "unmerged", "repeat": 1, "examples_per_s": 40.0, "decode_examples_per_s": 50.0,
         "agreement_with_serve": {"labels": 0.9}},
        {"side": "serve", "repeat": 2, "timed_out": True},
        {"side": "unmerged", "repeat": 2, "examples_per_s": 1000.0, "decode_examples_per_s": 1000.0},
    ]
    s = serve_gpu.summarize(runs)
    assert s["serve"]["examples_per_s"] == {"n": 2, "median": 20.0, "min": 10.0, "max": 30.0, "rel_spread": 1.0}
    u = s["unmerged"]
    assert u["examples_per_s"]["n"] == 3 and u["examples_per_s"]["median"] == 40.0
    # ratios only within a round, and only rounds with a serve run: 10/20 and 30/40
    assert u["ratio_serve_over_predict"]["min"] == 0.5 and u["ratio_serve_over_predict"]["max"] == 0.75
    assert u["ratio_serve_over_predict"]["median"] == pytest.approx(0.625)
    assert u["ratio_serve_over_predict_decode"]["median"] == pytest.approx((10 / 25 + 30 / 50) / 2)
    assert u["label_agreement_with_serve"]["median"] == pytest.approx(0.95)
    assert serve_gpu.summarize([])["serve"]["examples_per_s"]["median"] is None


def test_markdown_renders_partial_report():
    runs = [{"side": "serve", "repeat": 0, "timed_out": True},
            {"side": "unmerged", "repeat": 0, "examples_per_s": 5.0, "decode_examples_per_s": 6.0, "wall_s": 2.0,
             "parse_rate": 1.0, "accuracy": None, "cuda_max_memory_reserved_bytes": 2**30}]
    report = {"command": "python experiments/serve_gpu.py", "commit": "abc", "n_pairs": 10, "client": "httpx",
              "machine": {"device": "cpu", "date": "today"}, "serve_overrides": [], "runs": runs,
              "args": vars(serve_gpu.parse_args(["--pairs", "x.jsonl"])), "server_cuda": None,
              "serve_failed_total": 0, "serve_lost_total": 0, "notes": ["stopped"], "summary": serve_gpu.summarize(runs)}
    text = serve_gpu.markdown(report)
    assert "timed out" in text and "| 0 | unmerged | 5.00 |" in text and "- stopped" in text and "1.00 |" in text
