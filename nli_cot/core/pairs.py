"""Read and validate NLI pairs from CSV/TSV, JSON lines, Parquet, a saved ``datasets`` dataset or a hub id.

Features
- Formats: ``csv`` (``.csv``; ``.tsv`` reads tab-separated), ``jsonl`` (``.jsonl``/``.ndjson``/``.json``: JSON
  lines, or one JSON array), ``parquet``, ``datasets`` (a ``save_to_disk`` directory) and ``hub`` (a hub id,
  ``datasets.load_dataset``; real code, tested only on local copies). ``format: auto`` picks by suffix.
- Columns are mapped by config (``columns.id/premise/hypothesis/label``); ``columns.id: null`` makes ids from
  the 0-based row index, which is how the source project numbered its sample. ``missing_id: row_index`` uses
  the id column when the file has one and the row index when it has none (``pairs=csv``); ``error`` (the
  default) requires it. ``id_prefix`` is prepended to every id, given or made, so sets can be mixed without
  id clashes.
- Labels are normalised to 1 = entailment, 0 = no entailment by an explicit ``label_map`` (raw value, as a
  lower-cased string, -> 0/1), so 3-way sources (``entailment``/``neutral``/``contradiction``, or MNLI/SNLI
  integer codes) are mapped by config, never guessed. ``drop_labels`` (e.g. ``-1``, ``-``: no gold label) are
  skipped and counted, in strict mode too.
- Validation: empty files, missing columns, empty premise/hypothesis, text fields that are not text, ids that
  are not a string or integer, unknown labels, duplicate ids, bytes that are not valid text in the configured
  encoding, malformed CSV and JSON lines, and no valid pair at all (an error in lenient mode too). Errors are
  one line naming file, row and field (and the line for text files):
  ``data.csv: row 3 (line 4): field 'label': unknown value 'maybe' (known: 0, 1)``.
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
import hashlib
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

from nli_cot.core.config import register_schema
from nli_cot.core.records import JsonTextError, json_rows


def id_hash(example_id: Any, salt: int) -> float:
    """Uniform [0, 1) from a salted SHA-256 of a pair id: the train/dev split of every stage (sft's sets,
    training's ``dataset.eval_fraction``) depends on the id alone, not on file order or size."""
    digest = hashlib.sha256(f"{salt}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class PairsError(ValueError):
    """Bad input data; the message names file, row and field. Always one printable line."""

    def __init__(self, message: str) -> None:
        super().__init__(_printable(message))


def _printable(text: str) -> str:
    """One line that any terminal can print: undecodable bytes and line breaks escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines splits on


@dataclass
class PairColumns:
    id: str | None = field(default="id", metadata={"help": "None: ids from the row index."})
    premise: str = field(default="premise", metadata={"help": "Column holding the premise."})
    hypothesis: str = field(default="hypothesis", metadata={"help": "Column holding the hypothesis."})
    label: str | None = field(
        default="label",
        metadata={"help": "None: unlabelled data (require_label must be false)"},
    )


@dataclass
class PairsConfig:
    name: str = field(
        default=MISSING,
        metadata={
            "help": "Name of this pair set: the file name of the thoughts and predictions written "
            "from it."
        },
    )
    path: str = field(default=MISSING, metadata={"help": "file, saved-dataset directory, or hub id."})
    format: str = field(default="auto", metadata={"help": "auto | csv | jsonl | parquet | datasets | hub."})
    split: str | None = field(default=None, metadata={"help": "for a DatasetDict or a hub dataset."})
    hub_name: str | None = field(
        default=None,
        metadata={"help": "hub dataset configuration, e.g. \"rte\" for nyu-mll/glue."},
    )
    columns: PairColumns = field(
        default_factory=PairColumns,
        metadata={"help": "Which columns hold id, premise, hypothesis and label."},
    )
    missing_id: str = field(
        default="error",
        metadata={"help": "error | row_index: a file without columns.id gets ids from the row index."},
    )
    label_map: dict[str, int] = field(
        default_factory=lambda: {"0": 0, "1": 1},
        metadata={
            "help": "Raw label (as text) -> 0/1; a raw label not in it is an error (strict) or a "
            "skipped row."
        },
    )
    drop_labels: list[str] = field(
        default_factory=list,
        metadata={"help": "raw labels meaning \"no gold label\": skip + count."},
    )
    require_label: bool = field(
        default=True,
        metadata={"help": "Every pair must have a label (false: unlabelled data is allowed)."},
    )
    extra_fields: list[str] = field(
        default_factory=list,
        metadata={"help": "Columns kept with each pair (e.g. explanations for the SFT human strategy)."},
    )
    id_prefix: str = field(default="", metadata={"help": "Prepended to every id."})
    strip_text: bool = field(
        default=True,
        metadata={"help": "Strip surrounding whitespace from premise and hypothesis."},
    )
    strict: bool = field(
        default=True,
        metadata={"help": "A bad row stops the run naming file:row (false: it is skipped and reported)."},
    )
    encoding: str = field(default="utf-8", metadata={"help": "Text encoding of the file."})
    delimiter: str | None = field(
        default=None,
        metadata={"help": "csv only; None: \"\\t\" for .tsv, else \",\"."},
    )
    limit: int | None = field(default=None, metadata={"help": "first N valid pairs."})
    skip_report: str | None = field(default=None, metadata={"help": "JSONL of skipped rows (lenient mode)"})


register_schema(PairsConfig, group="pairs")


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


def _read_text(cfg: PairsConfig) -> str:
    try:
        data = Path(cfg.path).read_bytes()
    except OSError as err:
        raise PairsError(f"{cfg.path}: cannot read ({err.strerror or err})") from None
    if not data.strip():
        raise PairsError(f"{cfg.path}: empty file (no header, no rows)")
    try:
        # surrogateescape keeps undecodable bytes as lone surrogates, so the row and field they sit in can be named.
        text = data.decode(cfg.encoding, errors="surrogateescape")
    except (LookupError, TypeError, ValueError) as err:
        raise PairsError(f"pairs.encoding: cannot decode with {cfg.encoding!r} ({err})") from None
    text = text[1:] if text.startswith("\ufeff") else text
    if not text.strip():
        raise PairsError(f"{cfg.path}: empty file (no header, no rows)")
    return text


_SURROGATE = re.compile("[\udc80-\udcff]")


def _bad_bytes(value: str) -> str | None:
    bad = _SURROGATE.search(value)
    return None if bad is None else f"byte 0x{ord(bad.group()) - 0xDC00:02x}"


def _read_csv(cfg: PairsConfig, needed: list[str]) -> Iterator[_Raw]:
    path = Path(cfg.path)
    text = _read_text(cfg)
    delimiter = cfg.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = reader.fieldnames or []
    except (csv.Error, TypeError) as err:
        raise PairsError(f"{cfg.path}: line 1: malformed CSV header ({err})") from None
    missing = [c for c in needed if c not in header]
    if missing:
        raise PairsError(
            f"{cfg.path}: line 1: missing column(s) {', '.join(map(repr, missing))} (have: {', '.join(header)})"
        )
    rows = enumerate(reader, start=1)
    while True:
        try:
            row_no, values = next(rows)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a quoted field that never closes: the rest of the file is unreadable
            raise PairsError(f"{cfg.path}: line {reader.line_num}: malformed CSV ({err})") from None
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
    try:
        rows = list(json_rows(_read_text(cfg)))
    except JsonTextError as err:
        raise PairsError(f"{cfg.path}: {err}") from None
    for row, line_no, values, problem in rows:
        if problem is not None or not isinstance(values, dict):
            yield _Raw(row, line_no, None, ("-", "malformed", problem or "not a JSON object"))
        else:
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
        self.id_col = cfg.columns.id  # None: ids from the row index (also when missing_id=row_index and absent)
        self.id_decided = cfg.missing_id != "row_index" or not cfg.columns.id

    def decide_id_column(self, values: dict[str, Any]) -> None:
        """missing_id=row_index: the first row read (a CSV's header) says whether the file has the id column."""
        if not self.id_decided:
            self.id_col = self.cfg.columns.id if self.cfg.columns.id in values else None
            self.id_decided = True

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
        if self.id_col:
            rid = values.get(self.id_col)
            if rid is None or (isinstance(rid, str) and not rid.strip()):
                raise _RowProblem(self.id_col, "missing", "missing")
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise _RowProblem(self.id_col, "not_text", f"not a string or integer ({type(rid).__name__})")
            if isinstance(rid, str) and _bad_bytes(rid):
                raise _RowProblem(self.id_col, "encoding", f"not valid {self.cfg.encoding} ({_bad_bytes(rid)})")
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
                self.id_col or "id",
                "duplicate_id",
                f"duplicate id {pair_id!r} (first at row {self.seen[pair_id]})",
            )
        self.seen[pair_id] = raw.row
        return Pair(pair_id, premise, hypothesis, label, extra)


class _RowProblem(Exception):
    def __init__(self, field: str, kind: str, reason: str, droppable: bool = False) -> None:
        super().__init__(reason)
        self.field, self.kind, self.reason, self.droppable = field, kind, reason, droppable


def _needed(cfg: PairsConfig) -> list[str]:
    cols = cfg.columns
    id_col = cols.id if cfg.missing_id != "row_index" else None
    return [c for c in (id_col, cols.premise, cols.hypothesis, cols.label) if c]


def _rows(cfg: PairsConfig, fmt: str) -> Iterator[_Raw]:
    needed = _needed(cfg)
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
    if cfg.missing_id not in ("error", "row_index"):
        raise PairsError(f"pairs.missing_id: must be error or row_index, got {cfg.missing_id!r}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise PairsError(f"pairs.limit must be > 0, got {cfg.limit}")
    validator = _Validator(cfg)
    pairs: list[Pair] = []
    skipped: list[Skip] = []
    rows_read = 0
    tabular = fmt in ("parquet", "datasets", "hub")
    for raw in _rows(cfg, fmt):
        rows_read += 1
        if tabular and rows_read == 1:
            _check_columns(cfg, raw.values or {})
        if raw.values is not None:
            validator.decide_id_column(raw.values)
        try:
            pairs.append(validator.pair(raw))
        except _RowProblem as prob:
            if cfg.strict and not prob.droppable:
                raise PairsError(
                    f"{_where(cfg.path, raw.row, raw.line)}: field '{prob.field}': {prob.reason}"
                ) from None
            rid = None
            if raw.values and validator.id_col and raw.values.get(validator.id_col) is not None:
                rid = _printable(str(raw.values[validator.id_col]))
            skipped.append(Skip(raw.row, raw.line, prob.field, prob.kind, prob.reason, rid))
        if cfg.limit is not None and len(pairs) >= cfg.limit:
            break
    result = PairsResult(pairs, skipped, cfg.path, rows_read)
    if skipped:
        _report_skips(cfg, result)
    if not pairs:
        raise PairsError(f"{cfg.path}: no valid pairs ({_no_pairs_reason(cfg, result)})")
    return result


def _no_pairs_reason(cfg: PairsConfig, result: PairsResult) -> str:
    if not result.rows_read:
        return "no data rows"
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.skip_counts().items()))
    first = result.skipped[0]
    return (f"all {result.rows_read} rows skipped ({counts}); first: row {first.row}"
            f"{f' (line {first.line})' if first.line is not None else ''}: field '{first.field}': {first.reason}")


def _check_columns(cfg: PairsConfig, first: dict[str, Any]) -> None:
    needed = _needed(cfg)
    missing = [c for c in needed if c not in first]
    if missing:
        raise PairsError(
            f"{cfg.path}: missing column(s) {', '.join(map(repr, missing))} (have: {', '.join(first)})"
        )


def _report_skips(cfg: PairsConfig, result: PairsResult) -> None:
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.skip_counts().items()))
    first = result.skipped[0]
    print(
        _printable(
            f"[pairs] {cfg.path}: skipped {len(result.skipped)} of {result.rows_read} rows ({counts}); "
            f"first: {_where(cfg.path, first.row, first.line)}: field '{first.field}': {first.reason}"
        ),
        file=sys.stderr,
    )
    if cfg.skip_report:
        out = Path(cfg.skip_report)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8", errors="backslashreplace") as fh:
            for s in result.skipped:
                fh.write(json.dumps({"file": cfg.path, **s.__dict__}, ensure_ascii=False) + "\n")
