"""The main job on the embedded default: ``make demo`` / ``python -m nli_cot.demo``.

A real pretrained instruct model (SmolLM2-135M-Instruct, shipped offline on PyPI) learns a synthetic NLI task on
CPU in minutes, through the same commands a researcher runs on a GPU box:

    demo_data -> predict (zero-shot) -> evaluate -> train (+experiment=demo) -> predict (adapter) -> evaluate
    -> compare, then a before/after table.

Each stage is the project's own CLI, run as a subprocess exactly as a user would type it, so the demo proves the
commands rather than a private code path. Every stage resumes: re-running the demo skips finished stages
(predictions resume by id, training with ``resume=auto``, data is kept).

Limits: the synthetic task is templated (six rule families), so the trained numbers say the pipeline learns,
not that a 135M model understands NLI; ``issues`` of the real study live in ``+experiment=abl0_1|abl0_2|abl1``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig


def _run(args: list[str], what: str) -> None:
    """One stage as a user would run it; its output streams to the console."""
    print(f"\n== {what}\n$ python -m {' '.join(args)}", flush=True)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", *args])
    if proc.returncode != 0:
        print(f"error: stage '{what}' failed (exit {proc.returncode}); re-run `make demo` to resume", file=sys.stderr)
        sys.exit(proc.returncode)
    print(f"== {what}: done in {time.time() - started:.0f} s", flush=True)


def _metrics(eval_dir: Path) -> dict[str, Any]:
    m = json.loads((eval_dir / "metrics.json").read_text())
    return {
        "accuracy": m["accuracy"]["value"],
        "macro_f1": m["macro_f1"]["value"],
        "parseable": 1.0 - m["parsing"]["failure_rate"],
        "n": m.get("n") or m.get("n_examples"),
    }


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


@hydra.main(config_path="../conf", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out_dir)
    data = Path(cfg.data_dir)
    test = data / "test.jsonl"
    common_predict = [
        "pairs=demo", f"pairs.path={test}", "model=smollm2_135m", "prompt=demo_chat", f"limit={cfg.n_test}",
        f"batch_size={cfg.predict_batch_size}", f"decoding.max_new_tokens={cfg.max_new_tokens}",
    ]

    if not test.is_file():
        _run(["nli_cot.demo_data", f"out_dir={data}", f"n_train={cfg.n_train}", f"seed={cfg.seed}"], "build demo data")

    zero = out / "zero_shot.jsonl"
    _run(["nli_cot.predict", *common_predict, f"output={zero}"], "zero-shot predictions of the base model")
    _run(["nli_cot.evaluate", f"predictions={zero}", f"out_dir={out / 'eval_zero_shot'}", "name=zero_shot"],
         "evaluate zero-shot")

    run_dir = out / "train" / "demo_smollm2"
    if not (run_dir / "status.json").is_file() or json.loads((run_dir / "status.json").read_text())["status"] != "finished":
        _run(["nli_cot.train", "+experiment=demo", f"hydra.run.dir={out / 'train'}", "resume=auto",
              f"dataset.train_path={data / 'train.jsonl'}", f"dataset.eval_path={data / 'dev.jsonl'}",
              f"trainer.max_steps={cfg.train_steps}", f"dataset.max_train_examples={cfg.train_steps * 8}",
              *cfg.train_overrides], "LoRA fine-tuning (Lightning + PEFT, the ablations' code path)")
    ckpt = _checkpoint(run_dir)

    tuned = out / "fine_tuned.jsonl"
    _run(["nli_cot.predict", *common_predict, f"adapter.path={ckpt}", f"output={tuned}"],
         "predictions of the fine-tuned model")
    _run(["nli_cot.evaluate", f"predictions={tuned}", f"out_dir={out / 'eval_fine_tuned'}", "name=fine_tuned"],
         "evaluate fine-tuned")
    _run(["nli_cot.compare", str(out / "eval_zero_shot"), str(out / "eval_fine_tuned"), "--out", str(out / "compare")],
         "compare before / after")

    before, after = _metrics(out / "eval_zero_shot"), _metrics(out / "eval_fine_tuned")
    rows = [("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("parseable JSON", "parseable")]
    print(f"\nSmolLM2-135M-Instruct on {before['n'] or cfg.n_test} held-out synthetic pairs (unseen vocabulary)")
    print(f"| metric | zero-shot | fine-tuned ({ckpt.name}) |\n| --- | ---: | ---: |")
    for label, key in rows:
        print(f"| {label} | {before[key]:.1%} | {after[key]:.1%} |")
    print(f"\nreports: {out / 'eval_zero_shot' / 'report.md'}, {out / 'eval_fine_tuned' / 'report.md'}, "
          f"{out / 'compare'}")
    print(f"training log: {run_dir / 'logs' / 'metrics.csv'}; adapter: {ckpt}")
    print("\nThe real thing, on a GPU with hub access: python -m nli_cot.train +experiment=abl1")


if __name__ == "__main__":
    main()
