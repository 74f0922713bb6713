"""The study's fixed data: the same train pairs and the same test pairs for every condition and seed.

Features
- Train pairs: ``n_train`` rows of ``data.train_source`` (e-SNLI dev: all 9,842 when null), with their human
  explanations (condition 3 reads them) and 3-way labels. Test sets: ``data.test_sets`` of conf/study.yaml (e-SNLI
  test, MNLI dev matched and RTE dev), ``n`` rows each (null: all), written once as one combined file (one predict
  job per model covers every set) plus one file per set.
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
import re
from collections import Counter
from pathlib import Path
from typing import Any

from nli_cot.core.records import write_jsonl_atomic

_NON_ALNUM = re.compile(r"[^a-z0-9]")


_SET_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def test_sets_of(data: dict[str, Any]) -> dict[str, str]:
    """The test sets a study uses: ``data.test_sets`` without those set to null (how a preset or an override drops
    one: Hydra merges dicts, it does not replace them)."""
    return {str(k): str(v) for k, v in (data.get("test_sets") or {}).items() if v}


def check_data_sets(data: dict[str, Any]) -> list[str]:
    """Mistakes in ``data.test_sets``/``data.train_source``/``data.n_test``, one line each (checked at start-up)."""
    sets, problems = test_sets_of(data), []
    if not sets:
        problems.append("data.test_sets: empty; the study needs at least one test set")
    for name, rel in sets.items():
        if not _SET_NAME.match(str(name)):
            problems.append(f"data.test_sets.{name}: a set name is letters, digits and _ only (it names files)")
        if not str(rel).endswith(".jsonl"):
            problems.append(f"data.test_sets.{name}={rel}: a JSON-lines file under data_root is expected")
    if data.get("train_source") in sets.values():
        problems.append(f"data.train_source={data['train_source']}: it is also a test set")
    unknown = sorted(set(data.get("n_test") or {}) - set(data.get("test_sets") or {}))
    if unknown:
        problems.append(f"data.n_test: unknown test set{'s' if len(unknown) > 1 else ''} {unknown}; "
                        f"data.test_sets has {', '.join(sets)}")
    return problems


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


def norm_sentence(text: str) -> str:
    """The form two sentences are compared in by the leak check: lower-cased letters and digits only."""
    return _NON_ALNUM.sub("", str(text).lower())


def sentences_of(test_rows: list[dict[str, Any]]) -> set[str]:
    return {norm_sentence(r[f]) for r in test_rows for f in ("premise", "hypothesis")}


def drop_leaks(rows: list[dict[str, Any]], test_ids: set[str], sentences: set[str]) -> tuple[list[dict], int]:
    """Rows whose id is a test id, or whose premise or hypothesis occurs in a test set, are dropped (counted)."""
    kept = [r for r in rows if str(r["id"]) not in test_ids
            and norm_sentence(r["premise"]) not in sentences and norm_sentence(r["hypothesis"]) not in sentences]
    return kept, len(rows) - len(kept)


def leaks(rows: list[dict[str, Any]], test_ids: set[str], sentences: set[str]) -> list[str]:
    """Ids of rows that share an id or a sentence with a test set (the check the tests run on every set)."""
    return [str(r["id"]) for r in rows if str(r["id"]) in test_ids or norm_sentence(r["premise"]) in sentences
            or norm_sentence(r["hypothesis"]) in sentences]


def write_label_set(out_dir: Path, name: str, rows: list[dict[str, Any]], dev_fraction: float,
                    split_seed: int = 0) -> dict[str, Any]:
    """A label-only SFT set (``train.jsonl``, ``dev.jsonl``, ``stats.json`` as the SFT stage writes them) from pairs:
    training reads it with ``dataset.label_only=true``, so no thought is needed. The dev split uses the SFT stage's
    hash, so a pair of e-SNLI dev is in the same split here as in the human set."""
    from nli_cot.core.pairs import (
        id_hash as split_hash,  # sft's split: an e-SNLI pair lands in the same split as there
    )

    d = out_dir / name
    slim = [{"id": str(r["id"]), "premise": r["premise"], "hypothesis": r["hypothesis"], "label": int(r["label"]),
             "source": r.get("source", "esnli")} for r in rows]
    dev = [r for r in slim if split_hash(r["id"], split_seed) < dev_fraction]
    dev_ids = {r["id"] for r in dev}
    train = [r for r in slim if r["id"] not in dev_ids]
    write_jsonl_atomic(d / "train.jsonl", train)
    write_jsonl_atomic(d / "dev.jsonl", dev)
    stats = {"name": name, "label_only": True, "dev_fraction": dev_fraction, "split_seed": split_seed,
             "train": {"count": len(train), "share_label_1": round(sum(r["label"] for r in train) / max(1, len(train)), 4)},
             "dev": {"count": len(dev), "share_label_1": round(sum(r["label"] for r in dev) / max(1, len(dev)), 4)},
             "sources": dict(Counter(r["source"] for r in slim))}
    (d / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _pool(root: Path, files: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for rel in files:
        rows += [dict(r, source=r.get("source") or Path(rel).stem) for r in _labelled(_read(root / rel))]
    return rows


def prepare(data_root: str, out_dir: Path, n_train: int | None, n_test: dict[str, int | None], salt: int,
            test_sets: dict[str, str], train_source: str, pool_files: list[str] | None = None,
            n_teacher: int | None = None, dev_fraction: float = 0.05,
            label_sets: dict[str, list[str]] | None = None) -> dict:
    """Write the study's data into ``out_dir``; return the manifest. ``test_sets``: set name -> file under
    ``data_root`` (``data.test_sets``); ``train_source``: the file of the train pairs (``data.train_source``).

    - ``train_pairs.jsonl``: e-SNLI dev (the human-explanation set), ``pool_pairs.jsonl``: the pairs without
      explanations (``pool_files``), ``teacher_pairs.jsonl``: ``n_teacher`` of the pool (the teacher's pairs). Every
      one of them minus the rows that share an id or a sentence with any test set (counted in the manifest).
    - ``test_full.jsonl`` (every row of every test set, with a ``set`` field; label-probability conditions and
      baselines are scored on it), ``test.jsonl`` (the ``n_test`` sample of it that generation conditions decode),
      ``test_<set>.jsonl``.
    - Label-only SFT sets under ``out_dir/../sft/<name>`` for ``label_sets`` (name -> which of train/pool/teacher).
    """
    root = Path(data_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"data_root": str(root), "salt": salt, "selection": "n smallest sha256(study-sample:salt:id)",
                                "leak_check": "dropped: a train/pool row whose id or normalised premise/hypothesis "
                                              "(lower-case letters and digits) occurs in any test set",
                                "sources": {}, "sets": {}}
    full: list[dict[str, Any]] = []
    for name, rel in test_sets.items():
        path = root / rel
        rows = _labelled(_read(path))
        manifest["sources"][rel] = _sha(path)
        full += [{"id": r["id"], "premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"],
                  "set": name} for r in rows]
    test_ids, sentences = {str(r["id"]) for r in full}, sentences_of(full)

    def keep(key: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept, dropped = drop_leaks(rows, test_ids, sentences)
        manifest[key] = {"read": len(rows), "dropped_leak": dropped}
        return kept

    src = root / train_source
    train = select(keep("train", _labelled(_read(src))), n_train, salt)
    write_jsonl_atomic(out_dir / "train_pairs.jsonl", train)
    manifest["sources"][train_source] = _sha(src)
    manifest["train"].update({"file": "train_pairs.jsonl", "n": len(train),
                              "share_label_1": round(sum(r["label"] for r in train) / max(1, len(train)), 4),
                              "sha256": _sha(out_dir / "train_pairs.jsonl")})
    pool: list[dict[str, Any]] = []
    if pool_files:
        pool = keep("pool", _pool(root, list(pool_files)))
        for rel in pool_files:
            manifest["sources"][rel] = _sha(root / rel)
        teacher = select(pool, n_teacher, salt)
        write_jsonl_atomic(out_dir / "pool_pairs.jsonl", pool)
        write_jsonl_atomic(out_dir / "teacher_pairs.jsonl", teacher)
        manifest["pool"].update({"file": "pool_pairs.jsonl", "n": len(pool), "files": list(pool_files)})
        manifest["teacher"] = {"file": "teacher_pairs.jsonl", "n": len(teacher),
                               "share_label_1": round(sum(r["label"] for r in teacher) / max(1, len(teacher)), 4)}
    else:
        teacher = train
    sample: list[dict[str, Any]] = []
    for name in test_sets:
        rows = [r for r in full if r["set"] == name]
        picked = select(rows, n_test.get(name), salt)
        write_jsonl_atomic(out_dir / f"test_{name}.jsonl", picked)
        sample += picked
        manifest["sets"][name] = {"file": f"test_{name}.jsonl", "source": test_sets[name], "n": len(picked),
                                  "n_full": len(rows),
                                  "share_label_1": round(sum(r["label"] for r in picked) / max(1, len(picked)), 4),
                                  "sha256": _sha(out_dir / f"test_{name}.jsonl")}
    write_jsonl_atomic(out_dir / "test.jsonl", sample)
    write_jsonl_atomic(out_dir / "test_full.jsonl", full)
    manifest["test_file"] = {"file": "test.jsonl", "n": len(sample), "sha256": _sha(out_dir / "test.jsonl")}
    manifest["test_full_file"] = {"file": "test_full.jsonl", "n": len(full), "sha256": _sha(out_dir / "test_full.jsonl")}
    parts = {"train": train, "pool": pool, "teacher": teacher}
    manifest["label_sets"] = {}
    for set_name, which in (label_sets or {}).items():
        rows = [r for w in which for r in parts[w]]
        manifest["label_sets"][set_name] = write_label_set(out_dir.parent / "sft", set_name, rows, dev_fraction)
    # The leak check, once more on what was written: every train/dev file against every test sentence and id.
    written = [out_dir / "train_pairs.jsonl"] + ([out_dir / "pool_pairs.jsonl"] if pool else []) + [
        out_dir.parent / "sft" / n / f for n in (label_sets or {}) for f in ("train.jsonl", "dev.jsonl")]
    bad = {str(p): leaks(_read(p), test_ids, sentences) for p in written}
    if any(bad.values()):
        raise RuntimeError(f"leak check failed: {json.dumps({k: v[:5] for k, v in bad.items() if v})}")
    manifest["leak_check_passed"] = [str(p) for p in written]
    (out_dir / "data_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def set_of_ids(data_dir: Path) -> dict[str, str]:
    """id -> test set name, from the full test file (a superset of the decoded sample)."""
    path = data_dir / "test_full.jsonl"
    return {r["id"]: r["set"] for r in _read(path if path.is_file() else data_dir / "test.jsonl")}


def trim_copy(data_root: str, dest: str, files: list[str]) -> dict[str, int]:
    """Copy the files the study reads (``files``, relative to ``data_root``: the train source, every test set whole,
    the pool files) into ``dest``: what travels to a machine without ../shared."""
    root, out = Path(data_root), Path(dest)
    sizes = {}
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes((root / rel).read_bytes())
        sizes[rel] = len(_read(root / rel))
    return sizes
