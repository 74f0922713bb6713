"""The demo's accuracy against examples seen, from the GPU sweeps (issue #8): a table and a plot.

    python experiments/demo_curve.py   # reads experiments/results/demo_sweep/round*.summary.jsonl

Only runs of the demo's own recipe count (six families, 120 held-out pairs, batch 8, lr 2e-3, LoRA dropout 0.05 on
every layer, the rules thoughts, fp32): they differ in steps and seed alone. Writes
experiments/results/demo_sweep/accuracy_vs_examples.png and prints a markdown table.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "demo_sweep"
# Settings a run may carry and still be the demo's recipe (everything else must be absent).
RECIPE_KEYS = {"gpu", "n_train", "n_test", "predict_batch_size", "train_overrides", "predict_overrides",
               "train_steps", "seed", "eval_every", "style"}
FP32 = ["model.dtype=float32"]


def recipe_runs() -> dict[int, list[float]]:
    """optimiser steps -> accuracies (one per seed) of the runs that are the demo's recipe."""
    by_steps: dict[int, list[float]] = defaultdict(list)
    for path in sorted(RESULTS.glob("round*.summary.jsonl")):
        for line in path.open():
            r = json.loads(line)
            s = r["settings"]
            if (r["rc"] or set(s) - RECIPE_KEYS or s.get("style", "rules") != "rules" or s["n_test"] != 120
                    or s["train_overrides"] != FP32 or s["predict_overrides"] != FP32):
                continue
            by_steps[int(s["train_steps"])].append(r["fine_tuned"]["accuracy"])
    return dict(sorted(by_steps.items()))


def main() -> None:
    runs = recipe_runs()
    print("| steps of 8 | examples seen | runs (seeds) | accuracy, each run | mean |\n| ---: | ---: | ---: | --- | ---: |")
    for steps, accs in runs.items():
        each = ", ".join(f"{a:.1%}" for a in accs)
        print(f"| {steps} | {steps * 8} | {len(accs)} | {each} | {statistics.mean(accs):.1%} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for steps, accs in runs.items():
        ax.scatter([steps * 8] * len(accs), [100 * a for a in accs], color="tab:blue", alpha=0.6, s=18)
    ax.plot([s * 8 for s in runs], [100 * statistics.mean(a) for a in runs.values()], color="tab:blue",
            label="mean over seeds")
    ax.axhline(90, color="tab:green", ls="--", lw=1, label="issue #8 target (90%)")
    ax.axhline(50, color="gray", ls=":", lw=1, label="chance")
    ax.axvline(320, color="tab:red", ls="-.", lw=1, label="CPU demo budget (40 steps)")
    ax.set_xscale("log")
    ax.set_xlabel("training examples seen (steps x 8)")
    ax.set_ylabel("accuracy on 120 held-out pairs (%)")
    ax.set_title("SmolLM2-135M + LoRA on the demo task (H100, fp32)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = RESULTS / "accuracy_vs_examples.png"
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
