"""Issue #6: one GPU vs two GPUs (Lightning DDP) on the card's Abl1 settings, from the runs that
experiments/device/ddp_scaling.sh leaves behind.

    python experiments/bench_ddp.py check --work /tmp/ddp --model /tmp/m7b --step 24 --out load_check.json
    python experiments/bench_ddp.py report --results $OUT --out $OUT/ddp_report

``check`` loads each 2-GPU checkpoint on one GPU the model card's way (``PeftModel.from_pretrained(base, repo,
subfolder=...)``) and compares its adapter with the 1-GPU run's. ``report`` prints and writes the table: per-GPU
and total real tokens/s (Lightning's ThroughputMonitor over the last optimiser steps), scaling efficiency, the
optimiser-step loss curves side by side, peak GPU memory (nvidia-smi samples) and the load check.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
RUN = "Mistral_Thinking_Abl1"


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def check(a: argparse.Namespace) -> None:
    import torch
    from bench_train import compose
    from peft import PeftModel

    from nli_cot.models.modeling import load_base_model, load_tokenizer

    out: dict = {}
    cfg = compose(["+experiment=abl1", f"model.name_or_path={a.model}"])
    tok = load_tokenizer(cfg.model)
    base = None
    for variant in ("card", "fast"):
        two = Path(a.work) / f"{variant}_2gpu"
        one = Path(a.work) / f"{variant}_1gpu" / RUN / f"checkpoint-{a.step}"
        sub = f"{RUN}/checkpoint-{a.step}"
        if not (two / sub).is_dir():
            continue
        rec: dict = {"subfolder": sub}
        try:
            if base is None:
                base = load_base_model(cfg.model, tok)
            model = PeftModel.from_pretrained(base, str(two), subfolder=sub, adapter_name=variant)
            loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k and f".{variant}." in k}
            rec["loaded_lora_tensors"] = len(loaded)
            rec["loaded_lora_B_norm"] = float(sum(v.float().norm() ** 2 for k, v in loaded.items()
                                                  if "lora_B" in k) ** 0.5)
            rec["load_ok"] = rec["loaded_lora_tensors"] > 0 and rec["loaded_lora_B_norm"] > 0
            if one.is_dir():
                x, y = _adapter(one), _adapter(two / sub)
                diff = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
                num = sum(float((x[k].float() - y[k].float()).norm() ** 2) for k in x) ** 0.5
                den = sum(float(x[k].float().norm() ** 2) for k in x) ** 0.5
                rec.update(same_keys=sorted(x) == sorted(y), max_abs_diff=diff, rel_l2_diff=num / max(den, 1e-12))
        except Exception as err:  # the report says what broke; the other variant still runs
            rec["error"] = f"{type(err).__name__}: {err}"
        out[variant] = rec
        torch.cuda.empty_cache()
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _last(rows: list[dict], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key)]
    return vals[-1] if vals else None


def _step_losses(rows: list[dict]) -> list[float]:
    return [float(r["train/step_loss"]) for r in rows if r.get("train/step_loss")]


def _peak_mem(smi: Path, t0: float, t1: float) -> dict[str, float]:
    """Peak nvidia-smi memory.used per GPU (GiB) between two wall-clock times."""
    import datetime as dt

    peaks: dict[str, float] = {}
    if not smi.is_file():
        return peaks
    for line in smi.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            t = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc).timestamp()
            mib = float(parts[2].split()[0])
        except ValueError:
            continue
        if t0 <= t <= t1:
            peaks[parts[1]] = max(peaks.get(parts[1], 0.0), mib / 1024)
    return peaks


def report(a: argparse.Namespace) -> None:
    from bench_common import write_report

    res = Path(a.results)
    raw = res / "raw"
    runs = {}
    for line in (raw / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        csv_path = raw / "runs" / r["name"] / "metrics.csv"
        rows = _rows(csv_path) if csv_path.is_file() else []
        status_path = raw / "runs" / r["name"] / "status.json"
        status = json.loads(status_path.read_text()) if status_path.is_file() else {}
        r.update(
            status=status.get("status", "missing"),
            per_gpu_tok_s=_last(rows, "train/device/items_per_sec"),
            # one process logs no all-rank total: it is its device rate
            total_tok_s=_last(rows, "train/items_per_sec") or _last(rows, "train/device/items_per_sec"),
            step_losses=_step_losses(rows),
            eval_loss=_last(rows, "eval/loss"),
            peak_reserved_gib_rank0=_last(rows, "perf/peak_reserved_gib"),
            smi_peak_gib=_peak_mem(raw / "smi_mem.csv", r["t_start"], r["t_start"] + r["wall_s"]),
        )
        runs[r["name"]] = r
    load = json.loads((raw / "load_check.json").read_text()) if (raw / "load_check.json").is_file() else {}
    lines = ["# Multi-GPU (DDP) scaling: card Abl1 settings, random-weight 7B Mistral, 4-bit NF4 QLoRA", ""]
    gpus = (raw / "gpus.txt").read_text().strip() if (raw / "gpus.txt").is_file() else "?"
    lines += [f"GPUs: {gpus.replace(chr(10), '; ')}", "",
              "| variant | GPUs | status | real tok/s per GPU | real tok/s total | scaling efficiency | final eval loss "
              "| peak GiB per GPU (nvidia-smi) |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    summary: dict = {"runs": runs, "load_check": load, "variants": {}}
    for variant in ("card", "fast"):
        one, two = runs.get(f"{variant}_1gpu"), runs.get(f"{variant}_2gpu")
        eff = None
        if one and two and one["total_tok_s"] and two["total_tok_s"]:
            eff = two["total_tok_s"] / (2 * one["total_tok_s"])
        for r in (one, two):
            if not r:
                continue
            tot = r["total_tok_s"]
            lines.append(
                f"| {variant} | {r['gpus']} | {r['status']} | {r['per_gpu_tok_s'] or 0:,.0f} | {tot or 0:,.0f} | "
                f"{'' if r['gpus'] == 1 or eff is None else f'{eff:.1%}'} | "
                f"{r['eval_loss'] if r['eval_loss'] is not None else '?'} | "
                f"{', '.join(f'{k}: {v:.1f}' for k, v in sorted(r['smi_peak_gib'].items()))} |")
        if one and two:
            la, lb = one["step_losses"], two["step_losses"]
            n = min(len(la), len(lb))
            diffs = [abs(x - y) for x, y in zip(la[:n], lb[:n], strict=True)]
            summary["variants"][variant] = {"scaling_efficiency": eff, "steps_compared": n,
                                            "max_abs_loss_diff": max(diffs) if diffs else None}
    lines += ["", "Optimiser-step loss (mean over the step's micro-batches and ranks; LoRA dropout 0):", ""]
    for variant, v in summary["variants"].items():
        la, lb = runs[f"{variant}_1gpu"]["step_losses"], runs[f"{variant}_2gpu"]["step_losses"]
        lines += [f"**{variant}**: {v['steps_compared']} steps compared, max |1 GPU - 2 GPUs| = "
                  f"{v['max_abs_loss_diff']}", "", "| step | 1 GPU (8 x accum 2) | 2 GPUs (8 x 1 each) | diff |",
                  "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {i + 1} | {x:.5f} | {y:.5f} | {x - y:+.5f} |" for i, (x, y) in enumerate(zip(la, lb, strict=False))]
        lines.append("")
    lines += ["Load check (2-GPU checkpoint loaded on one GPU with `PeftModel.from_pretrained(base, dir, subfolder=...)`):",
              "", "```json", json.dumps(load, indent=1), "```"]
    text = "\n".join(lines)
    write_report(a.out, text, summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--work", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--step", type=int, required=True)
    c.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--out", required=True)
    a = ap.parse_args()
    check(a) if a.cmd == "check" else report(a)


if __name__ == "__main__":
    main()
