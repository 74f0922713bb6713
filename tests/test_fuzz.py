"""Property-based fuzzing (issue #16) of the pair loader, the SFT record reader and the output parser.

Random bytes, random encodings, random JSON shapes and truncations: the loaders either return data or raise the
project's own error (one printable line); whatever they return is never mislabelled (checked against the rows
that were written). The parser always returns a ParseResult, and a clean output parses as it did before
typographic normalisation existed.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nli_cot.core.pairs import PairColumns, PairsConfig, PairsError, load_pairs
from nli_cot.core.parsing import RULES, TYPOGRAPHIC, ParseResult, _parse, parse_output
from nli_cot.training.data import DataError, read_sft_records

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]
TYPO_CHARS = "".join(chr(c) for c in TYPOGRAPHIC)

# Text the writers can round-trip: no lone surrogates, no NUL.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
words = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=30).filter(lambda s: s.strip())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.sampled_from(
        ["0", "1", " 1 ", "1.0", "yes", ""]) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["id", "premise", "hypothesis", "label", "thought_process"]
row_shapes = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
    st.fixed_dictionaries({"id": st.integers(0, 5) | texts, "premise": words | json_values,
                           "hypothesis": words | json_values, "label": json_values}),
)
rows_strategy = st.lists(st.tuples(words, words, st.integers(0, 1)), min_size=1, max_size=6)


def _check_message(err: Exception) -> None:
    msg = str(err)
    assert msg and "\n" not in msg and len(msg.splitlines()) == 1, repr(msg)
    msg.encode("utf-8")  # printable: no lone surrogates


def _load(path: Path, **kw) -> list | None:
    """load_pairs' pairs, or None after a PairsError; any other exception fails the test."""
    try:
        result = load_pairs(PairsConfig(name="fuzz", path=str(path), **kw))
    except PairsError as err:
        _check_message(err)
        return None
    assert result.pairs  # zero pairs is an error, never a silent empty result
    for p in result.pairs:
        assert p.label in (0, 1) and p.id and p.premise.strip() and p.hypothesis.strip()
        p.premise.encode("utf-8")
        p.hypothesis.encode("utf-8")
    return result.pairs


def _csv_bytes(rows: list[tuple[str, str, int]], encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "premise", "hypothesis", "label"])
    for i, (premise, hypothesis, label) in enumerate(rows):
        writer.writerow([f"r{i}", premise, hypothesis, label])
    return out.getvalue().encode(encoding, errors="replace")


def _jsonl_bytes(rows: list[tuple[str, str, int]]) -> bytes:
    lines = [json.dumps({"id": f"r{i}", "premise": p, "hypothesis": h, "label": y}, ensure_ascii=False)
             for i, (p, h, y) in enumerate(rows)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _assert_faithful(pairs: list | None, rows: list[tuple[str, str, int]], exact_text: bool = True) -> None:
    """Every pair returned is a row that was written, with its own label (and its own text)."""
    for p in pairs or []:
        assert p.id.startswith("r")
        premise, hypothesis, label = rows[int(p.id[1:])]
        assert p.label == label, (p, rows)
        if exact_text:
            assert (p.premise, p.hypothesis) == (premise.strip(), hypothesis.strip())


# ------------------------------------------------------------------------------------------- pair loader


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]),
       strict=st.booleans(), encoding=st.sampled_from(ENCODINGS))
def test_pairs_random_bytes(data: bytes, suffix: str, strict: bool, encoding: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(data)
        _load(path, strict=strict, encoding=encoding)
        _load(path, strict=strict, encoding=encoding, columns=PairColumns(id=None))


@FUZZ
@given(rows=rows_strategy, write=st.sampled_from(ENCODINGS), read=st.sampled_from(ENCODINGS), strict=st.booleans())
def test_pairs_random_encodings_never_mislabel(rows, write: str, read: str, strict: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        path.write_bytes(_csv_bytes(rows, write))
        pairs = _load(path, strict=strict, encoding=read)
        _assert_faithful(pairs, rows, exact_text=False)  # mojibake is possible, a wrong label is not
        if write == read:
            assert pairs is not None and len(pairs) == len(rows)


@FUZZ
@given(rows=rows_strategy, fmt=st.sampled_from(["csv", "jsonl"]), cut=st.integers(0, 10_000), strict=st.booleans(),
       missing_id=st.sampled_from(["error", "row_index"]))
def test_pairs_truncated_files_never_mislabel(rows, fmt: str, cut: int, strict: bool, missing_id: str) -> None:
    data = _csv_bytes(rows) if fmt == "csv" else _jsonl_bytes(rows)
    cut = cut % (len(data) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{fmt}"
        path.write_bytes(data[:cut])
        pairs = _load(path, strict=strict, missing_id=missing_id)
        if missing_id == "error" or pairs is None or all(p.id.startswith("r") for p in pairs):
            _assert_faithful(pairs, rows)
        if cut == len(data):
            assert pairs is not None and len(pairs) == len(rows)


def _expected_label(value) -> int | None:
    """What a raw label may be read as; None: it must not become a pair."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1"):
        return int(value.strip())
    return None


@FUZZ
@given(shapes=st.lists(row_shapes, min_size=1, max_size=6), strict=st.booleans(), array=st.booleans())
def test_pairs_random_json_shapes(shapes, strict: bool, array: bool) -> None:
    text = json.dumps(shapes) if array else "\n".join(json.dumps(s) for s in shapes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_text(text, encoding="utf-8")
        pairs = _load(path, strict=strict, columns=PairColumns(id=None))  # id = the 0-based row
        for p in pairs or []:
            raw = shapes[int(p.id)]
            assert isinstance(raw, dict)
            assert p.label == _expected_label(raw.get("label")), (p, raw)
            assert (p.premise, p.hypothesis) == (raw["premise"].strip(), raw["hypothesis"].strip())
        with_ids = _load(path, strict=strict)
        for p in with_ids or []:
            raws = [s for s in shapes if isinstance(s, dict) and str(s.get("id")).strip() == p.id]
            assert raws and p.label in {_expected_label(r.get("label")) for r in raws}


# -------------------------------------------------------------------------------------- SFT record reader


def _read_sft(path: Path) -> list | None:
    try:
        records = read_sft_records(str(path))
    except DataError as err:
        _check_message(err)
        return None
    assert records
    for r in records:
        assert type(r["label"]) is int and r["label"] in (0, 1)
        assert isinstance(r["premise"], str) and r["premise"].strip()
    return records


@FUZZ
@given(data=st.binary(max_size=300))
def test_sft_reader_random_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(data)
        _read_sft(path)


@FUZZ
@given(shapes=st.lists(row_shapes, min_size=1, max_size=6), array=st.booleans())
def test_sft_reader_random_json_shapes(shapes, array: bool) -> None:
    text = json.dumps(shapes) if array else "\n".join(json.dumps(s) for s in shapes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_text(text, encoding="utf-8")
        records = _read_sft(path)
        if records is not None:  # every record accepted: each one's label is its own, 0/1, never a bool or "1"
            assert len(records) == len(shapes)
            for rec, raw in zip(records, shapes, strict=True):
                assert not isinstance(raw["label"], (bool, str)) and rec["label"] == int(raw["label"])


@FUZZ
@given(rows=rows_strategy, cut=st.integers(0, 10_000))
def test_sft_reader_truncated_files(rows, cut: int) -> None:
    written = [{"id": f"r{i}", "premise": p, "hypothesis": h, "thought_process": None, "label": y}
               for i, (p, h, y) in enumerate(rows)]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written).encode()
    cut = cut % (len(data) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(data[:cut])
        records = _read_sft(path)
        if records is not None:
            assert records == written[: len(records)]
        if cut == len(data):
            assert records == written


@FUZZ
@given(data=st.binary(max_size=300) | st.lists(row_shapes, max_size=5).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()))
def test_stage_record_files_random_content(data: bytes) -> None:
    """The records every stage resumes from (thoughts, reflections, predictions): a list or RecordFileError."""
    from nli_cot.core.records import RecordFileError, read_records

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_bytes(data)
        try:
            records = read_records(path)
        except RecordFileError as err:
            _check_message(err)
            return
        assert all(isinstance(r, dict) for r in records)


# ----------------------------------------------------------------------------------------- output parser


def _check_result(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert result.label in (None, 0, 1) and result.ok == (result.label is not None) and result.rule in RULES
    assert result.thought is None or isinstance(result.thought, str)


typo_text = st.text(st.sampled_from(list('{}":,\'01 abcdeilnrtpu_\n') + list(TYPO_CHARS) + ["\u2028", "\\"]),
                    max_size=120)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), typo_text, json_values.map(json.dumps), row_shapes.map(json.dumps)),
       cut=st.integers(0, 400))
def test_parser_never_raises(text: str, cut: int) -> None:
    for candidate in (text, text[:cut], text.translate(TYPOGRAPHIC)):
        result = parse_output(candidate)
        _check_result(result)
        if not any(ch in TYPO_CHARS for ch in candidate):
            assert result == _parse(candidate)  # clean text: exactly the parse without normalisation


@FUZZ
@given(thought=st.text(max_size=80), label=st.integers(0, 1), key=st.sampled_from(["predicted_label", "label"]))
def test_parser_clean_json_is_unchanged(thought: str, label: int, key: str) -> None:
    text = json.dumps({"thought_process": thought, key: label}, ensure_ascii=False)
    result = parse_output(text)
    assert result == _parse(text)
    assert (result.label, result.rule, result.ok) == (label, "json", True)
    assert result.thought == thought.strip()


@FUZZ
@given(thought=st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters=" .;-"), max_size=60),
       label=st.integers(0, 1), style=st.sampled_from(["curly", "fullwidth", "spaces", "curly_single"]))
def test_parser_reads_typographic_objects(thought: str, label: int, style: str) -> None:
    q, open_, close, colon, comma, sp = {
        "curly": ("\u201c\u201d", "{", "}", ":", ",", " "),
        "fullwidth": ("\uff02\uff02", "\uff5b", "\uff5d", "\uff1a", "\uff0c", "\u3000"),
        "spaces": ('""', "{", "}", ":", ",", "\u00a0\u200b"),
        "curly_single": ("\u2018\u2019", "{", "}", ":", ",", " "),
    }[style]
    text = (f"{open_}{q[0]}thought_process{q[1]}{colon}{sp}{q[0]}{thought}{q[1]}{comma}{sp}"
            f"{q[0]}predicted_label{q[1]}{colon}{sp}{label}{close}")
    result = parse_output(text)
    assert result.ok and result.label == label, (text, result)
    if thought.strip() and style != "curly_single":
        assert result.thought == normalised_strip(thought)


def normalised_strip(text: str) -> str:
    return text.translate(TYPOGRAPHIC).strip()
