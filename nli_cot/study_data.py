"""The study's fixed data: the same train pairs and the same test pairs for every condition and seed.

Features
- Train pairs: ``n_train`` rows of e-SNLI dev (all 9,842 when null), with their human explanations (condition 3
  reads them) and 3-way labels. Test sets: e-SNLI test, MNLI dev matched and RTE dev, ``n`` rows each (null:
  all), written once as one combined file (one predict job per model covers all three) plus one file per set.
- Selection is by a salted SHA-256 of the row id (the ``n`` smallest hashes, kept in file order), not by a
  random generator over row positions: the sample does not depend on file order, and a copy of the data that
  holds a superset of the selected rows (the trimmed ``.study-data`` folder carried to the GPU machine) yields
  exactly the same sample.
- ``data_manifest.json``: counts, label balance, the salt, and SHA-256 of every source and output file.

Limits
- MNLI rows without a gold label (``label3 == "-"``) are dropped before sampling; e-SNLI/RTE rows are expected to
  carry a binary ``label`` (as ../shared/data has them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# set name -> (file under data_root, id prefix the predictions keep)
TEST_SETS: dict[str, str] = {
    "esnli_test": "esnli/test.jsonl",
    "mnli_dev_matched": "mnli/dev_matched.jsonl",
    "rte_dev": "rte/dev.jsonl",
}
TRAIN_SOURCE = "esnli/dev.jsonl"


def id_hash(row_id: str, salt: int) -> int:
    # Its own prefix: the SFT stage splits train/dev by sha256(f"{salt}:{id}"), and a sample of the smallest of
    # those same hashes would land entirely in its dev split.
    return int.from_bytes(hashlib.sha256(f"study-sample:{salt}:{row_id}".encode()).digest()[:8], "big")


def select(rows: list[dict[str, Any]], n: int | None, salt: int) -> list[dict[str, Any]]:
    """The ``n`` rows with the smallest salted id hash, in their original order (all rows when n is None)."""
    if n is None or n >= len(rows):
        return list(rows)
    keep = {r["id"] for r in sorted(rows, key=lambda r: id_hash(str(r["id"]), salt))[:n]}
    return [r for r in rows if r["id"] in keep]


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (set data_root to the folder holding esnli/, mnli/, rte/)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labelled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("label") in (0, 1) and r.get("label3") != "-"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def prepare(data_root: str, out_dir: Path, n_train: int | None, n_test: dict[str, int | None], salt: int) -> dict:
    """Write ``train_pairs.jsonl``, ``test.jsonl`` (all sets, with a ``set`` field), ``test_<set>.jsonl`` and
    ``data_manifest.json`` into ``out_dir``; return the manifest."""
    root = Path(data_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"data_root": str(root), "salt": salt, "selection": "n smallest sha256(study-sample:salt:id)",
                                "sources": {}, "sets": {}}
    src = root / TRAIN_SOURCE
    train = select(_labelled(_read(src)), n_train, salt)
    _write(out_dir / "train_pairs.jsonl", train)
    manifest["sources"][TRAIN_SOURCE] = _sha(src)
    manifest["train"] = {"file": "train_pairs.jsonl", "n": len(train),
                         "share_label_1": round(sum(r["label"] for r in train) / max(1, len(train)), 4),
                         "sha256": _sha(out_dir / "train_pairs.jsonl")}
    combined: list[dict[str, Any]] = []
    for name, rel in TEST_SETS.items():
        path = root / rel
        rows = select(_labelled(_read(path)), n_test.get(name), salt)
        manifest["sources"][rel] = _sha(path)
        slim = [{"id": r["id"], "premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"],
                 "set": name} for r in rows]
        _write(out_dir / f"test_{name}.jsonl", slim)
        combined += slim
        manifest["sets"][name] = {"file": f"test_{name}.jsonl", "source": rel, "n": len(slim),
                                  "share_label_1": round(sum(r["label"] for r in slim) / max(1, len(slim)), 4),
                                  "sha256": _sha(out_dir / f"test_{name}.jsonl")}
    _write(out_dir / "test.jsonl", combined)
    manifest["test_file"] = {"file": "test.jsonl", "n": len(combined), "sha256": _sha(out_dir / "test.jsonl")}
    (out_dir / "data_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def set_of_ids(data_dir: Path) -> dict[str, str]:
    """id -> test set name, from the combined test file."""
    return {r["id"]: r["set"] for r in _read(data_dir / "test.jsonl")}


def trim_copy(data_root: str, dest: str, n_test: dict[str, int | None], salt: int) -> dict[str, int]:
    """Copy the files the study reads into ``dest`` with each test set cut to its selected rows (the train
    source whole): what travels to a machine without ../shared. ``select`` gives the same sample from it."""
    root, out = Path(data_root), Path(dest)
    sizes = {}
    src = root / TRAIN_SOURCE
    (out / TRAIN_SOURCE).parent.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_SOURCE).write_bytes(src.read_bytes())
    sizes[TRAIN_SOURCE] = len(_read(src))
    for name, rel in TEST_SETS.items():
        rows = select(_labelled(_read(root / rel)), n_test.get(name), salt)
        _write(out / rel, rows)
        sizes[rel] = len(rows)
    return sizes
