"""RecordWriter / read_records: line-complete appends, torn-tail repair, resume by id, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nli_cot.core.records import DuplicateRecordError, RecordFileError, RecordWriter, read_records


def test_append_and_resume(tmp_path):
    p = tmp_path / "sub" / "r.jsonl"
    with RecordWriter(p) as w:
        assert w.done_ids == set()
        w.append({"id": "a", "x": 1})
        w.append({"id": "b", "x": "é"})
    assert p.read_text(encoding="utf-8").count("\n") == 2
    w2 = RecordWriter(p)
    assert w2.done_ids == {"a", "b"}
    w2.append({"id": "c"})
    w2.close()
    assert [r["id"] for r in read_records(p)] == ["a", "b", "c"]


def test_duplicate_id_raises(tmp_path):
    w = RecordWriter(tmp_path / "r.jsonl")
    w.append({"id": "a"})
    with pytest.raises(DuplicateRecordError):
        w.append({"id": "a"})
    w.close()
    assert len(read_records(tmp_path / "r.jsonl")) == 1


def test_custom_id_field(tmp_path):
    with RecordWriter(tmp_path / "r.jsonl", id_field="key") as w:
        w.append({"key": 7})
    assert RecordWriter(tmp_path / "r.jsonl", id_field="key").done_ids == {7}


@pytest.mark.parametrize("tail", [b'{"id": "c", "x": 1', b'{"id": "c", "x"\n', b"garbage"])
def test_torn_tail_is_ignored_and_truncated(tmp_path, tail):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": "b"}\n' + tail)
    assert [r["id"] for r in read_records(p)] == ["a", "b"]
    w = RecordWriter(p)
    assert w.done_ids == {"a", "b"}
    w.append({"id": "c"})
    w.close()
    assert [r["id"] for r in read_records(p)] == ["a", "b", "c"]
    assert p.read_bytes().endswith(b'{"id": "c"}\n')


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(RecordFileError, match=r"r\.jsonl: line 2"):
        RecordWriter(p)


def test_duplicate_in_file_and_missing_id(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(RecordFileError, match="duplicate id"):
        RecordWriter(p)
    p.write_text('{"id": "a"}\n{"x": 1}\n')
    with pytest.raises(RecordFileError, match="line 2: field 'id'"):
        RecordWriter(p)


def test_blank_lines_and_missing_file(tmp_path):
    p = tmp_path / "r.jsonl"
    assert read_records(p) == []
    p.write_text('{"id": "a"}\n\n{"id": "b"}\n\n')
    assert [r["id"] for r in read_records(p)] == ["a", "b"]


def test_lock_refuses_second_writer(tmp_path):
    p = tmp_path / "r.jsonl"
    w = RecordWriter(p, lock=True)
    with pytest.raises(RecordFileError, match="another process"):
        RecordWriter(p, lock=True)
    w.close()
    RecordWriter(p, lock=True).close()


def test_sigkill_never_leaves_a_counted_half_record(tmp_path):
    """A child appends big records as fast as it can; SIGKILL it; every complete line must parse."""
    p = tmp_path / "r.jsonl"
    script = textwrap.dedent(
        f"""
        import sys
        from nli_cot.core.records import RecordWriter
        w = RecordWriter({str(p)!r}, fsync=False)
        i = 0
        while True:
            w.append({{"id": str(i), "blob": "x" * 200000}})
            if i == 3:
                print("go", flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"go"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    recs = read_records(p)
    assert len(recs) >= 4
    assert [r["id"] for r in recs] == [str(i) for i in range(len(recs))]
    w = RecordWriter(p)
    assert w.done_ids == {r["id"] for r in recs}
    w.append({"id": "next"})
    w.close()
    lines = p.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert all(json.loads(x) for x in lines[:-1])


def test_json_rows_reads_lines_or_one_array_and_names_each_problem():
    from nli_cot.core.records import JsonTextError, json_rows

    rows = list(json_rows('{"a": 1}\n\n{"a": 2,}\n[3]\n'))
    assert [(n, line) for n, line, _, _ in rows] == [(1, 1), (2, 3), (3, 4)]  # blank lines are not rows
    assert rows[0][2:] == ({"a": 1}, None)
    assert rows[1][2] is None and rows[1][3].startswith("invalid JSON (") and "column" in rows[1][3]
    assert rows[2][2:] == ([3], None)  # not an object: the caller's call
    assert list(json_rows(' [{"a": 1}, 2]')) == [(1, None, {"a": 1}, None), (2, None, 2, None)]
    with pytest.raises(JsonTextError, match=r"line 2: invalid JSON"):
        list(json_rows('[{"a": 1},\n oops]'))


def test_unpaired_surrogates_are_written_as_replacement_characters(tmp_path):
    """A decoded token can be half a character (an unpaired UTF-16 surrogate): no UTF-8 file can hold it, so the
    writers put U+FFFD there instead of failing mid-run; a pair written as two halves is its character."""
    from nli_cot.core.records import utf8_safe, write_jsonl_atomic

    assert utf8_safe("plain é") == "plain é"
    assert utf8_safe("a\ud800b\udc00") == "a\ufffdb\ufffd"
    assert utf8_safe("\ud83d\ude00") == "\U0001f600"
    with RecordWriter(tmp_path / "r.jsonl") as w:
        w.append({"id": "a", "text": "half \ud800 here"})
    assert read_records(tmp_path / "r.jsonl") == [{"id": "a", "text": "half \ufffd here"}]
    write_jsonl_atomic(tmp_path / "w.jsonl", [{"id": "b", "text": "\udfff"}])
    assert read_records(tmp_path / "w.jsonl") == [{"id": "b", "text": "\ufffd"}]
