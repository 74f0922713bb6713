"""Many `python -m nli_cot.demo` runs side by side (issue #8): which steps / batch / lr / families learn best.

    python experiments/demo_sweep.py experiments/demo_sweep/round1.yaml --out outputs/demo_sweep --jobs 4

The variants file is a YAML list; each entry has a ``name`` and any keys of conf/demo.yaml (``families``,
``train_steps``, ``n_train``, ``train_overrides``...), plus ``common`` keys that every variant gets. Each variant is
the demo itself, run as a user would (``python -m nli_cot.demo out_dir=<out>/<name> ...``), so what the sweep
finds is what ``make demo`` does with those settings. It is meant for the GPU machine (experiments/device/
demo_sweep.sh), where a whole demo takes about a minute, with ``model.dtype=float32`` in both overrides so the
numbers are the CPU demo's arithmetic, not bf16's.

Each finished variant appends one JSON line to ``<out>/summary.jsonl``: accuracy, macro F1, parse rate, accuracy
per family, the learning curve, and wall time. Variants already in the summary are skipped (a re-run resumes);
with ``--deadline-s`` no variant starts after the deadline. A table of all rows is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nli_cot.orchestration.demo import _metrics, learning_curve, per_family_accuracy  # noqa: E402


def _override(key: str, value: Any) -> str:
    # Hydra reads a list override as [a,b]; strings inside need quoting when they hold '=' or spaces.
    if value is None:
        return f"{key}=null"
    if isinstance(value, list):
        return f"{key}=[" + ",".join(json.dumps(v) if isinstance(v, str) else str(v) for v in value) + "]"
    return f"{key}={value}"


# Every variant unless it says otherwise. gpu=null: a variant's train_steps hold on the GPU machine too (the demo
# would otherwise use its gpu.* steps). split=dev: a sweep chooses a recipe, so it scores the dev pairs, never the
# test pairs that give the final numbers (tests/test_demo_data.py checks the two can share no pair).
SWEEP_DEFAULTS: dict[str, Any] = {"gpu": None, "split": "dev"}


def run_variant(variant: dict[str, Any], common: dict[str, Any], out: Path) -> dict[str, Any]:
    name = variant["name"]
    settings = {**SWEEP_DEFAULTS, **common, **{k: v for k, v in variant.items() if k != "name"}}
    for key in ("train_overrides", "predict_overrides"):  # lists add up: common first, then the variant's
        settings[key] = [*common.get(key, []), *variant.get(key, [])]
    run_out, data = out / name, out / name / "data"
    args = [f"out_dir={run_out}", f"data_dir={data}", *(_override(k, v) for k, v in settings.items())]
    started = time.time()
    log = run_out / "demo.log"
    run_out.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "nli_cot.demo", *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=REPO)
    row: dict[str, Any] = {"name": name, "settings": settings, "rc": proc.returncode,
                           "seconds": round(time.time() - started, 1)}
    if proc.returncode == 0:
        row["zero_shot"] = _metrics(run_out / "eval_zero_shot")
        row["fine_tuned"] = _metrics(run_out / "eval_fine_tuned")
        fam = per_family_accuracy(run_out / "fine_tuned.jsonl", data / f"{settings['split']}.jsonl")
        row["per_family"] = {k: f"{r}/{t}" for k, (r, t) in fam.items()}
        row["curve"] = learning_curve(run_out / "train" / "demo_smollm2" / "logs" / "metrics.csv")
    else:
        row["log_tail"] = log.read_text()[-2000:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "demo_sweep")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--deadline-s", type=float, default=None, help="start no variant after this many seconds")
    a = ap.parse_args()
    spec = yaml.safe_load(a.variants.read_text())
    common, variants = spec.get("common", {}), spec["variants"]
    a.out.mkdir(parents=True, exist_ok=True)
    summary = a.out / "summary.jsonl"
    done = {json.loads(line)["name"] for line in summary.open()} if summary.is_file() else set()
    t0 = time.time()

    def job(v: dict[str, Any]) -> None:
        if v["name"] in done:
            return
        if a.deadline_s is not None and time.time() - t0 > a.deadline_s:
            print(f"[sweep] {v['name']}: not started (deadline)", flush=True)
            return
        row = run_variant(v, common, a.out)
        with summary.open("a") as f:  # one short line per write: appends from threads do not interleave
            f.write(json.dumps(row) + "\n")
        ft = row.get("fine_tuned", {})
        print(f"[sweep] {row['name']}: rc {row['rc']}, {row['seconds']:.0f} s, acc {ft.get('accuracy')}, "
              f"parse {ft.get('parseable')}", flush=True)

    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(job, variants))
    print("| variant | accuracy | macro F1 | parseable | per family | s |\n| --- | ---: | ---: | ---: | --- | ---: |")
    for line in summary.open():
        r = json.loads(line)
        ft = r.get("fine_tuned")
        if ft:
            fam = " ".join(f"{k[:4]} {v}" for k, v in r["per_family"].items())
            print(f"| {r['name']} | {ft['accuracy']:.1%} | {ft['macro_f1']:.1%} | {ft['parseable']:.1%} | {fam} | "
                  f"{r['seconds']:.0f} |")
        else:
            print(f"| {r['name']} | failed (rc {r['rc']}) | | | | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
