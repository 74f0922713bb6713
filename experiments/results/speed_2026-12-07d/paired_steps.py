"""The one same-call A/B of `trainer.recompute_down_proj=false` (abl0_1_nodown) against the shipped Abl0.1 path
(abl0_1_default): one run each on one H100, no card run in the call (the device budget allowed no more).

    python experiments/results/speed_2026-12-07d/paired_steps.py      (from the repo root; writes paired_steps.json)

Both runs saw the same batches in the same order (same seed; the script checks the shapes), so their measured
optimiser steps pair by index. The test is a two-sided Wilcoxon signed-rank test on those 10 paired step times.
It says whether the steps of these two runs differ. It says nothing about run-to-run spread: with one run a side,
this is an anecdote, not a speed ratio to quote.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from scipy.stats import wilcoxon

HERE = Path(__file__).parent


def main() -> None:
    runs = {r["variant"]: r for r in map(json.loads, (HERE / "train.jsonl").read_text().splitlines())
            if r.get("stage") == "train" and r.get("status") == "ok"}
    a, b = runs["abl0_1_default"], runs["abl0_1_nodown"]
    if a["batch_shapes"] != b["batch_shapes"]:
        raise SystemExit("paired_steps: the two runs saw different batches; their steps do not pair")
    sa, sb = a["step_intervals_s"], b["step_intervals_s"]
    diffs = [x - y for x, y in zip(sa, sb, strict=True)]
    test = wilcoxon(sa, sb)
    out = {
        "device": "NVIDIA H100 80GB HBM3 (one call, 2026-12-07 15:23 UTC, transformers 5.17.0)",
        "n_runs_per_side": 1,
        "n_paired_steps": len(diffs),
        "median_step_s": {"abl0_1_default": statistics.median(sa), "abl0_1_nodown": statistics.median(sb)},
        "median_paired_diff_s (default - nodown)": statistics.median(diffs),
        "steps_where_nodown_was_faster": sum(d > 0 for d in diffs),
        "wilcoxon_two_sided": {"statistic": float(test.statistic), "p": float(test.pvalue)},
        "whole_run_tok_s": {"abl0_1_default": a["real_tok_per_s"], "abl0_1_nodown": b["real_tok_per_s"]},
        "max_reserved_GiB": {"abl0_1_default": a["mem"]["max_reserved_GiB"],
                             "abl0_1_nodown": b["mem"]["max_reserved_GiB"]},
        "max_alloc_GiB": {"abl0_1_default": a["mem"]["max_alloc_GiB"], "abl0_1_nodown": b["mem"]["max_alloc_GiB"]},
        "probe_loss": {"abl0_1_default": a["probe_loss"], "abl0_1_nodown": b["probe_loss"]},
    }
    (HERE / "paired_steps.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
