"""Gathers the 2026-12-07 H100 calls' summaries (each call's pairs interleaved in it). Superseded as the writer of
experiments/results/speed_summary.json by speed_2026-12-07e/merge_summary.py, which nests build() as history.

A ratio is only formed inside one call (ours / the card run of the same repeat index); this script only gathers
the calls' own summaries (`bench_train.py speed` in each call folder) side by side, it computes no new ratio.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE.parent


def load(folder: Path) -> dict:
    return json.loads((folder / "speed_summary.json").read_text())


def build() -> dict:
    """The H100 calls of 2026-12-07 (sets 1-5) side by side; the 07e merge nests this under its history key."""
    a = load(HERE / "callA_abl0_1_default")  # abl0_1 as shipped, 3 repeats + a profile
    b = load(HERE / "callB_abl0_1_unfused")  # abl0_1 with trainer.fuse_grad_accum=false, 3 repeats
    d = load(HERE / "callD_infer")  # card evaluation + 4-bit predict under the memory budget
    prev = RESULTS / "speed_2026-12-07"
    abl1, infer_prev = load(prev / "call2_abl1"), load(prev / "call3_infer")  # the same day's earlier calls
    configs = {"card": a["configs"]["card"], "abl0_1_default": a["configs"]["abl0_1_default"],
               "card (call B)": b["configs"]["card"], "abl0_1_unfused": b["configs"]["abl0_1_unfused"]}
    configs["abl0_1_unfused"]["card"] = "card (call B)"
    configs.update({k: abl1["configs"][k] for k in ("card_abl1", "abl1_default")})
    later = RESULTS / "speed_2026-12-07c"  # the third set of calls: Abl1's memory option and the CUDA-graph lever
    unfused, graphs = load(later / "call4_abl1_unfused"), load(later / "call6_graphs_ok")
    configs["card_abl1 (07c call 4)"] = unfused["configs"]["card_abl1"]
    configs["abl1_unfused"] = dict(unfused["configs"]["abl1_unfused"], card="card_abl1 (07c call 4)")
    configs["card_abl1 (07c call 6)"] = graphs["configs"]["card_abl1"]
    configs["abl1_graphs"] = dict(graphs["configs"]["abl1_graphs"], card="card_abl1 (07c call 6)",
                                  note="one run (n=1), the first that ran; an anecdote, not a ratio to quote")
    # the fifth set: the recompute lever against the shipped path, one run each in one call, no card run in it
    lever = RESULTS / "speed_2026-12-07d"
    lever_ab = {
        "configs": load(lever)["configs"],
        "paired_steps": json.loads((lever / "paired_steps.json").read_text()),
        "note": "one run per side (n=1), no card run in the call: an anecdote, not a ratio to quote",
    }
    with open(HERE / "callC_prof_abl1_infer" / "infer.jsonl") as f:  # no card run in call C: no ratio
        unpaired = [r["examples_per_s"] for r in map(json.loads, f)
                    if r.get("stage") == "infer" and r.get("status") == "ok"]
    out = {
        "device": a["device"], "date": a["date"], "versions": a["versions"], "commit": a["commit"],
        "configs": configs,
        "inference": {"call D": d["inference"], "2026-12-07 call 3": infer_prev["inference"]},
        "lever_ab_without_card (07d)": lever_ab,
        "inference_unpaired_examples_per_s": {"nli_q4@budget, call C (no card run in that call)": unpaired},
        "sources": {
            "abl0_1_default (call A)": "experiments/results/speed_2026-12-07b/callA_abl0_1_default/",
            "abl0_1_unfused (call B)": "experiments/results/speed_2026-12-07b/callB_abl0_1_unfused/",
            "abl1 profile + 2 inference runs (call C)": "experiments/results/speed_2026-12-07b/callC_prof_abl1_infer/",
            "inference pair (call D)": "experiments/results/speed_2026-12-07b/callD_infer/",
            "abl1 pair (2026-12-07 call 2, commit a2e0cca)": "experiments/results/speed_2026-12-07/call2_abl1/",
            "inference pair (2026-12-07 call 3)": "experiments/results/speed_2026-12-07/call3_infer/",
            "abl1_unfused, 3 repeats (07c call 4)": "experiments/results/speed_2026-12-07c/call4_abl1_unfused/",
            "abl1_graphs, 1 run (07c call 6)": "experiments/results/speed_2026-12-07c/call6_graphs_ok/",
            "abl0_1_nodown vs abl0_1_default, 1 run each (07d)": "experiments/results/speed_2026-12-07d/",
        },
        "machine_note": ("Calls A-D on one H100 held warm between them (the H200 the issue names was not lent). "
                         "Each training pair ran interleaved in one call (card@0, ours@0, card@1, ...); 4 warm-up "
                         "optimiser steps dropped, 10 measured; a fresh work folder per run; profiled runs are not "
                         "repeats. abl1's pair is the earlier call of the same day on the same kind of card."),
        "targets": {
            "abl0_1_default >= 3x on median-step and whole-run": False,
            "abl0_1_default reserved <= card + 5%": False,
            "abl0_1_unfused reserved <= card + 5%": True,
            "abl0_1_unfused >= 3x": False,
            "abl1_default reserved <= card + 5%": False,
            "abl1_unfused reserved <= card + 5%": True,
            "abl1_unfused >= 3x": False,
            "abl1_graphs >= 3x": False,
            "abl0_1_nodown >= 3x (no card in its call; ~1.82x by arithmetic from the standing 1.77x)": False,
            "4-bit inference >= 10x the card at <= 40 GiB reserved (paired calls)": True,
        },
    }
    return out


def main() -> None:
    print(json.dumps(build(), indent=1))  # the file itself is written by speed_2026-12-07e/merge_summary.py


if __name__ == "__main__":
    main()
