"""Stage 2, reflections: ``python -m nli_cot.reflect [data_name=...] [teacher=...] [key=value ...]``.

For every thoughts record whose label was wrong or unreadable, the teacher is shown the premise, hypothesis,
its first thought, its first label and the true label, and writes ``error_analysis``,
``improved_thought_process`` and ``predicted_label`` (which must equal the true label).

Features
- Input: a thoughts file of ``nli_cot.thoughts`` (``select``: ``wrong``, ``unparsed`` or
  ``wrong_or_unparsed``; records without a gold label are never selected).
- Same reliability as the thoughts stage (shared runner): append-as-you-go through ``RecordWriter``, resume
  by id without repeating a paid request, refusal to mix teachers/prompts, progress bar, summary table and
  ``<output>.summary.json``, exit codes 0/2/3.
- Parsing goes through the one parser, ``nli_cot.core.parsing.parse_output``: the reflection's keys are aliased
  to ``thought_process`` for it, once for ``improved_thought_process`` and once for ``error_analysis``.
- ``agrees`` records whether the reflected label equals the gold label; the summary counts the ones that
  still disagree (the SFT stage drops those by default).
- ``import_source_reflections``: the source project's ``*_reflections.json`` lines -> our record format.

Limits
- One reflection per wrong record; a reflection that still disagrees is kept as is (not re-asked).
- The first attempt's raw answer is shown (cut to ``reflect_prompt.max_raw_chars``) only when no thought
  could be parsed from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import MISSING, DictConfig

from nli_cot.core.checks import check_config
from nli_cot.core.config import register_schema
from nli_cot.core.parsing import OBJECT_RULES, parse_output
from nli_cot.core.records import read_records
from nli_cot.teacher.stage_runner import (
    StageError,
    exit_if_failed,
    pct,
    print_stage_summary,
    run_and_file,
    run_stage,
    write_summary,
)
from nli_cot.teacher.teacher_prompts import ReflectPromptConfig, prompt_hash, reflection_messages
from nli_cot.teacher.teachers import Reply, TeacherConfig, provenance, teacher_id

SELECT_MODES = ("wrong", "unparsed", "wrong_or_unparsed")


@dataclass
class ReflectConfig:
    teacher: TeacherConfig = field(
        default=MISSING,
        metadata={"help": "The teacher that writes the reflections (conf/teacher/)."},
    )
    reflect_prompt: ReflectPromptConfig = field(
        default=MISSING,
        metadata={"help": "The reflection prompt (conf/reflect_prompt/)."},
    )
    data_root: str = field(default="../shared/data", metadata={"help": "Folder of the shared data sets."})
    data_name: str = field(
        default="original_sample",
        metadata={"help": "The pairs name the thoughts stage wrote under (its pairs.name)."},
    )
    thoughts: str = field(default=MISSING, metadata={"help": "input: a thoughts stage output."})
    output: str = field(
        default=MISSING,
        metadata={"help": "Reflections JSONL (resumed: finished ids are never requested again)."},
    )
    select: str = field(
        default="wrong_or_unparsed",
        metadata={"help": "Which thoughts get a reflection: wrong | unparsed | wrong_or_unparsed."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    allow_mixed: bool = field(
        default=False,
        metadata={"help": "Resume onto records made by another teacher or prompt."},
    )


@dataclass(frozen=True)
class ParsedReflection:
    label: int | None
    improved: str | None
    analysis: str | None
    rule: str
    ok: bool


def _alias(text: str, key: str) -> str | None:
    """``text`` with the quoted key ``key`` renamed to ``thought_process``; None when the key is absent."""
    pattern = re.compile(r"""(["'])""" + re.escape(key) + r"""\1(\s*:)""")
    if not pattern.search(text):
        return None
    return pattern.sub(r"\1thought_process\1\2", text)


def parse_reflection(text: str) -> ParsedReflection:
    """Label, improved thought and error analysis of a reflection answer, read by ``parse_output``."""
    improved_text = _alias(text, "improved_thought_process")
    main = parse_output(improved_text if improved_text is not None else text)
    # Without the key, a plain {"thought_process", "predicted_label"} answer (conf/reflect_prompt/rationalize.yaml:
    # the teacher's own format) is the improved thought; prose with a label but no thought still is not.
    improved = main.thought if improved_text is not None or main.rule in OBJECT_RULES else None
    analysis_text = _alias(text, "error_analysis")
    analysis = parse_output(analysis_text).thought if analysis_text is not None else None
    ok = main.ok and bool(improved and improved.strip())
    rule = main.rule if improved else "unparseable"
    return ParsedReflection(main.label, improved, analysis, rule, ok)


def select_records(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Thoughts records that need a reflection."""
    if mode not in SELECT_MODES:
        raise StageError(f"select: must be one of {', '.join(SELECT_MODES)}, got {mode!r}")
    chosen = []
    for r in records:
        if r.get("label") not in (0, 1):
            continue
        unparsed = not r.get("parse_ok")
        wrong = bool(r.get("parse_ok")) and r.get("predicted_label") != r["label"]
        if (
            (mode == "wrong" and wrong)
            or (mode == "unparsed" and unparsed)
            or (mode == "wrong_or_unparsed" and (wrong or unparsed))
        ):
            chosen.append(r)
    return chosen


def reflection_record(
    src: dict[str, Any], reply: Reply, teacher: str, prompt_name: str, phash: str
) -> dict[str, Any]:
    parsed = parse_reflection(reply.text or "")
    return {
        "id": src["id"],
        "premise": src["premise"],
        "hypothesis": src["hypothesis"],
        "label": src["label"],
        "initial_thought": src.get("thought_process"),
        "initial_label": src.get("predicted_label"),
        "initial_parse_rule": src.get("parse_rule"),
        "error_analysis": parsed.analysis,
        "improved_thought_process": parsed.improved,
        "reflected_label": parsed.label,
        "agrees": parsed.ok and parsed.label == src["label"],
        "parse_ok": parsed.ok,
        "parse_rule": parsed.rule,
        **provenance(reply, teacher, prompt_name, phash),
    }


def reflections_file_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "records": len(records),
        "parse_failures": sum(1 for r in records if not r.get("parse_ok")),
        "agree": sum(1 for r in records if r.get("agrees")),
        "disagree": sum(1 for r in records if r.get("parse_ok") and not r.get("agrees")),
        "disagree_ids": [r["id"] for r in records if r.get("parse_ok") and not r.get("agrees")][:20],
        "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in records),
        "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in records),
    }


def run(cfg: Any) -> dict[str, Any]:
    """Run the reflection stage; return the summary (also printed and written next to the output)."""
    check_config(cfg)  # unknown keys and numeric ranges, before any data is read or request sent
    if not Path(cfg.thoughts).exists():
        raise StageError(f"{cfg.thoughts}: no such thoughts file (run `python -m nli_cot.thoughts` first)")
    thoughts = read_records(cfg.thoughts)
    if not thoughts:
        raise StageError(f"{cfg.thoughts}: no records (the thoughts file is empty; run `python -m nli_cot.thoughts`)")
    for i, r in enumerate(thoughts, start=1):
        for name in ("id", "premise", "hypothesis"):
            if not r.get(name):
                raise StageError(f"{cfg.thoughts}: record {i}: field '{name}': missing or empty")
    selected = select_records(thoughts, cfg.select)
    phash = prompt_hash(cfg.reflect_prompt)
    tid = teacher_id(cfg.teacher)
    p = cfg.reflect_prompt
    running = {"n": 0, "agree": 0}

    def postfix(rec: dict[str, Any]) -> dict[str, Any]:
        running["n"] += 1
        running["agree"] += bool(rec["agrees"])
        return {"agree": f"{running['agree'] / running['n']:.2f}"}

    counts = run_stage(
        cfg,
        "reflect",
        tid,
        phash,
        selected,
        lambda r: r["id"],
        lambda r: reflection_messages(
            r["premise"],
            r["hypothesis"],
            r.get("thought_process"),
            r.get("predicted_label"),
            r["label"],
            p,
            raw=r.get("raw"),
        ),
        lambda r, reply: reflection_record(r, reply, tid, p.name, phash),
        postfix,
    )
    summary = {
        "stage": "reflect",
        "thoughts": cfg.thoughts,
        "output": cfg.output,
        "teacher": tid,
        "prompt_hash": phash,
        "thoughts_records": len(thoughts),
        "selected": len(selected),
        **run_and_file(counts, reflections_file_stats(read_records(cfg.output)), cfg.teacher),
    }
    write_summary(cfg.output, summary)
    print_reflect_summary(summary)
    return summary


def print_reflect_summary(s: dict[str, Any]) -> None:
    f = s["file"]
    print_stage_summary(
        f"reflect: {s['output']} ({s['teacher']}, prompt {s['prompt_hash']})",
        s,
        [("thoughts records", str(s["thoughts_records"])), ("selected (wrong/unparsed)", str(s["selected"]))],
        [
            ("reflected label = gold", pct(f["agree"], f["records"])),
            ("still disagree with gold", str(f["disagree"])),
        ],
    )


register_schema(ReflectConfig, name="reflect_schema")


@hydra.main(config_path="../../conf", config_name="reflect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_if_failed(run, cfg)


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    preflight("reflect")
    main()
