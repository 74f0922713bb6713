"""Builds experiments/results/speed_summary.json: the H200 runs of 2026-12-07e on top, the one-call H100 set of
2026-12-07f beside them (its analysis.json: the 3 paired repeats, the profile, the pinned stack), the H100 sets as
history.

    python experiments/results/speed_2026-12-07e/merge_summary.py      (from the repo root)

The H200 ratios come from `bench_train.py speed` on this folder's train.jsonl (calls 1, 2 and 5 for Abl0.1, call 3
for Abl1; one H200 held warm across the calls, each nli_cot run paired with the card run of the same repeat index).
Where a pair spans two calls, `pairs` says so. analysis.json (analyse.py) adds the t intervals and the lever test.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE.parent



def call_of() -> dict[tuple[str, int], int]:
    """Which call (folder callN here) ran each kept run; a pair is in one call only where both sides' calls match."""
    return {(r["variant"], r["repeat"]): int(folder.name.removeprefix("call"))
            for folder in sorted(HERE.glob("call*"))
            for r in map(json.loads, (folder / "train.jsonl").read_text().splitlines())
            if r.get("stage") == "train" and r.get("status") == "ok"}


def history() -> dict:
    spec = importlib.util.spec_from_file_location("merge_07b", RESULTS / "speed_2026-12-07b" / "merge_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build()


def main() -> None:
    h200 = json.loads((HERE / "speed_summary.json").read_text())
    analysis = json.loads((HERE / "analysis.json").read_text())
    calls = call_of()
    pairs = {v: [{"repeat": i, "ours_call": calls[(v, i)], "card_call": calls[(c["card"], i)]}
                 for i in range(c["repeats"])]
             for v, c in h200["configs"].items() if "card" in c}
    vs = analysis["vs_card"]
    hist = history()
    out = {
        **{k: h200[k] for k in ("device", "date", "versions", "commit")},
        "configs": h200["configs"],
        "pairs": pairs,
        "t_intervals_on_log_ratio (n=3)": {v: {m: vs[v][m] for m in ("whole_run_tok_s", "median_step_tok_s")}
                                           for v in vs},
        "lever_nodown_vs_default (H200, 3 repeats each)": analysis["lever_nodown_vs_default"],
        "machine_note": ("One NVIDIA H200 (143,771 MiB, driver 580.159.04, 700 W) held warm across calls 1, 2, 3 and 5 "
                         "(17:05-17:32 UTC); 4 warm-up optimiser steps dropped, 10 measured; a fresh work folder per "
                         "run. Call 4 tried the pinned stack (+x) and failed on import (huggingface_hub 2.4.0 needs "
                         "httpx2/httpcore2, not carried); nothing from it is in the ratios."),
        "targets": {
            "abl0_1_default >= 3x on median-step and whole-run (H200, 3 repeats)": False,
            "abl0_1_default reserved <= card + 5% (8.62 vs 8.37 GiB, +2.9%)": True,
            "abl0_1_default first-batch loss identical to the card's (11.21971 vs 11.22012)": False,
            "abl0_1_default first-batch loss within 1e-4 relative of the card's (3.6e-5: bf16 rounding)": True,
            "abl1_default >= 3x on median-step and whole-run (H200, 3 repeats)": True,
            "abl1_default reserved <= card + 5% (29.34 vs 27.44 GiB, +6.9%)": False,
            "abl0_1_nodown faster than abl0_1_default (H200, 3 repeats)": False,
            "abl0_1_default >= 3x on median-step and whole-run (H100, 3 repeats in one call, 07f)": False,
            "abl0_1_default runs on the pinned stack (transformers 5.24.0; 07f: failed to compile before the fix, "
            "the fix not yet run on a GPU)": None,
        },
        "one_call_h100_2026-12-07f": json.loads((RESULTS / "speed_2026-12-07f" / "analysis.json").read_text()),
        "inference (H100, 2026-12-07 calls D and 3: not re-run on the H200)": hist["inference"],
        "history_h100_2026-12-07": hist,
        "sources": {"H200 runs (07e)": "experiments/results/speed_2026-12-07e/",
                    "one H100 call, profile, pinned stack (07f)": "experiments/results/speed_2026-12-07f/",
                    "H100 history": "experiments/results/speed_2026-12-07{,b,c,d}/"},
    }
    (RESULTS / "speed_summary.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
