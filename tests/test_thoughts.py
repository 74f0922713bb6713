"""Thoughts stage against the scripted loopback server: records, stats that match what the server returned,
resume without repaid requests (including after a real SIGKILL), budget, failures, one-line input errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, compose, run_inprocess, run_module
from fake_openai_server import FakeOpenAIServer

from nli_cot.core.parsing import parse_output
from nli_cot.core.records import read_records
from nli_cot.teacher.stage_runner import EXIT_INCOMPLETE, guarded, import_source_thoughts
from nli_cot.teacher.thoughts import run

FIX = REPO / "tests" / "fixtures" / "data"


def write_pairs(path, n: int) -> None:
    with open(path, "w") as fh:
        fh.write("id,premise,hypothesis,label\n")
        for i in range(n):
            fh.write(f"q{i},Premise number {i} about a scene.,Hypothesis {i},{i % 2}\n")


def overrides(tmp_path, url: str, pairs: str, *extra: str) -> list[str]:
    return [
        "teacher=fake",
        f"teacher.base_url={url}",
        "pairs=csv",
        f"pairs.path={pairs}",
        "pairs.columns.id=id",
        "pairs.id_prefix=''",
        f"output={tmp_path / 'thoughts.jsonl'}",
        "progress=false",
        *extra,
    ]


def cfg_for(tmp_path, url, pairs, *extra):
    return compose(overrides(tmp_path, url, pairs, *extra), "thoughts")


def test_records_and_stats_match_what_the_server_returned(tmp_path):
    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, 12)
    script = {
        "Hypothesis 0": [{"label": 0}],  # gold 0: correct
        "Hypothesis 1": [{"status": 429, "retry_after": 0}, {"label": 1}],  # correct after a 429
        "Hypothesis 2": [{"status": 500}, {"malformed": True}, {"label": 1}],  # wrong after two faults
        "Hypothesis 3": [{"sleep": 0.6}, {"label": 0}],  # timed out once, then wrong
        "Hypothesis 4": [{"truncated": True, "label": 0}],  # cut off: what the parser makes of it counts
        "Hypothesis 5": [{"content": "I really cannot say."}],  # unparseable
        "Hypothesis 6": [
            {"content": '```json\n{"thought_process": "Step 1: x.", "predicted_label": "0"}\n```'}
        ],
        "Hypothesis 7": [{"content": "Final label: 1"}],
        "Hypothesis 8": [{"content": '{"thought_process": "Step 3: it follows.", "predicted_label": 1}'}],
        "Hypothesis 9": [{"content": "no json at all, and no verdict"}],
    }
    with FakeOpenAIServer(script, default={"label": 1}) as server:
        cfg = cfg_for(tmp_path, server.url, pairs, "teacher.timeout_s=0.3")
        summary = run(cfg)
    records = {r["id"]: r for r in read_records(cfg.output)}
    assert len(records) == 12
    # What the server finally answered, per pair, read by the same parser: the ground truth of the stats.
    # The slow answer to pair 3 came after the client had timed out: billed by a real API, never received.
    received = [e for e in server.paid() if "sleep" not in e["action"]]
    final = {e["key"]: e["content"] for e in received}
    assert len(final) == 12 and len(received) == 12  # every pair received (and paid for) exactly once
    assert len(server.paid()) == 13
    expected_correct = expected_unparsed = 0
    for i in range(12):
        rec, content = records[f"q{i}"], final[f"Hypothesis {i}"]
        parsed = parse_output(content)
        assert rec["raw"] == content and rec["label"] == i % 2
        assert (rec["predicted_label"], rec["parse_ok"], rec["parse_rule"]) == (
            parsed.label,
            parsed.ok,
            parsed.rule,
        )
        expected_correct += parsed.ok and parsed.label == i % 2
        expected_unparsed += not parsed.ok
    f = summary["file"]
    assert (
        f["correct"] == expected_correct and f["parse_failures"] == expected_unparsed and f["with_gold"] == 12
    )
    assert (
        records["q1"]["attempts"] == 2 and records["q2"]["attempts"] == 3 and records["q3"]["attempts"] == 2
    )
    assert records["q4"]["finish_reason"] == "length"
    assert (
        not records["q5"]["parse_ok"] and records["q6"]["parse_ok"] and records["q6"]["parse_rule"] != "json"
    )
    usage = [e["usage"] for e in received]
    assert f["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert f["completion_tokens"] == sum(u["completion_tokens"] for u in usage)
    assert summary["run"]["done"] == 12 and summary["run"]["failed"] == 0
    on_disk = json.loads((tmp_path / "thoughts.summary.json").read_text())
    assert on_disk["file"] == f
    assert records["q0"]["teacher"].startswith("openai:fake-teacher@127.0.0.1:")
    assert len(records["q0"]["prompt_hash"]) == 12


def test_resume_sends_no_request_for_finished_ids(tmp_path):
    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, 6)
    with FakeOpenAIServer(default={"label": 1}) as server:
        first = run(cfg_for(tmp_path, server.url, pairs, "pairs.limit=4"))
        assert first["run"]["done"] == 4 and len(server.log) == 4
        second = run(cfg_for(tmp_path, server.url, pairs))
        assert second["run"]["already_done"] == 4 and second["run"]["done"] == 2
        assert len(server.log) == 6
        third = run(cfg_for(tmp_path, server.url, pairs))
        assert third["run"]["done"] == 0 and len(server.log) == 6
    assert sorted(r["id"] for r in read_records(tmp_path / "thoughts.jsonl")) == [f"q{i}" for i in range(6)]


def test_resume_refuses_a_different_prompt(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, 2)
    with FakeOpenAIServer() as server:
        run(cfg_for(tmp_path, server.url, pairs, "pairs.limit=1"))
        code = guarded(run, cfg_for(tmp_path, server.url, pairs, "teacher_prompt.system=Other words."))
        assert code == 2 and "allow_mixed=true" in capsys.readouterr().err
        assert (
            run(
                cfg_for(tmp_path, server.url, pairs, "teacher_prompt.system=Other words.", "allow_mixed=true")
            )["run"]["done"]
            == 1
        )


def test_budget_and_failures_are_not_written_and_are_retried_next_run(tmp_path):
    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, 8)
    script = {"Hypothesis 0": [{"status": 500}] * 4}  # max_retries=3: fails this run
    with FakeOpenAIServer(script, default={"label": 0}) as server:
        cfg = cfg_for(tmp_path, server.url, pairs, "teacher.max_requests=7", "teacher.concurrency=1")
        summary = run(cfg)
        r = summary["run"]
        assert (
            r["failed"] == 1 and r["done"] == 3 and r["budget_skipped"] == 4
        )  # 4 failed attempts + 3 ok = 7
        assert (
            guarded(run, cfg_for(tmp_path, server.url, pairs, "teacher.max_requests=0")) == 0
        )  # budget: no failure
        done = {rec["id"] for rec in read_records(cfg.output)}
        assert "q0" not in done and len(done) == 3
        summary = run(cfg_for(tmp_path, server.url, pairs))
        assert summary["run"]["already_done"] == 3 and summary["run"]["done"] == 5
        assert guarded(run, cfg) == 0
    assert len(read_records(cfg.output)) == 8


def test_failures_give_exit_code_3(tmp_path):
    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, 2)
    with FakeOpenAIServer({"Hypothesis 1": [{"status": 503}] * 9}) as server:
        assert guarded(run, cfg_for(tmp_path, server.url, pairs, "teacher.max_retries=1")) == EXIT_INCOMPLETE


def test_fatal_teacher_error_is_one_line(tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    write_pairs(pairs, 2)
    with FakeOpenAIServer(default={"status": 401}) as server:
        assert guarded(run, cfg_for(tmp_path, server.url, pairs)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "HTTP 401" in err[0]


def test_cli_bad_input_one_line_error(tmp_path):
    proc = run_module(
        "nli_cot.thoughts",
        [
            "teacher=fake",
            "pairs=csv",
            f"pairs.path={FIX / 'bad_rows.csv'}",
            "pairs.columns.id=id",
            "pairs.id_prefix=''",
            f"output={tmp_path / 'o.jsonl'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {FIX / 'bad_rows.csv'}: row 2 (line 3): field 'hypothesis': empty"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    """A real `python -m nli_cot.thoughts` run is SIGKILLed mid-way; the same command then finishes the job.
    No finished id is requested again, none is lost, none is written twice."""
    pairs = tmp_path / "pairs.csv"
    n = 40
    write_pairs(pairs, n)
    out = tmp_path / "thoughts.jsonl"
    with FakeOpenAIServer(default={"label": 1, "sleep": 0.05}) as server:
        args = overrides(
            tmp_path, server.url, pairs, "teacher.concurrency=2", f"hydra.run.dir={tmp_path / 'h'}"
        )
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
        proc = subprocess.Popen(
            [sys.executable, "-m", "nli_cot.thoughts", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(600):  # bounded wait: at most ~60 s
                if out.exists() and out.read_bytes().count(b"\n") >= 8:
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        before = {r["id"] for r in read_records(out)}
        assert 8 <= len(before) < n
        server.phase = 1  # everything from here on is the resumed run
        proc2 = run_inprocess("nli_cot.thoughts", args)  # the kill is the process boundary; the resume runs here
        assert proc2.returncode == 0, proc2.stderr[-2000:]
    records = read_records(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == n and set(ids) == {f"q{i}" for i in range(n)}
    resumed_keys = {e["key"] for e in server.log if e["phase"] == 1}
    finished_keys = {f"Hypothesis {i[1:]}" for i in before}
    assert not resumed_keys & finished_keys, "a finished id was requested again"
    # Only requests in flight at the kill were paid twice (at most `concurrency` plus the queued ones).
    assert len(server.paid()) - n <= 4
    summary = json.loads((tmp_path / "thoughts.summary.json").read_text())
    assert summary["run"]["already_done"] == len(before) and summary["run"]["done"] == n - len(before)
    assert "skipped (already done)" in proc2.stdout  # the summary table was printed


def test_import_source_thoughts(shared_data):
    recs = import_source_thoughts(str(shared_data / "original-sample" / "sample_thoughts.json"))
    assert len(recs) == 100 and len({r["id"] for r in recs}) == 100
    assert sum(r["correct"] for r in recs) == 67
    assert sum(r["label"] for r in recs) == 54
    wrong = [r for r in recs if not r["correct"]]
    assert sum(r["label"] == 1 for r in wrong) == 31  # the teacher's "no entailment" bias (source-project.md)
    assert all(r["parse_ok"] and r["thought_process"] for r in recs)
    assert sum(r["attempts"] > 1 for r in recs) == 2  # two pairs needed a re-prompt there


def test_import_errors_name_file_line_field(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(
        '{"id": 0, "premise": "p", "hypothesis": "h", "true_label": 1}\n\n{"id": 1, "premise": "p", "true_label": 0}\n'
    )
    from nli_cot.teacher.stage_runner import StageError

    with pytest.raises(StageError, match=r"t\.json: line 3: field 'hypothesis': missing or empty"):
        import_source_thoughts(str(p))
