"""Issue #16: bad input tried as a hostile user would, through the real CLIs and loaders.

One test group per class: no data is success; a file's own ids; ranges; unknown keys; causes kept; typographic
model outputs. Every user mistake ends as one line on stderr, exit 2, no traceback.

The CLIs run their `python -m` `__main__` in-process (`run_inprocess`: the same preflight, Hydra app and exit status);
one train mistake and the reflect one go through a real interpreter, as do the one-line errors of
tests/test_predict.py (predict), tests/test_thoughts.py (thoughts) and tests/test_sft.py (sft).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, compose, run_inprocess, run_module

import nli_cot.teacher.thoughts  # noqa: F401  (registers the pairs and teacher schemas)
from nli_cot.core.pairs import PairsConfig, PairsError, load_pairs
from nli_cot.core.parsing import RULES, _parse, parse_output
from nli_cot.training.data import DataError, read_sft_records

FIX = REPO / "tests" / "fixtures"
HEADER = "id,premise,hypothesis,label\n"


def _one_line_error(proc, *expect: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ 1. no data is success


def _thoughts(tmp_path: Path, data: Path, *extra: str):
    return run_inprocess("nli_cot.thoughts", ["teacher=fake", "pairs=csv", f"pairs.path={data}", *extra,
                                              f"output={tmp_path / 'o.jsonl'}", f"hydra.run.dir={tmp_path / 'h'}"])


def test_header_only_file_is_an_error_in_thoughts_and_predict(tmp_path: Path) -> None:
    data = tmp_path / "header_only.csv"
    data.write_text(HEADER)
    _one_line_error(_thoughts(tmp_path, data), f"{data}: no valid pairs (no data rows)")
    assert not (tmp_path / "o.jsonl").exists() or not (tmp_path / "o.jsonl").read_text()
    proc = run_inprocess("nli_cot.predict", ["model=tiny_mistral", "pairs=csv", f"pairs.path={data}",
                                             f"output={tmp_path / 'p.jsonl'}", f"hydra.run.dir={tmp_path / 'h2'}"])
    _one_line_error(proc, f"{data}: no valid pairs")


def test_empty_file_is_reported_as_empty_not_as_missing_columns(tmp_path: Path) -> None:
    data = tmp_path / "empty.csv"
    data.write_bytes(b"")
    line = _one_line_error(_thoughts(tmp_path, data), f"{data}: empty file")
    assert "missing column" not in line


def test_lenient_mode_with_every_row_skipped_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "all_bad.csv"
    data.write_text(HEADER + "1,p,h,maybe\n2,p,,1\n")
    _one_line_error(_thoughts(tmp_path, data, "pairs.strict=false"),
                    f"{data}: no valid pairs (all 2 rows skipped", "empty: 1", "unknown_label: 1")


@pytest.mark.parametrize(("content", "suffixes"), [
    ("", (".csv", ".jsonl")), ("\n\n", (".csv", ".jsonl")), ("\ufeff", (".csv", ".jsonl")),
    ("\n  \n", (".csv", ".jsonl")), ("[]", (".jsonl",)), (HEADER, (".csv",)), ('{"premise": "p"}\n', (".jsonl",)),
])
def test_loader_no_pairs_in_every_format(tmp_path: Path, content: str, suffixes: tuple[str, ...]) -> None:
    for suffix in suffixes:
        path = tmp_path / f"d{suffix}"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(PairsError, match=r"(empty file|no valid pairs)") as err:  # lenient too
            load_pairs(PairsConfig(name="x", path=str(path), strict=False))
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_sft_reader_and_stages_refuse_empty_sft_files(tmp_path: Path) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"train\.jsonl: no records"):
        read_sft_records(str(empty))
    from nli_cot.teacher.sft import StageError, from_sft

    src = compose(["sft_strategy=combined"], config_name="sft").sft_strategy.sources[0]
    src.path, src.kind, src.format = str(empty), "sft", "nli_cot"
    with pytest.raises(StageError, match=r"train\.jsonl: no records"):
        from_sft(src, None)


def test_reflect_refuses_an_empty_thoughts_file(tmp_path: Path) -> None:
    thoughts = tmp_path / "t.jsonl"
    thoughts.write_text("")
    proc = run_module("nli_cot.reflect", ["teacher=fake", f"thoughts={thoughts}", f"output={tmp_path / 'r.jsonl'}",
                                          f"hydra.run.dir={tmp_path / 'h'}"], timeout=180)
    _one_line_error(proc, f"{thoughts}: no records")


# --------------------------------------------------------------------------------- 2. the file's own ids


def test_csv_preset_uses_the_files_id_column(tmp_path: Path) -> None:
    data = tmp_path / "ids.csv"
    data.write_text(HEADER + "a7,p1,h1,1\nb9,p2,h2,0\n")
    pairs = load_pairs(compose(["pairs=csv", f"pairs.path={data}"], config_name="thoughts").pairs).pairs
    assert [(p.id, p.label) for p in pairs] == [("csv-a7", 1), ("csv-b9", 0)]
    no_ids = tmp_path / "no_ids.csv"
    no_ids.write_text("premise,hypothesis,label\np1,h1,1\np2,h2,0\n")
    pairs = load_pairs(compose(["pairs=csv", f"pairs.path={no_ids}"], config_name="thoughts").pairs).pairs
    assert [p.id for p in pairs] == ["csv-0", "csv-1"]  # no id column: the row index, as before


def test_csv_preset_reports_duplicate_ids(tmp_path: Path) -> None:
    data = tmp_path / "dup.csv"
    data.write_text(HEADER + "a,p1,h1,1\nb,p2,h2,0\na,p3,h3,0\n")
    _one_line_error(_thoughts(tmp_path, data),
                    f"{data}: row 3 (line 4): field 'id': duplicate id 'csv-a' (first at row 1)")


# ------------------------------------------------------------------------ 3-5. ranges, unknown keys, causes

TRAIN = ["model=tiny_mistral", "logger=none"]


@pytest.mark.parametrize(("override", "expect"), [
    ("optimizer.lr=-1", "optimizer.lr must be > 0, got -1.0"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas[1] must be in [0, 1), got 1.5"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be -1 or > 0, got 0"),
    ("+lora.rank=8", "lora.rank: unknown key in 'lora' (did you mean lora.r?)"),
    ("lora.rank=8", "lora.rank: unknown key in 'lora' (did you mean lora.r?)"),
    ("optimizer.learning_rate=1e-4", "did you mean optimizer.lr"),
    ("+trainer.gen_eval.max_example=3", "did you mean trainer.gen_eval.max_examples?"),
    ("lora.r=abc", "lora.r=abc; Value 'abc' of type 'str' could not be converted to Integer"),
    ("optimizer.lr=fast", "could not be converted to Float"),
])
def test_train_rejects_before_anything_loads(override: str, expect: str) -> None:
    # one of them through a fresh interpreter (what a user types), the others run the same __main__ in-process
    run = run_module if override == "optimizer.lr=-1" else run_inprocess
    line = _one_line_error(run("nli_cot.train", [*TRAIN, override]), expect)
    assert "+" not in line.replace(override, "")  # never suggests the `+key=value` form for a schema'd group


@pytest.mark.parametrize(("module", "args", "expect"), [
    ("nli_cot.predict", ["decoding.top_p=0"], "decoding.top_p must be in (0, 1], got 0.0"),
    ("nli_cot.predict", ["+decoding.temprature=0.5"], "did you mean decoding.temperature?"),
    ("nli_cot.predict", ["pairs.limit=0"], "pairs.limit must be > 0, got 0"),
    ("nli_cot.thoughts", ["teacher=fake", "teacher.concurrency=0"], "teacher.concurrency must be > 0, got 0"),
    ("nli_cot.thoughts", ["teacher=fake", "+pairs.colums.id=x"], "did you mean pairs.columns?"),
    ("nli_cot.sft", ["dev_fraction=1.5"], "dev_fraction must be in [0, 1], got 1.5"),
])
def test_every_stage_checks_ranges_and_keys(module: str, args: list[str], expect: str, tmp_path: Path) -> None:
    _one_line_error(run_inprocess(module, [*args, f"hydra.run.dir={tmp_path}"]), expect)


def test_validate_applies_the_same_checks_in_multirun_jobs() -> None:
    from nli_cot.training.train import ConfigError, validate

    cfg = compose([*TRAIN, "+lora.rank=8", f"dataset.train_path={FIX / 'sft_sample.jsonl'}"])
    with pytest.raises(ConfigError, match=r"did you mean lora\.r\?"):
        validate(cfg)


def test_a_crash_after_start_marks_the_run_failed(tmp_path: Path, monkeypatch) -> None:
    from nli_cot.training import train

    cfg = compose([*TRAIN, f"dataset.train_path={FIX / 'sft_sample.jsonl'}", "dataset.eval_path=null",
                   f"output_dir={tmp_path}", "run_name=r"])

    def boom(self) -> None:
        status = json.loads((tmp_path / "r" / "status.json").read_text())
        assert status["status"] == "running"
        raise RuntimeError("optimizer exploded")

    monkeypatch.setattr(train.TrainRecipe, "setup", boom)
    with pytest.raises(RuntimeError):
        train.run(cfg)
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"] == "RuntimeError: optimizer exploded"
    assert "Traceback" in status["traceback"]


# -------------------------------------------------------------------------------- 6. typographic outputs

CLEAN = '{"thought_process": "step 1: a man plays. step 2: so he performs.", "predicted_label": 1}'


@pytest.mark.parametrize("text", [
    "{\u201cthought_process\u201d: \u201cstep 1: it\u2019s a man.\u201d, \u201cpredicted_label\u201d: 1}",
    "\uff5b\uff02thought_process\uff02\uff1a\uff02step 1\uff02\uff0c\uff02predicted_label\uff02\uff1a1\uff5d",
    "{\u2018thought_process\u2019: \u2018step 1\u2019, \u2018predicted_label\u2019: \u20181\u2019}",
    '{"thought_process":\u00a0"step 1",\u200b\u00a0"predicted_label":\u202f1}',
    '\ufeff{"thought_process": "step 1", "predicted_label"\uff1a \uff11}',
    '{\u201cthought_process\u201d: \u201cstep 1\u201d, \u201cpredicted_label\u201d: \u201centailment\u201d}',
])
def test_typographic_outputs_parse(text: str) -> None:
    result = parse_output(text)
    assert result.ok and result.label == 1, result
    assert result.thought and result.thought.startswith("step 1")
    assert RULES.index(result.rule) >= RULES.index("typographic")


@pytest.mark.parametrize("text", [
    CLEAN,
    '{"thought_process": "He said \u201cno\u201d \uff1a it\u2019s false.", "predicted_label": 0}',
    "Final label: 1",
    "The hypothesis cannot be inferred.",
    "{'predicted_label': 1}",
    '```json\n{"thought_process": "t", "predicted_label": "1"}\n```',
])
def test_clean_outputs_parse_exactly_as_without_normalisation(text: str) -> None:
    assert parse_output(text) == _parse(text)


def test_the_whole_parser_corpus_is_unchanged_by_normalisation() -> None:
    from test_parsing import CORPUS

    for name, text, *_ in CORPUS:
        assert parse_output(text) == _parse(text), name
