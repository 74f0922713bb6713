"""The main job on the embedded default: ``make demo`` / ``python -m nli_cot.demo``.

A real pretrained instruct model (SmolLM2-135M-Instruct, shipped offline on PyPI) learns a synthetic NLI task on
CPU in minutes, through the same commands a researcher runs on a GPU box:

    demo_data -> surface baselines -> predict (zero-shot) -> evaluate -> train (+experiment=demo)
    -> predict (adapter) -> evaluate -> compare, then a before/after table beside the surface baselines.

``split=test`` (the default) scores the test pairs, for final numbers only; ``split=dev`` scores the dev pairs
(drawn alike, from another unseen vocabulary), for every recipe choice (experiments/demo_sweep.py uses it).

Each stage's config is composed with Hydra's compose API (the stage's own config, schema and checks, as its CLI
composes it) before any stage starts, so a bad ``train_overrides``/``predict_overrides`` entry stops the demo in
one line naming the stage; right before a stage runs, its config is composed again (the fine-tuned predictions
with the chosen checkpoint) and stored as ``<out_dir>/specs/<stage>.yaml``, and run in its own process by
``python -m nli_cot.orchestration.run_job <spec>`` (the stage's ``run(cfg)``: the code path of the CLI whose
command the demo prints). Every stage resumes: re-running the demo skips finished stages (predictions resume by
id, training with ``resume=auto``, data is kept). ``compare`` (not a Hydra stage) runs in process.

It ends with the before/after table (accuracy with a bootstrap CI, macro F1, parseable JSON) for zero-shot,
fine-tuned and four surface-cue baselines fit on the training pairs (``nli_cot.demo_baselines``), the paired
margin of fine-tuned over the strongest of them, accuracy per rule family, the
learning curve from the training's CSV log, and the wall time of every stage with the load average beside it
(the CPU is often shared, and a timing means little without the load it ran under).

Limits: the synthetic task is templated (six rule families), so the trained numbers say the pipeline learns,
not that a 135M model understands NLI; ``issues`` of the real study live in ``+experiment=abl0_1|abl0_2|abl1``.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from nli_cot.core import stats
from nli_cot.core.config import register_schema
from nli_cot.core.records import write_json_atomic
from nli_cot.evaluation.evaluate import BootstrapConfig
from nli_cot.orchestration.run_job import JobSpecError, compose_stage, equivalent_command, spec_command


@dataclass
class DemoGpuConfig:
    """What changes when a CUDA GPU is present (the CPU values stay the documented default)."""

    train_steps: int = field(default=400, metadata={"help": "Optimiser steps of the training run on a GPU."})
    eval_every: int = field(default=100, metadata={"help": "Steps between dev evaluations/checkpoints on a GPU."})
    n_held_out: int | None = field(
        default=None, metadata={"help": "Pairs of dev and of test on a GPU; None: n_held_out."}
    )
    overrides: list[str] = field(
        default_factory=list, metadata={"help": "Extra overrides of training and prediction on a GPU."}
    )


@dataclass
class DemoConfig:
    """`make demo` / `python -m nli_cot.demo` (conf/demo.yaml)."""

    out_dir: str = field(default="outputs/demo", metadata={"help": "The run, predictions, evaluations and summary."})
    data_dir: str = field(default="data/demo", metadata={"help": "Where the synthetic task's files are written."})
    seed: int = field(default=0, metadata={"help": "Seed of the data generator and of training."})
    split: str = field(default="test", metadata={"help": "dev | test: the held-out split the table scores."})
    n_train: int = field(default=4000, metadata={"help": "Synthetic training pairs generated."})
    n_held_out: int = field(
        default=96, metadata={"help": "Pairs of dev and of test each; a multiple of 2 x len(families)."}
    )
    families: list[str] = field(default_factory=list, metadata={"help": "Rule families of the synthetic task."})
    train_steps: int = field(default=32, metadata={"help": "Optimiser steps of the training run (CPU)."})
    eval_every: int = field(default=16, metadata={"help": "Steps between dev evaluations and checkpoints (CPU)."})
    predict_batch_size: int = field(default=96, metadata={"help": "Pairs decoded together by both prediction stages."})
    max_new_tokens: int = field(default=48, metadata={"help": "Decoding budget of both prediction stages."})
    prompt_name: str = field(default="demo_chat", metadata={"help": "The prompt config of training and prediction."})
    train_overrides: list[str] = field(default_factory=list, metadata={"help": "Extra overrides of training."})
    predict_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Extra overrides of both prediction stages."}
    )
    bootstrap: BootstrapConfig = field(
        default_factory=BootstrapConfig, metadata={"help": "The CIs of the before/after table."}
    )
    gpu: DemoGpuConfig | None = field(
        default_factory=DemoGpuConfig, metadata={"help": "Used instead on a CUDA GPU; null: the CPU values everywhere."}
    )


register_schema(DemoConfig, name="demo_schema")


# (stage, seconds, 1-minute load average at its end) of every stage this invocation ran
TIMINGS: list[tuple[str, float, float]] = []


def _run(args: list[str], what: str, equivalent: list[str] | None = None) -> None:
    """One stage in its own process (``python -m <args>``); its output streams to the console. ``equivalent``:
    the command a user types for the same stage, shown instead of the runner's."""
    shown = shlex.join(equivalent) if equivalent else f"python -m {' '.join(args)}"
    print(f"\n== {what}\n$ {shown}", flush=True)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", *args])
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C, or SIGTERM (raised as SystemExit below): stop the stage too, never orphan it
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"interrupted during '{what}': finished work is kept; re-run `make demo` to resume", file=sys.stderr)
        raise
    if code != 0:
        print(f"error: stage '{what}' failed (exit {code}); re-run `make demo` to resume", file=sys.stderr)
        sys.exit(code)
    seconds, load = time.time() - started, os.getloadavg()[0]
    TIMINGS.append((what, seconds, load))
    print(f"== {what}: done in {seconds:.0f} s (load average {load:.1f})", flush=True)


# (stage, overrides, what the console calls it) of each of the demo's stage jobs, by job name
Jobs = dict[str, tuple[str, list[str], str]]


def stage_jobs(cfg: DictConfig, n_held: int, steps: int, every: int, device_overrides: list[str],
               checkpoint: Path) -> Jobs:
    """Every stage job of the demo with its overrides (``checkpoint``: the adapter the fine-tuned predictions load,
    a placeholder until training has run)."""
    out, data = Path(cfg.out_dir), Path(cfg.data_dir)
    common_predict = [
        "pairs=demo", f"pairs.path={data / f'{cfg.split}.jsonl'}", "model=smollm2_135m", f"prompt={cfg.prompt_name}",
        f"batch_size={cfg.predict_batch_size}", f"decoding.max_new_tokens={cfg.max_new_tokens}",
        *device_overrides, *cfg.predict_overrides,
    ]
    # The held-out files hold exactly n_held_out pairs: families take turns and labels alternate in the generator,
    # so a multiple of 2 x families is balanced per family and label (a prefix of a shuffled larger file is not).
    # dev and test are the same size and drawn alike, each from its own unseen vocabulary.
    data_args = [f"out_dir={data}", f"n_train={cfg.n_train}", f"n_dev={n_held}", f"n_test={n_held}",
                 f"seed={cfg.seed}", f"families=[{','.join(cfg.families)}]"]
    zero, tuned = out / "zero_shot.jsonl", out / "fine_tuned.jsonl"
    return {
        "demo_data": ("demo_data", data_args, "build demo data"),
        "predict_zero_shot": ("predict", [*common_predict, f"output={zero}"],
                              "zero-shot predictions of the base model"),
        "evaluate_zero_shot": ("evaluate", [f"predictions={zero}", f"out_dir={out / 'eval_zero_shot'}",
                                            "name=zero_shot"], "evaluate zero-shot"),
        "train": ("train", ["+experiment=demo", f"prompt={cfg.prompt_name}", f"output_dir={out / 'train'}",
                            "resume=auto", f"dataset.train_path={data / 'train.jsonl'}",
                            f"dataset.eval_path={data / 'dev.jsonl'}", f"trainer.max_steps={steps}",
                            f"trainer.eval_every_n_steps={every}", f"trainer.save_steps={every}",
                            *device_overrides, *cfg.train_overrides],
                  "LoRA fine-tuning (Lightning + PEFT, the ablations' code path)"),
        # Merged into the fp32 weights, the adapter costs nothing per decoded token (no 4-bit here to re-quantise).
        "predict_fine_tuned": ("predict", [*common_predict, f"adapter.path={checkpoint}", "adapter.merge=true",
                                           f"output={tuned}"], "predictions of the fine-tuned model"),
        "evaluate_fine_tuned": ("evaluate", [f"predictions={tuned}", f"out_dir={out / 'eval_fine_tuned'}",
                                             "name=fine_tuned"], "evaluate fine-tuned"),
    }


def validate(jobs: Jobs) -> None:
    """Compose every stage's config before any stage starts: a mistake is one line naming the stage."""
    for name, (stage, overrides, _) in jobs.items():
        try:
            compose_stage(stage, overrides)
        except JobSpecError as err:
            raise SystemExit(f"error: demo stage {name}: {err}") from None


def run_stage(jobs: Jobs, name: str, out: Path) -> None:
    """The stage's config composed again, stored as ``<out>/specs/<name>.yaml`` and run by ``run_job``."""
    stage, overrides, what = jobs[name]
    try:
        argv = spec_command(out / "specs" / f"{name}.yaml", stage, overrides)
    except JobSpecError as err:
        raise SystemExit(f"error: demo stage {name}: {err}") from None
    _run(argv[2:], what, equivalent_command(stage, overrides))


def per_family_accuracy(predictions: Path, test: Path) -> dict[str, tuple[int, int]]:
    """Rule family (the test records' ``source``) -> (correct, total) over the predictions."""
    family = {r["id"]: r["source"].removeprefix("demo/") for r in map(json.loads, test.open())}
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in map(json.loads, predictions.open()):
        counts = out[family.get(rec["id"], "?")]
        counts[0] += int(rec.get("predicted_label") is not None and rec["predicted_label"] == rec["label"])
        counts[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def learning_curve(metrics_csv: Path) -> list[tuple[int, float | None, float | None]]:
    """(step, train loss, eval loss) rows of a training's CSV log, one per logged step."""
    rows: dict[int, list[float | None]] = {}
    if not metrics_csv.is_file():
        return []
    with metrics_csv.open() as f:
        for r in csv.DictReader(f):
            if not r.get("step"):
                continue
            row = rows.setdefault(int(r["step"]), [None, None])
            if r.get("train/loss"):
                row[0] = float(r["train/loss"])
            if r.get("eval/loss"):
                row[1] = float(r["eval/loss"])
    # Lightning logs 0-based steps; print optimiser steps done (1-based), as --max_steps counts them.
    return [(step + 1, tr, ev) for step, (tr, ev) in sorted(rows.items())]


def _metrics(eval_dir: Path) -> dict[str, Any]:
    m = json.loads((eval_dir / "metrics.json").read_text())
    return {
        "accuracy": m["accuracy"]["value"],
        "macro_f1": m["macro_f1"]["value"],
        "parseable": 1.0 - m["parsing"]["failure_rate"],
        "n": m.get("n") or m.get("n_examples"),
    }


def _records(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _predicted(predictions: Path, ids: list[str]) -> list[int]:
    """Predicted labels in the order of ``ids``; an unparsed answer (or a missing one) is -1, i.e. wrong."""
    by_id = {r["id"]: r.get("predicted_label") for r in _records(predictions)}
    return [-1 if by_id.get(i) is None else int(by_id[i]) for i in ids]


def comparison_table(
    gold: list[int], systems: dict[str, list[int]], surface: list[str], cfg: DictConfig
) -> dict[str, Any]:
    """Accuracy with a bootstrap CI for every system, and fine-tuned minus the strongest surface baseline.

    ``systems`` maps a row name to its predicted labels (-1 = unparsed); ``surface`` names the surface-cue
    baselines among them. Every CI is ``nli_cot.core.stats``' percentile bootstrap over the held-out pairs.
    """
    ci = dict(n_resamples=int(cfg.bootstrap.n_resamples), confidence=float(cfg.bootstrap.confidence),
              seed=int(cfg.bootstrap.seed))
    rows = {}
    for name, pred in systems.items():
        acc = stats.seed_mean_ci(gold, pred, "accuracy", **ci)
        rows[name] = {"accuracy": acc["mean"], "ci": acc["ci"], "macro_f1": float(stats.macro_f1(gold, pred)),
                      "parseable": float(np.mean(np.asarray(pred) >= 0))}
    strongest = max(surface, key=lambda n: rows[n]["accuracy"])
    diff = stats.paired_bootstrap_diff(gold, systems["fine-tuned"], systems[strongest], "accuracy", **ci)
    return {"n": len(gold), "rows": rows, "strongest_surface": strongest,
            "margin": {"diff": diff["diff"], "ci": diff["ci"], "p": diff["p"]}}


def _checkpoint(run_dir: Path) -> Path:
    """The best checkpoint by eval loss if the run recorded one, else the newest."""
    status = json.loads((run_dir / "status.json").read_text())
    best = (status.get("best") or {}).get("checkpoint")
    if best and (run_dir / best).is_dir():
        return run_dir / best
    folders = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not folders:
        raise SystemExit(f"error: {run_dir} holds no checkpoint")
    return folders[-1]


def training_budget(cfg: DictConfig, cuda: bool) -> tuple[int, int, list[str]]:
    """(optimiser steps, eval/checkpoint interval, overrides for training and prediction) on this machine."""
    if cuda and cfg.gpu:
        return int(cfg.gpu.train_steps), int(cfg.gpu.eval_every), list(cfg.gpu.overrides)
    return int(cfg.train_steps), int(cfg.eval_every), []


def _cuda_available() -> bool:
    import torch  # here, not at the top: the demo driver itself needs torch only for this question

    return torch.cuda.is_available()


def held_out_size(cfg: DictConfig, cuda: bool) -> int:
    """Pairs of the scored split on this machine: a GPU decodes many more in the same time."""
    if cuda and cfg.gpu and cfg.gpu.get("n_held_out"):
        return int(cfg.gpu.n_held_out)
    return int(cfg.n_held_out)


def compare_before_after(out: Path) -> None:
    """``python -m nli_cot.compare`` of the two evaluations, in process (a few seconds; not a Hydra stage)."""
    from nli_cot.evaluation.compare import CompareError, compare, load_defaults

    what, dirs, dest = "compare before / after", [str(out / "eval_zero_shot"), str(out / "eval_fine_tuned")], out / "compare"
    print(f"\n== {what}\n$ {shlex.join(['python', '-m', 'nli_cot.compare', *dirs, '--out', str(dest)])}", flush=True)
    started, defaults = time.time(), load_defaults()
    try:
        compare(dirs, dest, int(defaults.mcnemar_exact_below), int(defaults.plot_dpi))
    except CompareError as err:
        raise SystemExit(f"error: stage '{what}' failed: {err}") from None
    TIMINGS.append((what, time.time() - started, os.getloadavg()[0]))
    print(f"wrote {dest / 'comparison.md'}", flush=True)


@hydra.main(config_path="../../conf", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.split not in ("dev", "test"):
        raise SystemExit(f"error: split={cfg.split!r}: must be dev (recipe choices) or test (final numbers)")
    out = Path(cfg.out_dir)
    data = Path(cfg.data_dir)
    on_gpu = bool(cfg.gpu) and _cuda_available()
    steps, every, device_overrides = training_budget(cfg, cuda=on_gpu)
    n_held = held_out_size(cfg, cuda=on_gpu)
    if n_held % (2 * len(cfg.families)):
        raise SystemExit(f"error: n_held_out={n_held}: must be a multiple of 2 x {len(cfg.families)} families, "
                         "so every family and label is equally represented")
    if on_gpu:
        print(f"A CUDA GPU is present: training {steps} steps (conf/demo.yaml gpu.*) instead of the CPU's "
              f"{cfg.train_steps}, scoring {n_held} pairs", flush=True)
    scored = data / f"{cfg.split}.jsonl"
    run_dir = out / "train" / "demo_smollm2"
    jobs = stage_jobs(cfg, n_held, steps, every, device_overrides, run_dir / "checkpoint-0")  # a placeholder
    validate(jobs)
    data_args = jobs["demo_data"][1]
    stamp = data / "demo_args.json"
    if not scored.is_file() or not stamp.is_file() or json.loads(stamp.read_text()) != [*data_args, cfg.split]:
        # New data (or another split) keeps the old ids (demo-test-00000...): results made on the old pairs would
        # be resumed as if they were about the new ones, so they go.
        for stale in ("zero_shot.jsonl", "fine_tuned.jsonl", "eval_zero_shot", "eval_fine_tuned", "compare", "train",
                      "summary.json"):
            path = out / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for summary in out.glob("*.summary.json"):
            summary.unlink()
        run_stage(jobs, "demo_data", out)
        stamp.write_text(json.dumps([*data_args, cfg.split]) + "\n")

    held_out = _records(scored)
    started = time.time()
    from nli_cot.orchestration.demo_baselines import (
        surface_baselines,  # sklearn: imported only when the demo gets here
    )

    surface = surface_baselines(_records(data / "train.jsonl"), _records(data / "dev.jsonl"), held_out, cfg.seed)
    TIMINGS.append(("surface baselines (fit on train)", time.time() - started, os.getloadavg()[0]))

    zero, tuned = out / "zero_shot.jsonl", out / "fine_tuned.jsonl"
    run_stage(jobs, "predict_zero_shot", out)
    run_stage(jobs, "evaluate_zero_shot", out)
    if not (run_dir / "status.json").is_file() or json.loads((run_dir / "status.json").read_text())["status"] != "finished":
        run_stage(jobs, "train", out)
    ckpt = _checkpoint(run_dir)
    jobs = stage_jobs(cfg, n_held, steps, every, device_overrides, ckpt)
    run_stage(jobs, "predict_fine_tuned", out)
    run_stage(jobs, "evaluate_fine_tuned", out)
    compare_before_after(out)

    ids, gold = [r["id"] for r in held_out], [int(r["label"]) for r in held_out]
    systems = {"zero-shot": _predicted(zero, ids), "fine-tuned": _predicted(tuned, ids), **surface}
    table = comparison_table(gold, systems, list(surface), cfg)
    level = f"{float(cfg.bootstrap.confidence):.0%}"
    print(f"\nSmolLM2-135M-Instruct on {len(gold)} {cfg.split} pairs (unseen vocabulary; "
          f"{'final numbers' if cfg.split == 'test' else 'for recipe choices'}), fine-tuned = {ckpt.name}")
    print(f"| system | accuracy ({level} CI) | macro F1 | parseable JSON |\n| --- | ---: | ---: | ---: |")
    for name, row in table["rows"].items():
        mark = " (strongest surface baseline)" if name == table["strongest_surface"] else ""
        print(f"| {name}{mark} | {row['accuracy']:.1%} ({row['ci'][0]:.1%}-{row['ci'][1]:.1%}) | "
              f"{row['macro_f1']:.1%} | {row['parseable']:.1%} |")
    margin = table["margin"]
    print(f"fine-tuned - {table['strongest_surface']}: {100 * margin['diff']:+.1f} points "
          f"(paired {level} CI {100 * margin['ci'][0]:+.1f} to {100 * margin['ci'][1]:+.1f}, p = {margin['p']:.4f})")
    fam_before, fam_after = per_family_accuracy(zero, scored), per_family_accuracy(tuned, scored)
    print("\n| accuracy per family | zero-shot | fine-tuned |\n| --- | ---: | ---: |")
    for family, (right, total) in fam_after.items():
        zero_right = fam_before.get(family, (0, total))[0]
        print(f"| {family} ({total} pairs) | {zero_right / total:.0%} | {right / total:.0%} |")

    curve = learning_curve(run_dir / "logs" / "metrics.csv")
    if curve:
        print("\nlearning curve (optimiser step: train loss of the logged step, eval loss on dev)")
        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        print(", ".join(f"{step}: {num(tr)}" + (f" / {num(ev)}" if ev is not None else "") for step, tr, ev in curve))
    if TIMINGS:
        total = sum(t for _, t, _ in TIMINGS)
        print(f"\nstage times on {os.cpu_count()} CPU cores (load average at the end of each stage; stages "
              "skipped as already done are not listed)")
        for what, seconds, load in TIMINGS:
            print(f"| {what} | {seconds:.0f} s | load {load:.1f} |")
        print(f"| all stages | {total:.0f} s ({total / 60:.1f} min) | |")
    summary = {"split": cfg.split, "checkpoint": ckpt.name, "train_steps": steps, **table,
               "per_family": {f: {"zero_shot": fam_before.get(f, (0, t))[0], "fine_tuned": r, "n": t}
                              for f, (r, t) in fam_after.items()},
               "curve": curve, "timings": [{"stage": w, "seconds": round(t, 1), "load": round(ld, 2)}
                                           for w, t, ld in TIMINGS]}
    write_json_atomic(out / "summary.json", summary)
    print(f"\nreports: {out / 'eval_zero_shot' / 'report.md'}, {out / 'eval_fine_tuned' / 'report.md'}, "
          f"{out / 'compare'}; all numbers: {out / 'summary.json'}")
    print(f"training log: {run_dir / 'logs' / 'metrics.csv'}; adapter: {ckpt}")
    print("\nThe real thing, on a GPU with hub access: python -m nli_cot.train +experiment=abl1")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill <pid>` stops the running stage as Ctrl-C does
    main()
