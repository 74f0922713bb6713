"""Append-only JSON-lines record files with resume by id: the one writer every stage uses.

Features
- ``RecordWriter(path, id_field="id")`` opens (or creates) a JSONL file, reads the ids already finished into
  ``.done_ids`` and appends one record per ``append`` call as one complete line in one ``write``, then flushes
  and fsyncs, so a record is either fully on disk or not there at all.
- A torn last line (no trailing newline, or not valid JSON: the process died mid-write) is truncated away on
  open and ignored by ``read_records``; it was never counted as done, so the stage simply redoes that id.
- Appending an id that is already done raises ``DuplicateRecordError``: a stage can never duplicate a record.
- Optional ``lock=True`` takes an exclusive advisory lock (``fcntl.flock``) so two processes cannot append to
  the same file at once; a second one fails at once with a message naming the file.

Limits
- The whole file is read once on open to collect ids (fine for the 10^5-record files of this project).
- A corrupt line in the middle of a file is not repaired: it raises ``RecordFileError`` naming file and line.
- ids are compared as stored (a record with id ``1`` and one with ``"1"`` are different ids); stages in this
  project always write string ids.
- The lock is advisory and POSIX-only; it guards against a second run, not against other writers.

Whole-file writes live here too (``atomic_write_text``, ``write_json_atomic``, ``atomic_savefig``): a temporary
sibling, fsynced, then renamed over the target, so a reader sees the old file or the new one, never half of one.

``json_rows`` reads a JSON-lines text (or one JSON array) row by row with the reason a line is not JSON: the one
reader of that layout for pairs (``nli_cot.core.pairs``) and SFT sets (``nli_cot.training.data``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8_safe(text: str) -> str:
    """``text`` as it can be written as UTF-8: a high+low surrogate pair becomes its character, an unpaired
    surrogate (a decoder's half of a character, a ``\\ud800`` escape a model wrote and ``json.loads`` read)
    becomes U+FFFD. Text without surrogates comes back as it is."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` through a fsynced temporary sibling and a rename (the parent folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = utf8_safe(text)
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def nan_to_none(value: Any) -> Any:
    """JSON has no NaN: null instead, in nested dicts and lists too."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as indented JSON (NaN as null, unknown types as strings), written atomically."""
    atomic_write_text(path, json.dumps(nan_to_none(data), indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """A whole JSON-lines file (one object per line), written atomically; for appends use ``RecordWriter``."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_savefig(fig: Any, path: str | os.PathLike[str], dpi: int | None = None) -> None:
    """A matplotlib figure saved as PNG through a temporary sibling and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)


class JsonTextError(ValueError):
    """A text that is one JSON array and not valid JSON (nothing of it is usable); ``str``: where and why."""


def _json_problem(err: Exception) -> str:
    """Why ``json.loads`` failed, in one phrase."""
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON ({err.msg}, column {err.colno})"
    return f"invalid JSON ({type(err).__name__}: {err})"  # nested too deeply, an integer of > 4300 digits


def json_rows(text: str) -> Iterator[tuple[int, int | None, Any, str | None]]:
    """The rows of a JSON-lines text, or of a text that is one JSON array (its first non-blank character ``[``).

    Yields (row number from 1, line number or None for an array item, value, problem): ``problem`` says in one
    phrase why a line is not JSON (value None); the caller decides whether that stops it or skips the row.
    Blank lines are not rows. A broken array raises ``JsonTextError`` before any row.
    """
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise JsonTextError(f"line {err.lineno}: {_json_problem(err)}") from None
        except (RecursionError, ValueError) as err:
            raise JsonTextError(_json_problem(err)) from None
        for i, value in enumerate(items, start=1):
            yield i, None, value, None
        return
    row = 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        row += 1
        try:
            value = json.loads(line)
        except (RecursionError, ValueError) as err:  # JSONDecodeError is a ValueError
            yield row, line_no, None, _json_problem(err)
            continue
        yield row, line_no, value, None


class RecordFileError(ValueError):
    """A record file cannot be read: names the file and the line."""


class DuplicateRecordError(ValueError):
    """An id was appended twice."""


def _scan(path: Path, id_field: str | None) -> tuple[list[dict[str, Any]], int]:
    """Parse a record file; return (records, byte length of the complete part).

    The complete part ends after the last valid, newline-terminated line; anything after it is a torn tail.
    Blank lines are skipped (files written by other tools sometimes end with one).
    """
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good_end = 0
    pos = 0
    line_no = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line_no += 1
        if nl == -1:
            break  # no newline: torn tail, whatever it contains
        raw = data[pos:nl]
        is_last = nl + 1 >= len(data) or not data[nl + 1 :].strip()
        if raw.strip():
            try:
                rec = json.loads(raw.decode("utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                if is_last:
                    break  # a torn last line that happens to end in a newline
                raise RecordFileError(f"{path}: line {line_no}: not a JSON object record ({exc})") from None
            if id_field is not None and id_field not in rec:
                raise RecordFileError(f"{path}: line {line_no}: field '{id_field}': missing")
            records.append(rec)
        pos = nl + 1
        good_end = pos
    return records, good_end


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete records of a JSONL file, ignoring a torn last line. A missing file reads as empty."""
    p = Path(path)
    if not p.exists():
        return []
    records, _ = _scan(p, id_field=None)
    return records


class RecordWriter:
    """Line-complete, fsynced appends to a JSONL file, resuming by id."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        id_field: str = "id",
        *,
        fsync: bool = True,
        lock: bool = False,
    ) -> None:
        self.path = Path(path)
        self.id_field = id_field
        self._fsync = fsync
        self._mutex = threading.Lock()  # appends may come from worker threads
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if lock:
                self._lock()
            existing, good_end = _scan(self.path, id_field)
            if good_end < os.fstat(self._fd).st_size:
                os.ftruncate(self._fd, good_end)  # drop the torn tail so the next append starts a clean line
                os.fsync(self._fd)
            self.done_ids: set[Any] = set()
            for i, rec in enumerate(existing):
                rid = rec[id_field]
                if rid in self.done_ids:
                    raise RecordFileError(
                        f"{self.path}: record {i + 1}: field '{id_field}': duplicate id {rid!r}"
                    )
                self.done_ids.add(rid)
            self.n_existing = len(existing)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecordFileError(f"{self.path}: another process is writing this file") from None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one complete line; raise DuplicateRecordError if its id is already done."""
        if self.id_field not in record:
            raise ValueError(f"{self.path}: record has no '{self.id_field}' field")
        rid = record[self.id_field]
        line = (utf8_safe(json.dumps(record, ensure_ascii=False)) + "\n").encode("utf-8")
        with self._mutex:
            if rid in self.done_ids:
                raise DuplicateRecordError(f"{self.path}: id {rid!r} is already recorded")
            view = memoryview(line)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self._fsync:
                os.fsync(self._fd)
            self.done_ids.add(rid)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the flock
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, dict[int, float]]:
    """A run's ``logs/metrics.csv`` (``nli_cot.training.loggers``) as metric -> {step: value}; a later row for the same
    step (a resumed run) replaces the earlier one. A missing file reads as empty."""
    path = Path(path)
    series: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return series
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    series.setdefault(key, {})[int(float(step))] = float(value)
                except ValueError:
                    continue
    return series
