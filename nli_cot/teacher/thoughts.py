"""Stage 1, teacher thoughts: ``python -m nli_cot.thoughts [pairs=...] [teacher=...] [key=value ...]``.

For every NLI pair a teacher writes ``{"thought_process", "predicted_label"}``; one record per pair is appended
to ``output`` as soon as its answer arrives.

Features
- Pairs come from ``nli_cot.core.pairs`` (any format, strict or lenient); the prompt from ``teacher_prompt``
  (``nli_cot.teacher.teacher_prompts``); the teacher from ``teacher`` (HTTP endpoint or local model).
- Resume: ids already in ``output`` are skipped before any request, so a re-run after a crash or SIGKILL
  never pays twice for a finished id; records are written through ``nli_cot.core.records.RecordWriter``
  (line-complete, fsynced, no duplicates, one writer per file).
- A resumed run refuses to mix records from another teacher or prompt (``allow_mixed=true`` overrides).
- Records keep the raw answer, the parse (``nli_cot.core.parsing.parse_output``: label, thought, rule), parse
  status, gold label, correctness, teacher id, prompt name + hash, token usage, latency and attempts.
- Items whose request failed (after retries) or was beyond the request budget are not written: they are
  counted, and the next run does exactly those.
- tqdm progress (rate, ETA, running accuracy); a summary table at the end, also written as JSON next to the
  output (``<output>.summary.json``).
- Exit codes: 0 done (or stopped by the request budget), 2 bad input/config (one line, no traceback),
  3 some items failed (re-run to retry them).

Limits
- One teacher answer per pair (no self-consistency sampling, no re-prompting of unparseable answers; the
  reflection stage takes the unparseable ones).
- The summary's accuracy is over every record in the file (this run's and earlier ones').
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import hydra
from omegaconf import MISSING, DictConfig

from nli_cot.core.checks import check_config
from nli_cot.core.config import register_schema
from nli_cot.core.pairs import PairsConfig, load_pairs
from nli_cot.core.parsing import parse_output
from nli_cot.core.records import read_records
from nli_cot.teacher.stage_runner import (
    exit_if_failed,
    pct,
    print_stage_summary,
    run_and_file,
    run_stage,
    write_summary,
)
from nli_cot.teacher.teacher_prompts import TeacherPromptConfig, prompt_hash, teacher_messages
from nli_cot.teacher.teachers import Reply, TeacherConfig, provenance, teacher_id


@dataclass
class ThoughtsConfig:
    pairs: PairsConfig = field(
        default=MISSING,
        metadata={"help": "The pairs the teacher reasons about (conf/pairs/)."},
    )
    teacher: TeacherConfig = field(default=MISSING, metadata={"help": "The teacher (conf/teacher/)."})
    teacher_prompt: TeacherPromptConfig = field(
        default=MISSING,
        metadata={"help": "The teacher's prompt (conf/teacher_prompt/)."},
    )
    data_root: str = field(
        default="../shared/data",
        metadata={"help": "Folder of the shared data sets (pairs paths interpolate it)."},
    )
    output: str = field(
        default=MISSING,
        metadata={"help": "Thoughts JSONL (resumed: finished ids are never requested again)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    allow_mixed: bool = field(
        default=False,
        metadata={"help": "resume onto records made by another teacher or prompt."},
    )


register_schema(ThoughtsConfig, name="thoughts_schema")


# ----------------------------------------------------------------------------------------------- this stage


def thought_record(pair: Any, reply: Reply, teacher: str, prompt_name: str, phash: str) -> dict[str, Any]:
    """The record of one teacher answer."""
    parsed = parse_output(reply.text or "")
    correct = None if pair.label is None else (parsed.ok and parsed.label == pair.label)
    return {
        "id": pair.id,
        "premise": pair.premise,
        "hypothesis": pair.hypothesis,
        "label": pair.label,
        "predicted_label": parsed.label,
        "thought_process": parsed.thought,
        "correct": correct,
        "parse_ok": parsed.ok,
        "parse_rule": parsed.rule,
        **provenance(reply, teacher, prompt_name, phash),
    }


def thoughts_file_stats(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Totals over a thoughts file: parse failures, strict-JSON answers, accuracy vs gold, confusion, tokens."""
    recs = list(records)
    gold = [r for r in recs if r.get("label") in (0, 1)]
    conf = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "unparsed": 0}
    for r in gold:
        if not r.get("parse_ok"):
            conf["unparsed"] += 1
        elif r["predicted_label"] == 1:
            conf["tp" if r["label"] == 1 else "fp"] += 1
        else:
            conf["fn" if r["label"] == 1 else "tn"] += 1
    rules: dict[str, int] = {}
    for r in recs:
        rules[r.get("parse_rule", "?")] = rules.get(r.get("parse_rule", "?"), 0) + 1
    return {
        "records": len(recs),
        "parse_failures": sum(1 for r in recs if not r.get("parse_ok")),
        "parse_rules": dict(sorted(rules.items())),
        "with_gold": len(gold),
        "correct": sum(1 for r in gold if r.get("correct")),
        "confusion": conf,
        "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in recs),
        "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in recs),
    }


def run(cfg: Any) -> dict[str, Any]:
    """Run the thoughts stage; return the summary (also printed and written next to the output)."""
    check_config(cfg)  # unknown keys and numeric ranges, before any data is read or request sent
    result = load_pairs(cfg.pairs)
    pairs = result.pairs  # pairs.limit caps them
    phash = prompt_hash(cfg.teacher_prompt)
    tid = teacher_id(cfg.teacher)
    running = {"n": 0, "correct": 0, "unparsed": 0}

    def postfix(rec: dict[str, Any]) -> dict[str, Any]:
        running["n"] += 1
        running["correct"] += bool(rec["correct"])
        running["unparsed"] += not rec["parse_ok"]
        return {"acc": f"{running['correct'] / running['n']:.2f}", "unparsed": running["unparsed"]}

    counts = run_stage(
        cfg,
        "thoughts",
        tid,
        phash,
        pairs,
        lambda p: p.id,
        lambda p: teacher_messages(p.premise, p.hypothesis, cfg.teacher_prompt),
        lambda p, reply: thought_record(p, reply, tid, cfg.teacher_prompt.name, phash),
        postfix,
    )
    summary = {
        "stage": "thoughts",
        "output": cfg.output,
        "teacher": tid,
        "prompt_hash": phash,
        "input_rows": result.rows_read,
        "input_skipped": len(result.skipped),
        "input_skip_counts": result.skip_counts(),
        **run_and_file(counts, thoughts_file_stats(read_records(cfg.output)), cfg.teacher),
    }
    write_summary(cfg.output, summary)
    print_thoughts_summary(summary)
    return summary


def print_thoughts_summary(s: dict[str, Any]) -> None:
    f = s["file"]
    c = f["confusion"]
    print_stage_summary(
        f"thoughts: {s['output']} ({s['teacher']}, prompt {s['prompt_hash']})",
        s,
        [("input pairs", f"{s['run']['input']} (rows skipped as bad input: {s['input_skipped']})")],
        [
            ("strict JSON answers", str(f["parse_rules"].get("json", 0))),
            ("teacher accuracy vs gold", pct(f["correct"], f["with_gold"])),
            ("confusion tp/fp/tn/fn/unparsed", f"{c['tp']}/{c['fp']}/{c['tn']}/{c['fn']}/{c['unparsed']}"),
        ],
    )


@hydra.main(config_path="../../conf", config_name="thoughts", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_if_failed(run, cfg)


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    preflight("thoughts")
    main()
