"""Read and validate NLI pairs from CSV/TSV, JSON lines, Parquet, a saved ``datasets`` dataset or a hub id.

Features
- Formats: ``csv`` (``.csv``; ``.tsv`` reads tab-separated), ``jsonl`` (``.jsonl``/``.ndjson``/``.json``: JSON
  lines, or one JSON array), ``parquet``, ``datasets`` (a ``save_to_disk`` directory) and ``hub`` (a hub id,
  ``datasets.load_dataset``; real code, tested only on local copies). ``format: auto`` picks by suffix.
- Columns are mapped by config (``columns.id/premise/hypothesis/label``); an absent id column makes ids from
  the 0-based row index, which is how the source project numbered its sample. ``id_prefix`` is prepended to
  every id, given or made, so sets can be mixed without id clashes.
- Labels are normalised to 1 = entailment, 0 = no entailment by an explicit ``label_map`` (raw value, as a
  lower-cased string, -> 0/1), so 3-way sources (``entailment``/``neutral``/``contradiction``, or MNLI/SNLI
  integer codes) are mapped by config, never guessed. ``drop_labels`` (e.g. ``-1``, ``-``: no gold label) are
  skipped and counted, in strict mode too.
- Validation: missing columns, empty premise/hypothesis, unknown labels, duplicate ids, bytes that are not
  valid text in the configured encoding, malformed JSON lines. Errors name file, row and field (and the line
  for text files): ``data.csv: row 3 (line 4): field 'label': unknown value 'maybe' (known: 0, 1)``.
- ``strict: true`` stops at the first bad row (``PairsError``); ``strict: false`` skips bad rows, counts them
  by reason and can write them to ``skip_report`` (JSONL); nothing is dropped silently.
- ``extra_fields`` are carried on the pair (e.g. e-SNLI's ``explanations``, used by the SFT ``human`` strategy).

Limits
- Rows are numbered from 1 in messages (the first data row is row 1); generated ids use the 0-based index.
- A file-level problem (missing file, missing column, unreadable Parquet) is always an error, even lenient.
- Premise and hypothesis are stripped of surrounding whitespace when ``strip_text`` is true (the default);
  no other text normalisation (the shared data keeps its odd characters on purpose).
- Everything is read into memory (the largest set here is ~10^4 rows; the card's train set ~4x10^4).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf


class PairsError(ValueError):
    """Bad input data; the message names file, row and field."""


@dataclass
class PairColumns:
    id: str | None = "id"  # None: ids from the row index
    premise: str = "premise"
    hypothesis: str = "hypothesis"
    label: str | None = "label"  # None: unlabelled data (require_label must be false)


@dataclass
class PairsConfig:
    name: str = MISSING
    path: str = MISSING  # file, saved-dataset directory, or hub id
    format: str = "auto"  # auto | csv | jsonl | parquet | datasets | hub
    split: str | None = None  # for a DatasetDict or a hub dataset
    hub_name: str | None = None  # hub dataset configuration, e.g. "rte" for nyu-mll/glue
    columns: PairColumns = field(default_factory=PairColumns)
    label_map: dict[str, int] = field(default_factory=lambda: {"0": 0, "1": 1})
    drop_labels: list[str] = field(default_factory=list)  # raw labels meaning "no gold label": skip + count
    require_label: bool = True
    extra_fields: list[str] = field(default_factory=list)
    id_prefix: str = ""
    strip_text: bool = True
    strict: bool = True
    encoding: str = "utf-8"
    delimiter: str | None = None  # csv only; None: "\t" for .tsv, else ","
    limit: int | None = None  # first N valid pairs
    skip_report: str | None = None  # JSONL of skipped rows (lenient mode)


@dataclass(frozen=True)
class Pair:
    id: str
    premise: str
    hypothesis: str
    label: int | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    row: int
    line: int | None
    field: str
    kind: str  # missing | empty | not_text | encoding | unknown_label | no_gold_label | duplicate_id | malformed
    reason: str
    id: str | None = None


@dataclass
class PairsResult:
    pairs: list[Pair]
    skipped: list[Skip]
    source: str
    rows_read: int

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.skipped))


@dataclass
class _Raw:
    row: int  # 1-based data row
    line: int | None  # 1-based physical line, text formats only
    values: dict[str, Any] | None
    problem: tuple[str, str, str] | None = None  # (field, kind, reason) found while reading the row itself


def _where(path: str, row: int, line: int | None) -> str:
    return f"{path}: row {row}" + (f" (line {line})" if line is not None else "")


def _format_of(cfg: PairsConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    p = Path(cfg.path)
    if p.is_dir():
        return "datasets"
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if not p.exists() and cfg.path.count("/") == 1 and not cfg.path.startswith((".", "/")):
        return "hub"
    raise PairsError(f"{cfg.path}: cannot tell the format from the name; set pairs.format")


def _decode(data: bytes, encoding: str) -> str:
    # surrogateescape keeps undecodable bytes as lone surrogates, so the row and field they sit in can be named.
    text = data.decode(encoding, errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


_SURROGATE = re.compile("[\udc80-\udcff]")


def _bad_bytes(value: str) -> str | None:
    bad = _SURROGATE.search(value)
    return None if bad is None else f"byte 0x{ord(bad.group()) - 0xDC00:02x}"


def _read_csv(cfg: PairsConfig, needed: list[str]) -> Iterator[_Raw]:
    path = Path(cfg.path)
    text = _decode(path.read_bytes(), cfg.encoding)
    delimiter = cfg.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [c for c in needed if c not in header]
    if missing:
        raise PairsError(
            f"{cfg.path}: line 1: missing column(s) {', '.join(map(repr, missing))} (have: {', '.join(header)})"
        )
    for row_no, values in enumerate(reader, start=1):
        problem = None
        if None in values:
            problem = (
                "-",
                "malformed",
                f"{len(header) + len(values[None])} fields, header has {len(header)}",
            )
            values.pop(None)
        yield _Raw(row_no, reader.line_num, values, problem)


def _read_jsonl(cfg: PairsConfig) -> Iterator[_Raw]:
    data = Path(cfg.path).read_bytes()
    text = _decode(data, cfg.encoding)
    if text.lstrip().startswith("["):  # a JSON array file
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{cfg.path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        for i, values in enumerate(rows, start=1):
            if isinstance(values, dict):
                yield _Raw(i, None, values)
            else:
                yield _Raw(i, None, None, ("-", "malformed", "not a JSON object"))
        return
    row = 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines, e.g. a trailing one, are not rows
        row += 1
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            yield _Raw(
                row, line_no, None, ("-", "malformed", f"invalid JSON ({exc.msg}, column {exc.colno})")
            )
            continue
        if not isinstance(values, dict):
            yield _Raw(row, line_no, None, ("-", "malformed", "not a JSON object"))
            continue
        yield _Raw(row, line_no, values)


def _read_table_rows(rows: Iterator[dict[str, Any]]) -> Iterator[_Raw]:
    for i, values in enumerate(rows, start=1):
        yield _Raw(i, None, values)


def _read_parquet(cfg: PairsConfig) -> Iterator[_Raw]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(cfg.path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise PairsError(f"{cfg.path}: not a readable Parquet file ({exc})") from None
    return _read_table_rows(iter(table.to_pylist()))


def _read_datasets(cfg: PairsConfig, fmt: str) -> Iterator[_Raw]:
    import datasets

    if fmt == "datasets":
        ds = datasets.load_from_disk(cfg.path)
    else:
        ds = datasets.load_dataset(cfg.path, cfg.hub_name, split=cfg.split)
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split is None:
            raise PairsError(f"{cfg.path}: has splits {sorted(ds)}; set pairs.split")
        if cfg.split not in ds:
            raise PairsError(f"{cfg.path}: no split {cfg.split!r} (have: {', '.join(sorted(ds))})")
        ds = ds[cfg.split]
    return _read_table_rows(iter(ds))


def _label_key(raw: Any) -> str:
    if isinstance(raw, bool):
        return str(int(raw))
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip().lower()


class _Validator:
    def __init__(self, cfg: PairsConfig) -> None:
        self.cfg = cfg
        self.label_map = {str(k).strip().lower(): int(v) for k, v in cfg.label_map.items()}
        bad = {k: v for k, v in self.label_map.items() if v not in (0, 1)}
        if bad:
            raise PairsError(f"pairs.label_map: values must be 0 or 1, got {bad}")
        self.drop = {str(x).strip().lower() for x in cfg.drop_labels}
        self.seen: dict[str, int] = {}

    def text(self, values: dict[str, Any], col: str) -> str:
        if col not in values or values[col] is None:
            raise _RowProblem(col, "missing", "missing")
        value = values[col]
        if not isinstance(value, str):
            raise _RowProblem(col, "not_text", f"not text ({type(value).__name__})")
        bad = _bad_bytes(value)
        if bad:
            raise _RowProblem(col, "encoding", f"not valid {self.cfg.encoding} ({bad})")
        if not value.strip():
            raise _RowProblem(col, "empty", "empty")
        return value.strip() if self.cfg.strip_text else value

    def label(self, values: dict[str, Any]) -> int | None:
        col = self.cfg.columns.label
        raw = values.get(col) if col else None
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if self.cfg.require_label:
                raise _RowProblem(col or "label", "missing", "missing")
            return None
        key = _label_key(raw)
        if _bad_bytes(key):
            raise _RowProblem(col, "encoding", f"not valid {self.cfg.encoding} ({_bad_bytes(key)})")
        if key in self.drop:
            raise _RowProblem(col, "no_gold_label", f"no gold label ({raw!r})", droppable=True)
        if key not in self.label_map:
            known = ", ".join(sorted(self.label_map))
            raise _RowProblem(col, "unknown_label", f"unknown value {raw!r} (known: {known})")
        return self.label_map[key]

    def pair(self, raw: _Raw) -> Pair:
        if raw.problem:
            raise _RowProblem(*raw.problem)
        values = raw.values or {}
        cols = self.cfg.columns
        if cols.id:
            rid = values.get(cols.id)
            if rid is None or not str(rid).strip():
                raise _RowProblem(cols.id, "missing", "missing")
            pair_id = self.cfg.id_prefix + str(rid).strip()
        else:
            pair_id = f"{self.cfg.id_prefix}{raw.row - 1}"
        premise = self.text(values, cols.premise)
        hypothesis = self.text(values, cols.hypothesis)
        label = self.label(values)
        extra = {}
        for name in self.cfg.extra_fields:
            if name not in values:
                raise _RowProblem(name, "missing", "missing (listed in extra_fields)")
            extra[name] = values[name]
        if pair_id in self.seen:
            raise _RowProblem(
                cols.id or "id",
                "duplicate_id",
                f"duplicate id {pair_id!r} (first at row {self.seen[pair_id]})",
            )
        self.seen[pair_id] = raw.row
        return Pair(pair_id, premise, hypothesis, label, extra)


class _RowProblem(Exception):
    def __init__(self, field: str, kind: str, reason: str, droppable: bool = False) -> None:
        super().__init__(reason)
        self.field, self.kind, self.reason, self.droppable = field, kind, reason, droppable


def _rows(cfg: PairsConfig, fmt: str) -> Iterator[_Raw]:
    cols = cfg.columns
    needed = [c for c in (cols.id, cols.premise, cols.hypothesis, cols.label) if c]
    if fmt == "csv":
        return _read_csv(cfg, needed)
    if fmt == "jsonl":
        return _read_jsonl(cfg)
    if fmt == "parquet":
        return _read_parquet(cfg)
    if fmt in ("datasets", "hub"):
        return _read_datasets(cfg, fmt)
    raise PairsError(f"pairs.format: unknown format {fmt!r} (csv, jsonl, parquet, datasets, hub, auto)")


def _plain(cfg: Any) -> PairsConfig:
    """A plain dataclass copy: attribute access on an OmegaConf node costs ~0.1 ms, per field, per row."""
    if isinstance(cfg, PairsConfig):
        return cfg
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    cols = data.pop("columns", None) or {}
    return PairsConfig(**data, columns=PairColumns(**cols))


def load_pairs(cfg: PairsConfig | Any) -> PairsResult:
    """Read, map and validate every row; raise PairsError (strict) or skip and count (lenient)."""
    cfg = _plain(cfg)
    fmt = _format_of(cfg)
    if fmt != "hub" and not Path(cfg.path).exists():
        raise PairsError(f"{cfg.path}: no such file or directory")
    if cfg.columns.label is None and cfg.require_label:
        raise PairsError("pairs.columns.label is null but pairs.require_label is true")
    validator = _Validator(cfg)
    pairs: list[Pair] = []
    skipped: list[Skip] = []
    rows_read = 0
    tabular = fmt in ("parquet", "datasets", "hub")
    for raw in _rows(cfg, fmt):
        rows_read += 1
        if tabular and rows_read == 1:
            _check_columns(cfg, raw.values or {})
        try:
            pairs.append(validator.pair(raw))
        except _RowProblem as prob:
            if cfg.strict and not prob.droppable:
                raise PairsError(
                    f"{_where(cfg.path, raw.row, raw.line)}: field '{prob.field}': {prob.reason}"
                ) from None
            rid = None
            if raw.values and cfg.columns.id and raw.values.get(cfg.columns.id) is not None:
                rid = str(raw.values[cfg.columns.id])
            skipped.append(Skip(raw.row, raw.line, prob.field, prob.kind, prob.reason, rid))
        if cfg.limit is not None and len(pairs) >= cfg.limit:
            break
    result = PairsResult(pairs, skipped, cfg.path, rows_read)
    if skipped:
        _report_skips(cfg, result)
    return result


def _check_columns(cfg: PairsConfig, first: dict[str, Any]) -> None:
    cols = cfg.columns
    needed = [c for c in (cols.id, cols.premise, cols.hypothesis, cols.label) if c]
    missing = [c for c in needed if c not in first]
    if missing:
        raise PairsError(
            f"{cfg.path}: missing column(s) {', '.join(map(repr, missing))} (have: {', '.join(first)})"
        )


def _report_skips(cfg: PairsConfig, result: PairsResult) -> None:
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.skip_counts().items()))
    first = result.skipped[0]
    print(
        f"[pairs] {cfg.path}: skipped {len(result.skipped)} of {result.rows_read} rows ({counts}); "
        f"first: {_where(cfg.path, first.row, first.line)}: field '{first.field}': {first.reason}",
        file=sys.stderr,
    )
    if cfg.skip_report:
        out = Path(cfg.skip_report)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for s in result.skipped:
                fh.write(json.dumps({"file": cfg.path, **s.__dict__}, ensure_ascii=False) + "\n")
