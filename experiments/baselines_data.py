"""Train / dev / test JSONL files for ``python -m nli_cot.baselines`` from the shared data.

    python experiments/baselines_data.py [--data-root ../shared/data] [--out outputs/baselines/data] [--dev-share 0.04]

- train: e-SNLI dev + more/{snli_sample,cad,sick}.jsonl, minus the dev split;
- dev: the pairs of those files whose sha256(id), read as a fraction of 2^64, is below ``--dev-share`` (4%):
  a fixed split that does not depend on file order or on any seed;
- test: esnli/test.jsonl, mnli/dev_matched.jsonl and rte/dev.jsonl in one file, each row with a ``set`` field
  (``esnli_test``, ``mnli_dev_matched``, ``rte_dev``) so the baseline's summary reports each set.
Only id, premise, hypothesis, label (and set) are written. Prints the counts and label shares.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nli_cot.evaluation.baselines import dev_split

TRAIN_FILES = ("esnli/dev.jsonl", "more/snli_sample.jsonl", "more/cad.jsonl", "more/sick.jsonl")
TEST_FILES = {
    "esnli_test": "esnli/test.jsonl",
    "mnli_dev_matched": "mnli/dev_matched.jsonl",
    "rte_dev": "rte/dev.jsonl",
}
KEEP = ("id", "premise", "hypothesis", "label")


def _read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [{k: r[k] for k in KEEP} for r in map(json.loads, fh) if r]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    share = sum(r["label"] for r in rows) / len(rows) if rows else float("nan")
    print(f"{path}: {len(rows)} pairs, {share:.1%} label 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", default="outputs/baselines/data")
    ap.add_argument("--dev-share", type=float, default=0.04)
    args = ap.parse_args()
    root, out = Path(args.data_root), Path(args.out)
    pool = [r for f in TRAIN_FILES for r in _read(root / f)]
    ids = [r["id"] for r in pool]
    if len(set(ids)) != len(ids):
        raise SystemExit("error: duplicate ids across the training files")
    held = dev_split(ids, args.dev_share)
    _write(out / "train.jsonl", [r for r, h in zip(pool, held, strict=True) if not h])
    _write(out / "dev.jsonl", [r for r, h in zip(pool, held, strict=True) if h])
    test = [{**r, "set": name} for name, f in TEST_FILES.items() for r in _read(root / f)]
    _write(out / "test.jsonl", test)


if __name__ == "__main__":
    main()
