"""Stage 1, teacher thoughts: ``python -m nli_cot.thoughts [pairs=...] [teacher=...] [key=value ...]``.

For every NLI pair a teacher writes ``{"thought_process", "predicted_label"}``; one record per pair is appended
to ``output`` as soon as its answer arrives.

Features
- Pairs come from ``nli_cot.pairs`` (any format, strict or lenient); the prompt from ``teacher_prompt``
  (``nli_cot.teacher_prompts``); the teacher from ``teacher`` (HTTP endpoint or local model).
- Resume: ids already in ``output`` are skipped before any request, so a re-run after a crash or SIGKILL
  never pays twice for a finished id; records are written through ``nli_cot.records.RecordWriter``
  (line-complete, fsynced, no duplicates, one writer per file).
- A resumed run refuses to mix records from another teacher or prompt (``allow_mixed=true`` overrides).
- Records keep the raw answer, the parse (``nli_cot.parsing.parse_output``: label, thought, rule), parse
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

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from nli_cot.checks import ConfigCheckError, check_config
from nli_cot.pairs import PairsConfig, PairsError, load_pairs
from nli_cot.parsing import parse_output
from nli_cot.records import RecordFileError, RecordWriter, read_records
from nli_cot.teacher_prompts import (
    ReflectPromptConfig,
    TeacherPromptConfig,
    prompt_hash,
    teacher_messages,
)
from nli_cot.teachers import Messages, Reply, TeacherConfig, TeacherFatalError, make_teacher, provenance

EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3


class StageError(RuntimeError):
    """A user-facing problem with a stage's inputs or outputs (one line, no traceback)."""


@dataclass
class ThoughtsConfig:
    pairs: PairsConfig = MISSING
    teacher: TeacherConfig = MISSING
    teacher_prompt: TeacherPromptConfig = MISSING
    data_root: str = "../shared/data"
    output: str = MISSING
    progress: bool = True
    allow_mixed: bool = False  # resume onto records made by another teacher or prompt


def register_configs() -> None:
    """Schemas of this stage and the groups it shares with reflect (idempotent)."""
    from nli_cot.config import register_configs as register_training_configs

    register_training_configs()  # the `model` and `prompt` groups that teachers and sft reuse
    cs = ConfigStore.instance()
    cs.store(name="thoughts_schema", node=ThoughtsConfig)
    cs.store(group="pairs", name="pairs_schema", node=PairsConfig)
    cs.store(group="teacher", name="teacher_schema", node=TeacherConfig)
    cs.store(group="teacher_prompt", name="teacher_prompt_schema", node=TeacherPromptConfig)
    cs.store(group="reflect_prompt", name="reflect_prompt_schema", node=ReflectPromptConfig)


# --------------------------------------------------------------------------------------------- shared runner


@dataclass
class RunCounts:
    """What one run of a teacher stage did (the file totals are computed from the records)."""

    input: int = 0
    already_done: int = 0
    done: int = 0
    failed: int = 0
    budget_skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: list[str] = field(default_factory=list)


def check_not_mixed(existing: list[dict[str, Any]], teacher: str, phash: str, path: str, allow: bool) -> None:
    """Refuse to append records of one teacher/prompt to a file made by another, unless allowed."""
    if allow:
        return

    def model_of(tid: Any) -> str:  # the endpoint's host:port may change between runs; the model may not
        return str(tid).split("@", 1)[0]

    for rec in existing:
        if model_of(rec.get("teacher")) != model_of(teacher) or rec.get("prompt_hash") != phash:
            raise StageError(
                f"{path}: record {rec.get('id')!r} was made by teacher {rec.get('teacher')!r} with prompt "
                f"{rec.get('prompt_hash')!r}, this run uses {teacher!r} with {phash!r}; write to a new output "
                "or pass allow_mixed=true"
            )


def run_teacher(
    jobs: list[tuple[str, Messages]],
    teacher: Any,
    writer: RecordWriter,
    make_record: Callable[[str, Reply], dict[str, Any]],
    counts: RunCounts,
    desc: str,
    progress: bool,
    postfix: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Send every job to the teacher and append one record per successful reply as it arrives."""
    from tqdm import tqdm

    bar = tqdm(
        total=len(jobs), desc=desc, unit="pair", disable=not progress, dynamic_ncols=True, file=sys.stderr
    )
    try:
        for key, reply in teacher.stream(jobs):
            bar.update(1)
            if reply.status == "budget":
                counts.budget_skipped += 1
                continue
            if reply.status != "ok":
                counts.failed += 1
                if len(counts.failures) < 20:
                    counts.failures.append(f"{key}: {reply.error}")
                continue
            record = make_record(key, reply)
            writer.append(record)
            counts.done += 1
            counts.prompt_tokens += reply.prompt_tokens
            counts.completion_tokens += reply.completion_tokens
            if postfix:
                bar.set_postfix(postfix(record), refresh=False)
    finally:
        bar.close()


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def print_table(title: str, rows: list[tuple[str, str]], file: Any = None) -> None:
    """A two-column summary table on stdout."""
    width = max(len(k) for k, _ in rows)
    out = file or sys.stdout
    print(title, file=out)
    print("-" * (width + 2 + max(len(v) for _, v in rows)), file=out)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}", file=out)


def write_summary(output: str, summary: dict[str, Any]) -> Path:
    """Write ``<output stem>.summary.json`` atomically (a partial summary is never left behind)."""
    out = Path(output)
    path = out.with_name(out.stem + ".summary.json")
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def pct(a: int, b: int) -> str:
    return f"{a}/{b} = {100 * a / b:.1f}%" if b else "n/a"


def cost(prompt_tokens: int, completion_tokens: int, teacher_cfg: Any) -> float:
    return (
        prompt_tokens * teacher_cfg.price_prompt_per_m
        + completion_tokens * teacher_cfg.price_completion_per_m
    ) / 1e6


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
    teacher_cfg = cfg.teacher
    phash = prompt_hash(cfg.teacher_prompt)
    writer = RecordWriter(cfg.output, lock=True)
    try:
        from nli_cot.teachers import teacher_id

        tid = teacher_id(teacher_cfg)
        check_not_mixed(read_records(cfg.output), tid, phash, cfg.output, cfg.allow_mixed)
        counts = RunCounts(input=len(pairs))
        todo = [p for p in pairs if p.id not in writer.done_ids]
        counts.already_done = len(pairs) - len(todo)
        by_id = {p.id: p for p in todo}
        if todo:
            teacher = make_teacher(teacher_cfg)
            jobs = [(p.id, teacher_messages(p.premise, p.hypothesis, cfg.teacher_prompt)) for p in todo]
            running = {"n": 0, "correct": 0, "unparsed": 0}

            def postfix(rec: dict[str, Any]) -> dict[str, Any]:
                running["n"] += 1
                running["correct"] += bool(rec["correct"])
                running["unparsed"] += not rec["parse_ok"]
                return {"acc": f"{running['correct'] / running['n']:.2f}", "unparsed": running["unparsed"]}

            try:
                run_teacher(
                    jobs,
                    teacher,
                    writer,
                    lambda key, reply: thought_record(by_id[key], reply, tid, cfg.teacher_prompt.name, phash),
                    counts,
                    "thoughts",
                    cfg.progress,
                    postfix,
                )
            finally:
                teacher.close()
    finally:
        writer.close()
    file_stats = thoughts_file_stats(read_records(cfg.output))
    summary = {
        "stage": "thoughts",
        "output": cfg.output,
        "teacher": tid,
        "prompt_hash": phash,
        "input_rows": result.rows_read,
        "input_skipped": len(result.skipped),
        "input_skip_counts": result.skip_counts(),
        "run": {k: v for k, v in counts.__dict__.items()},
        "file": file_stats,
        "cost_usd_run": cost(counts.prompt_tokens, counts.completion_tokens, teacher_cfg),
        "cost_usd_file": cost(file_stats["prompt_tokens"], file_stats["completion_tokens"], teacher_cfg),
    }
    write_summary(cfg.output, summary)
    print_thoughts_summary(summary)
    return summary


def print_thoughts_summary(s: dict[str, Any]) -> None:
    run_c, f = s["run"], s["file"]
    c = f["confusion"]
    rows = [
        ("input pairs", f"{run_c['input']} (rows skipped as bad input: {s['input_skipped']})"),
        ("skipped (already done)", str(run_c["already_done"])),
        ("done this run", str(run_c["done"])),
        ("failed this run", str(run_c["failed"])),
        ("budget-skipped", str(run_c["budget_skipped"])),
        ("records in file", str(f["records"])),
        ("parse failures", str(f["parse_failures"])),
        ("strict JSON answers", str(f["parse_rules"].get("json", 0))),
        ("teacher accuracy vs gold", pct(f["correct"], f["with_gold"])),
        ("confusion tp/fp/tn/fn/unparsed", f"{c['tp']}/{c['fp']}/{c['tn']}/{c['fn']}/{c['unparsed']}"),
        (
            "tokens this run (prompt/compl.)",
            f"{_fmt_int(run_c['prompt_tokens'])} / {_fmt_int(run_c['completion_tokens'])}",
        ),
        (
            "tokens in file (prompt/compl.)",
            f"{_fmt_int(f['prompt_tokens'])} / {_fmt_int(f['completion_tokens'])}",
        ),
        ("cost this run / file (USD)", f"{s['cost_usd_run']:.4f} / {s['cost_usd_file']:.4f}"),
    ]
    print_table(f"thoughts: {s['output']} ({s['teacher']}, prompt {s['prompt_hash']})", rows)
    for line in run_c["failures"][:5]:
        print(f"  failed: {line}")


def exit_code(summary: dict[str, Any]) -> int:
    return EXIT_INCOMPLETE if summary["run"]["failed"] else 0


def guarded(fn: Callable[[Any], dict[str, Any]], cfg: Any) -> int:
    """Run a stage; turn the errors a user can fix into one line on stderr and an exit code."""
    try:
        return exit_code(fn(cfg))
    except (PairsError, RecordFileError, StageError, TeacherFatalError, ConfigCheckError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished records are saved; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        # A local teacher's model setup error; modeling (and torch) is only imported by a local teacher.
        modeling = sys.modules.get("nli_cot.modeling")
        if modeling is None or not isinstance(err, modeling.ModelSetupError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------------- source-project import


def source_lines(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON line of a source-project file; blank lines skipped."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise StageError(f"{path}: cannot read ({err.strerror})") from None
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise StageError(f"{path}: line {line_no}: not valid utf-8 (byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise StageError(f"{path}: line {line_no}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise StageError(f"{path}: line {line_no}: not a JSON object")
        for name in required:
            if obj.get(name) is None or obj.get(name) == "":
                raise StageError(f"{path}: line {line_no}: field '{name}': missing or empty")
        yield line_no, obj


def import_source_thoughts(path: str, id_prefix: str = "original-sample-") -> list[dict[str, Any]]:
    """The source project's thoughts JSON lines (``id, premise, hypothesis, thought_process, predicted_label,
    true_label, correct, chat_history, reprompt_counts``) as our thoughts records.

    ``correct`` is recomputed from the labels (and must agree with the file's own flag); the raw answer is
    the last assistant turn of ``chat_history`` when there is one.
    """
    out = []
    for line_no, src in source_lines(path, ("id", "premise", "hypothesis", "true_label")):
        gold, pred = src["true_label"], src.get("predicted_label")
        if gold not in (0, 1):
            raise StageError(f"{path}: line {line_no}: field 'true_label': must be 0 or 1, got {gold!r}")
        thought = (src.get("thought_process") or "").strip() or None
        ok = pred in (0, 1) and thought is not None
        correct = ok and pred == gold
        if "correct" in src and bool(src["correct"]) != correct:
            raise StageError(
                f"{path}: line {line_no}: field 'correct': {src['correct']!r} but labels say {correct}"
            )
        history = src.get("chat_history") or []
        raw = next((m.get("content") for m in reversed(history) if m.get("role") == "assistant"), None)
        system = next((m.get("content") for m in history if m.get("role") == "system"), None)
        out.append(
            {
                "id": f"{id_prefix}{src['id']}",
                "premise": src["premise"].strip(),
                "hypothesis": src["hypothesis"].strip(),
                "label": gold,
                "predicted_label": pred if pred in (0, 1) else None,
                "thought_process": thought,
                "correct": correct,
                "parse_ok": ok,
                "parse_rule": "imported",
                "raw": raw,
                "finish_reason": None,
                "teacher": "source_project",
                "prompt": "source_project",
                "prompt_hash": prompt_hash({"system": system}) if system else None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "attempts": 1 + int(src.get("reprompt_counts") or 0),
            }
        )
    return out


register_configs()


@hydra.main(config_path="../conf", config_name="thoughts", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = guarded(run, cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    from nli_cot.cli import preflight

    preflight("thoughts")
    main()
