"""Pairs loader: formats, column and label mapping, errors that name file/row/field, strict vs lenient."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, compose
from omegaconf import OmegaConf

import nli_cot.teacher.thoughts  # noqa: F401  (registers the pairs schema)
from nli_cot.core.pairs import PairColumns, PairsConfig, PairsError, _format_of, load_pairs

FIX = REPO / "tests" / "fixtures" / "data"


def cfg(path, **kw) -> PairsConfig:
    return OmegaConf.structured(PairsConfig(name="t", path=str(path), **kw))


def test_csv_with_ids_and_stripping():
    res = load_pairs(cfg(FIX / "pairs_ok.csv"))
    assert [p.id for p in res.pairs] == ["p1", "p2", "p3", "p4"]
    assert [p.label for p in res.pairs] == [1, 0, 1, 0]
    assert res.pairs[1].premise == "A dog runs through the snow, chasing a ball."  # quoted comma kept
    assert res.pairs[2].premise == "Two kids are building a sandcastle."  # surrounding spaces stripped
    assert res.skipped == [] and res.rows_read == 4


def test_ids_from_row_index_when_no_id_column():
    res = load_pairs(cfg(FIX / "pairs_ok.csv", columns=PairColumns(id=None), id_prefix="x-"))
    assert [p.id for p in res.pairs] == ["x-0", "x-1", "x-2", "x-3"]


def test_tsv_three_way_words():
    c = cfg(
        FIX / "pairs_3way.tsv",
        columns=PairColumns(id=None),
        label_map={"entailment": 1, "neutral": 0, "contradiction": 0},
    )
    assert [p.label for p in load_pairs(c).pairs] == [1, 0, 0]


def test_jsonl_column_map_three_way_and_no_gold_dropped_even_in_strict_mode():
    c = cfg(
        FIX / "pairs_3way.jsonl",
        columns=PairColumns(id="uid", premise="sentence1", hypothesis="sentence2", label="gold"),
        label_map={"entailment": 1, "neutral": 0, "contradiction": 0},
        drop_labels=["-"],
    )
    res = load_pairs(c)
    assert [(p.id, p.label) for p in res.pairs] == [("m0", 1), ("m1", 0), ("m2", 0), ("m4", 1)]
    assert res.skip_counts() == {"no_gold_label": 1}
    assert res.skipped[0].row == 4 and res.skipped[0].line == 5  # the blank line is not a row


def test_parquet_with_integer_codes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "sentence1": ["a b", "c d", "e f"],
            "sentence2": ["a", "x", "y"],
            "label": [0, 1, 2],
            "idx": [7, 8, 9],
        }
    )
    path = tmp_path / "glue.parquet"
    pq.write_table(table, path)
    c = cfg(
        path,
        columns=PairColumns(id="idx", premise="sentence1", hypothesis="sentence2"),
        label_map={"0": 1, "1": 0, "2": 0},
    )
    assert [(p.id, p.label) for p in load_pairs(c).pairs] == [("7", 1), ("8", 0), ("9", 0)]
    c2 = cfg(path, columns=PairColumns(id="idx", premise="premise"), label_map={"0": 1, "1": 0, "2": 0})
    with pytest.raises(PairsError, match=r"glue\.parquet: missing column\(s\) 'premise', 'hypothesis'"):
        load_pairs(c2)


def test_saved_datasets_dir_through_the_mnli_hub_config(tmp_path):
    """conf/pairs/mnli_hub.yaml's mapping (MNLI integer codes, -1 = no gold) on a local save_to_disk copy."""
    import datasets

    rows = {
        "premise": ["p0", "p1", "p2", "p3"],
        "hypothesis": ["h0", "h1", "h2", "h3"],
        "label": [0, 1, 2, -1],
    }
    dd = datasets.DatasetDict({"validation_matched": datasets.Dataset.from_dict(rows)})
    dd.save_to_disk(str(tmp_path / "mnli"))
    pairs_cfg = compose(
        ["pairs=mnli_hub", f"pairs.path={tmp_path / 'mnli'}", "pairs.format=datasets"], "thoughts"
    ).pairs
    res = load_pairs(pairs_cfg)
    assert [(p.id, p.label) for p in res.pairs] == [
        ("mnli-validation_matched-0", 1),
        ("mnli-validation_matched-1", 0),
        ("mnli-validation_matched-2", 0),
    ]
    assert res.skip_counts() == {"no_gold_label": 1}
    no_split = cfg(tmp_path / "mnli")
    with pytest.raises(PairsError, match=r"has splits \['validation_matched'\]; set pairs.split"):
        load_pairs(no_split)


def test_format_detection():
    assert _format_of(cfg("x.jsonl")) == "jsonl"
    assert _format_of(cfg("x.json")) == "jsonl"
    assert _format_of(cfg("x.tsv")) == "csv"
    assert _format_of(cfg("nyu-mll/multi_nli")) == "hub"
    with pytest.raises(PairsError, match="set pairs.format"):
        _format_of(cfg("data.xlsx"))


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "bad_missing_column.csv",
            r"bad_missing_column\.csv: line 1: missing column\(s\) 'id', 'hypothesis' \(have: premise, hyp, label\)",
        ),
        ("bad_rows.csv", r"bad_rows\.csv: row 2 \(line 3\): field 'hypothesis': empty"),
        (
            "bad_encoding.csv",
            r"bad_encoding\.csv: row 1 \(line 2\): field 'premise': not valid utf-8 \(byte 0xe9\)",
        ),
        ("bad_rows.jsonl", r"bad_rows\.jsonl: row 2 \(line 2\): field '-': invalid JSON"),
    ],
)
def test_strict_errors_name_file_row_field(name, message):
    with pytest.raises(PairsError, match=message):
        load_pairs(cfg(FIX / name))


def test_strict_unknown_label_and_duplicate_id(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("id,premise,hypothesis,label\na,p,h,1\nb,p,h,maybe\n")
    with pytest.raises(
        PairsError, match=r"row 2 \(line 3\): field 'label': unknown value 'maybe' \(known: 0, 1\)"
    ):
        load_pairs(cfg(path))
    path.write_text("id,premise,hypothesis,label\na,p,h,1\na,q,r,0\n")
    with pytest.raises(
        PairsError, match=r"row 2 \(line 3\): field 'id': duplicate id 'a' \(first at row 1\)"
    ):
        load_pairs(cfg(path))


def test_lenient_skips_with_a_report(tmp_path, capsys):
    report = tmp_path / "skips.jsonl"
    res = load_pairs(cfg(FIX / "bad_rows.csv", strict=False, skip_report=str(report)))
    assert [p.id for p in res.pairs] == ["b1", "b5"]
    assert res.skip_counts() == {"empty": 1, "unknown_label": 1, "duplicate_id": 1}
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert [(x["row"], x["field"], x["kind"]) for x in lines] == [
        (2, "hypothesis", "empty"),
        (3, "label", "unknown_label"),
        (4, "id", "duplicate_id"),
    ]
    err = capsys.readouterr().err
    assert "skipped 3 of 5 rows" in err and "row 2 (line 3): field 'hypothesis': empty" in err

    res = load_pairs(cfg(FIX / "bad_rows.jsonl", strict=False))
    assert [p.id for p in res.pairs] == ["j1", "j4"]
    assert res.skip_counts() == {"malformed": 1, "not_text": 1}
    res = load_pairs(cfg(FIX / "bad_encoding.csv", strict=False))
    assert [p.id for p in res.pairs] == ["e2"] and res.skip_counts() == {"encoding": 1}


def test_other_encoding_and_limit(tmp_path):
    assert (
        load_pairs(cfg(FIX / "bad_encoding.csv", encoding="latin-1")).pairs[0].premise
        == "Café owners open early."
    )
    assert len(load_pairs(cfg(FIX / "pairs_ok.csv", limit=2)).pairs) == 2


def test_file_level_errors(tmp_path):
    with pytest.raises(PairsError, match="no such file"):
        load_pairs(cfg(tmp_path / "nope.csv"))
    with pytest.raises(PairsError, match="label_map: values must be 0 or 1"):
        load_pairs(cfg(FIX / "pairs_ok.csv", label_map={"1": 2}))


def test_unlabelled_input(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('{"id": "u1", "premise": "p", "hypothesis": "h"}\n')
    res = load_pairs(cfg(path, columns=PairColumns(label=None), require_label=False))
    assert res.pairs[0].label is None


# ------------------------------------------------------------------------------------- the shared data sets


@pytest.mark.parametrize(
    "group, rows, positives",
    [("esnli", 9842, 3329), ("mnli", 9815, 3479), ("rte", 2490, 1249), ("original_sample", 100, 54)],
)
def test_shared_sets_through_their_configs(shared_data, group, rows, positives):
    pairs_cfg = compose([f"pairs={group}", f"data_root={shared_data}"], "thoughts").pairs
    res = load_pairs(pairs_cfg)
    assert len(res.pairs) == rows and res.skipped == []
    assert sum(p.label for p in res.pairs) == positives  # the counts in shared/data/README.md
    if group == "esnli":
        assert len(res.pairs[0].extra["explanations"]) == 3
    if group == "original_sample":
        assert res.pairs[17].id == "original-sample-17"
