"""The 2026-12-07f runs (one H100, held warm across three calls): Abl0.1's 3 paired repeats in one call, the
shipped Abl0.1 step's profile, and the pinned library stack.

    python experiments/results/speed_2026-12-07f/analyse.py      (from the repo root; writes analysis.json)

- call1/: `env model prof:abl0_1_default env+x abl0_1_default+x@0` (the profile; the pinned stack failed to compile)
- call2/: `model base@0 abl0_1_default@0 base@1 abl0_1_default@1 base@2 abl0_1_default@2` (the 3 pairs, one call)
- call3/: the pinned stack again, by hand, for its error (abl0_1_default+x) and for abl1_default+x

Each ratio pairs an nli_cot run with the card run of the same repeat in the same call; the interval is a 95% t
interval on the mean log ratio over the 3 repeats (07e's `ratios_to_card`). The profile's kernels (2 profiled steps)
are grouped by what they do; the step's median wall time (unprofiled steps of the same run) less the kernels' time
is time the GPU had no kernel of this step running.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

HERE = Path(__file__).parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ratios_to_card = _load("analyse_07e", HERE.parent / "speed_2026-12-07e" / "analyse.py").ratios_to_card
read = _load("bench_common", HERE.parents[1] / "bench_common.py").read  # a .jsonl file's records

# Kernel name -> group, first match wins (the profile's kernel rows: no host time of their own)
# (inductor's fused kernels first: their names quote the ops they fuse, e.g. "gemm_4bit" or "flash_attention")
GROUPS = (("compiled elementwise and norms (inductor)", r"^triton_"), ("GEMM (cuBLAS)", r"^nvjet|gemm|cutlass"),
          ("NF4 dequantisation (bitsandbytes)", r"kDequantize"), ("flash attention (varlen)", r"flash"),
          ("other aten kernels", r"."))
SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * SECONDS[unit]


def profile_breakdown(table: Path, steps: int, median_step_s: float) -> dict:
    """Per-step device time by kernel group, from the profiler table (top 60 rows) and its total line."""
    groups = dict.fromkeys([g for g, _ in GROUPS], 0.0)
    total = None
    for line in table.read_text().splitlines():
        if m := re.match(r"Self CUDA time total: (\S+)", line.strip()):
            total = seconds(m[1]) / steps
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) != 11 or fields[2] != "0.000us" or "#" in fields[0]:
            continue  # header, op rows (their kernels have rows of their own) and annotations
        group = next(g for g, pattern in GROUPS if re.search(pattern, fields[0]))
        groups[group] += seconds(fields[6]) / steps
    listed = sum(groups.values())
    groups["kernels outside the table's top rows"] = total - listed
    return {"median_step_s": median_step_s, "kernel_time_s": total,
            "per_group_ms": {g: round(v * 1e3, 1) for g, v in groups.items()},
            "gpu_without_a_kernel_ms": round((median_step_s - total) * 1e3, 1)}


def main() -> None:
    call1, call2 = read(HERE / "call1" / "train.jsonl"), read(HERE / "call2" / "train.jsonl")
    env = next(r for r in call1 if r.get("stage") == "env" and r["versions"]["transformers"] == "5.17.0")
    runs = {(r["variant"], r["repeat"]): r for r in call2 if r.get("stage") == "train" and r.get("status") == "ok"}
    pairs = [(runs[("abl0_1_default", i)], runs[("card", i)]) for i in range(3)]
    out: dict = {"device": f"{env['gpu']} ({env['nvidia_smi']}), torch {env['versions']['torch']}, transformers "
                           f"{env['versions']['transformers']}; bf16 GEMM peak {env['bf16_gemm_TFLOPs']:.0f} TFLOP/s"}
    card_step = [b["median_step_s"] for _, b in pairs]
    out["abl0_1_default_vs_card (one call, 3 repeats)"] = {
        **ratios_to_card(pairs),
        "whole_run_tok_s_each": {"abl0_1_default": [a["real_tok_per_s"] for a, _ in pairs],
                                 "card": [b["real_tok_per_s"] for _, b in pairs]},
        "median_step_s_each": {"abl0_1_default": [a["median_step_s"] for a, _ in pairs], "card": card_step},
        "max_reserved_GiB": {"abl0_1_default": pairs[0][0]["mem"]["max_reserved_GiB"],
                             "card": pairs[0][1]["mem"]["max_reserved_GiB"]},
        "reserved_over_card": pairs[0][0]["mem"]["max_reserved_GiB"] / pairs[0][1]["mem"]["max_reserved_GiB"] - 1,
        "probe_loss": {"abl0_1_default": pairs[0][0]["probe_loss"], "card": pairs[0][1]["probe_loss"]},
        "step_for_3x_s (card median step / 3, per repeat)": [s / 3 for s in card_step],
    }
    prof = next(r for r in call1 if r.get("stage") == "train" and "profile" in r)
    out["profile_abl0_1_default (2 steps)"] = {
        **profile_breakdown(HERE / "call1" / "profile.txt", 2, prof["median_step_s"]),
        "host_ops_per_step": prof["profile"]["host_ops"],
    }
    stack = {}
    for call in ("call1", "call3"):
        for name in ("train.jsonl", "x.jsonl"):
            path = HERE / call / name
            if path.exists():
                for r in read(path):
                    if r.get("stage") == "train" and r["variant"].endswith("+x"):
                        stack[f"{call}: {r['variant']}"] = {
                            "transformers": r.get("transformers"), "status": r.get("status"),
                            "error": (r.get("error") or "").split("\n\n")[0] or None,
                            "real_tok_per_s": r.get("real_tok_per_s"), "probe_loss": r.get("probe_loss")}
    out["pinned_stack (+x)"] = stack
    (HERE / "analysis.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
