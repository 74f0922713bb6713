"""Paired statistics of the 2026-12-07e H200 runs (train.jsonl here: calls 1, 2 and 5 for Abl0.1, call 3 for Abl1;
one warm H200, four calls, card and nli_cot runs interleaved by repeat index).

    python experiments/results/speed_2026-12-07e/analyse.py      (from the repo root; writes analysis.json)

Two questions, each on the metric it is about:
1. Ratio to the card (whole-run real tok/s and median-step tok/s): each repeat's nli_cot run over the card run of
   the same repeat; a 95% t interval on the mean log ratio over the 3 repeats (n=3: wide by construction).
2. The recompute lever (abl0_1_nodown against abl0_1_default): each repeat pairs one run of each; both saw the same
   batches in the same order (checked), so their measured steps also pair by index (30 pairs, Wilcoxon signed-rank,
   two-sided). The step-level test ignores run-to-run spread; the run-level sign count (3 pairs) does not, but
   cannot reach p < 0.05 with 3 pairs (smallest two-sided p = 0.25).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from scipy.stats import t as student_t
from scipy.stats import wilcoxon

HERE = Path(__file__).parent


def log_ratio_ci(ratios: list[float]) -> dict:
    logs = [math.log(r) for r in ratios]
    m, n = statistics.mean(logs), len(logs)
    half = student_t.ppf(0.975, n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return {"ratios": [round(r, 4) for r in ratios], "geo_mean": math.exp(m),
            "ci95": [math.exp(m - half), math.exp(m + half)], "n": n}


def ratios_to_card(pairs: list[tuple[dict, dict]]) -> dict:
    """(nli_cot run, card run of the same repeat) pairs -> t intervals on the whole-run and median-step ratios."""
    return {"whole_run_tok_s": log_ratio_ci([a["real_tok_per_s"] / b["real_tok_per_s"] for a, b in pairs]),
            "median_step_tok_s": log_ratio_ci([b["median_step_s"] / a["median_step_s"] * a["real_tok_per_step"]
                                               / b["real_tok_per_step"] for a, b in pairs])}


def main() -> None:
    lines = [json.loads(x) for x in (HERE / "train.jsonl").read_text().splitlines()]
    recs = [r for r in lines if r.get("stage") == "train" and r.get("status") == "ok"]
    env = next(r for r in lines if r.get("stage") == "env")
    by = {(r["variant"], r["repeat"]): r for r in recs}
    out: dict = {"device": f"{env['gpu']} ({env['nvidia_smi']}), torch {env['versions']['torch']}, "
                           f"transformers {env['versions']['transformers']}", "vs_card": {}}
    for variant, card in (("abl0_1_default", "card"), ("abl0_1_nodown", "card"), ("abl1_default", "card_abl1")):
        reps = sorted(k[1] for k in by if k[0] == variant)
        pairs = [(by[(variant, i)], by[(card, i)]) for i in reps]
        out["vs_card"][variant] = {
            "card": card,
            **ratios_to_card(pairs),
            "max_reserved_GiB": [pairs[0][0]["mem"]["max_reserved_GiB"], pairs[0][1]["mem"]["max_reserved_GiB"]],
            "reserved_over_card": pairs[0][0]["mem"]["max_reserved_GiB"] / pairs[0][1]["mem"]["max_reserved_GiB"] - 1,
            "probe_loss": [pairs[0][0]["probe_loss"], pairs[0][1]["probe_loss"]],
        }
    da, db = ([by[(v, i)] for i in range(3)] for v in ("abl0_1_default", "abl0_1_nodown"))
    if any(a["batch_shapes"] != b["batch_shapes"] for a, b in zip(da, db, strict=True)):
        raise SystemExit("analyse: default and nodown runs saw different batches; their steps do not pair")
    sa = [s for r in da for s in r["step_intervals_s"]]
    sb = [s for r in db for s in r["step_intervals_s"]]
    diffs = [x - y for x, y in zip(sa, sb, strict=True)]
    test = wilcoxon(sa, sb)
    out["lever_nodown_vs_default"] = {
        "whole_run_tok_s": {"default": [r["real_tok_per_s"] for r in da], "nodown": [r["real_tok_per_s"] for r in db]},
        "median_step_s": {"default": [r["median_step_s"] for r in da], "nodown": [r["median_step_s"] for r in db]},
        "repeats_where_nodown_was_faster_whole_run": sum(b["real_tok_per_s"] > a["real_tok_per_s"]
                                                         for a, b in zip(da, db, strict=True)),
        "n_paired_steps": len(diffs),
        "median_paired_step_diff_s (default - nodown)": statistics.median(diffs),
        "steps_where_nodown_was_faster": sum(d > 0 for d in diffs),
        "wilcoxon_two_sided": {"statistic": float(test.statistic), "p": float(test.pvalue)},
    }
    (HERE / "analysis.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
