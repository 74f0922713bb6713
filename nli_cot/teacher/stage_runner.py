"""What the teacher stages (``nli_cot.thoughts``, ``nli_cot.reflect``) share, and what ``nli_cot.sft`` reads of them.

One place for: the user-facing ``StageError``, the config groups both teacher stages compose (``pairs``, ``teacher``,
``teacher_prompt``, ``reflect_prompt``), the runner that streams a teacher's replies into a record file, the
summary table and JSON, the exit codes, and the reader of the source project's JSON-lines files. A stage module
imports from here, never from another stage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nli_cot.core.checks import ConfigCheckError
from nli_cot.core.pairs import PairsError
from nli_cot.core.records import RecordFileError, RecordWriter, atomic_write_text, read_records
from nli_cot.teacher.teacher_prompts import prompt_hash
from nli_cot.teacher.teachers import Messages, Reply, TeacherFatalError, make_teacher

T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3


class StageError(RuntimeError):
    """A user-facing problem with a stage's inputs or outputs (one line, no traceback)."""

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


def run_stage(
    cfg: Any,
    desc: str,
    tid: str,
    phash: str,
    items: list[T],
    item_id: Callable[[T], str],
    messages: Callable[[T], Messages],
    make_record: Callable[[T, Reply], dict[str, Any]],
    postfix: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> RunCounts:
    """A teacher stage's run: every item whose id is not yet in ``cfg.output`` goes to ``cfg.teacher``, one record
    per reply is appended as it arrives; refuses to resume onto another teacher's or prompt's records unless
    ``cfg.allow_mixed``."""
    output = cfg.output
    writer = RecordWriter(output, lock=True)
    try:
        check_not_mixed(read_records(output), tid, phash, output, cfg.allow_mixed)
        counts = RunCounts(input=len(items))
        todo = [it for it in items if item_id(it) not in writer.done_ids]
        counts.already_done = len(items) - len(todo)
        if todo:
            by_id = {item_id(it): it for it in todo}
            teacher = make_teacher(cfg.teacher)
            try:
                run_teacher(
                    [(item_id(it), messages(it)) for it in todo],
                    teacher,
                    writer,
                    lambda key, reply: make_record(by_id[key], reply),
                    counts,
                    desc,
                    cfg.progress,
                    postfix,
                )
            finally:
                teacher.close()
    finally:
        writer.close()
    return counts


def run_and_file(counts: RunCounts, file_stats: dict[str, Any], teacher_cfg: Any) -> dict[str, Any]:
    """The summary keys every teacher stage has: this run's counts, the file's totals, and what both cost."""
    return {
        "run": dict(counts.__dict__),
        "file": file_stats,
        "cost_usd_run": cost(counts.prompt_tokens, counts.completion_tokens, teacher_cfg),
        "cost_usd_file": cost(file_stats["prompt_tokens"], file_stats["completion_tokens"], teacher_cfg),
    }


def print_stage_summary(
    title: str, s: dict[str, Any], head: list[tuple[str, str]], middle: list[tuple[str, str]]
) -> None:
    """A teacher stage's summary table: ``head`` rows, the run's and file's counts, ``middle`` rows, tokens and
    cost; then the first failures."""
    run_c, f = s["run"], s["file"]
    rows = [
        *head,
        ("skipped (already done)", str(run_c["already_done"])),
        ("done this run", str(run_c["done"])),
        ("failed this run", str(run_c["failed"])),
        ("budget-skipped", str(run_c["budget_skipped"])),
        ("records in file", str(f["records"])),
        ("parse failures", str(f["parse_failures"])),
        *middle,
        (
            "tokens this run (prompt/compl.)",
            f"{fmt_int(run_c['prompt_tokens'])} / {fmt_int(run_c['completion_tokens'])}",
        ),
        ("tokens in file (prompt/compl.)", f"{fmt_int(f['prompt_tokens'])} / {fmt_int(f['completion_tokens'])}"),
        ("cost this run / file (USD)", f"{s['cost_usd_run']:.4f} / {s['cost_usd_file']:.4f}"),
    ]
    print_table(title, rows)
    for line in run_c["failures"][:5]:
        print(f"  failed: {line}")


def fmt_int(n: int) -> str:
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
    atomic_write_text(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return path


def pct(a: int, b: int) -> str:
    return f"{a}/{b} = {100 * a / b:.1f}%" if b else "n/a"


def cost(prompt_tokens: int, completion_tokens: int, teacher_cfg: Any) -> float:
    return (
        prompt_tokens * teacher_cfg.price_prompt_per_m
        + completion_tokens * teacher_cfg.price_completion_per_m
    ) / 1e6


def exit_code(summary: dict[str, Any]) -> int:
    return EXIT_INCOMPLETE if summary["run"]["failed"] else 0


def exit_if_failed(fn: Callable[[Any], dict[str, Any]], cfg: Any) -> None:
    """A teacher stage's ``main``: run it ``guarded`` and exit with its code when that is not 0."""
    code = guarded(fn, cfg)
    if code:
        sys.exit(code)


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
        modeling = sys.modules.get("nli_cot.models.modeling")
        if modeling is None or not isinstance(err, modeling.ModelSetupError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


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


def import_source_reflections(path: str, id_prefix: str = "original-sample-") -> list[dict[str, Any]]:
    """The source project's reflections JSON lines (``id, premise, hypothesis, predicted_label, true_label,
    thought_process, error_analysis, improved_thought_process``) as our reflection records.

    In those files ``predicted_label`` is the reflected label and ``thought_process`` the first attempt;
    the first attempt's label is not stored there (it is in the thoughts file), so ``initial_label`` is None.
    """
    out = []
    for line_no, src in source_lines(
        path, ("id", "premise", "hypothesis", "true_label", "predicted_label", "improved_thought_process")
    ):
        gold, reflected = src["true_label"], src["predicted_label"]
        if gold not in (0, 1):
            raise StageError(f"{path}: line {line_no}: field 'true_label': must be 0 or 1, got {gold!r}")
        improved = (src.get("improved_thought_process") or "").strip() or None
        ok = reflected in (0, 1) and improved is not None
        out.append(
            {
                "id": f"{id_prefix}{src['id']}",
                "premise": src["premise"].strip(),
                "hypothesis": src["hypothesis"].strip(),
                "label": gold,
                "initial_thought": src.get("thought_process"),
                "initial_label": None,
                "initial_parse_rule": None,
                "error_analysis": src.get("error_analysis"),
                "improved_thought_process": improved,
                "reflected_label": reflected if reflected in (0, 1) else None,
                "agrees": ok and reflected == gold,
                "parse_ok": ok,
                "parse_rule": "imported",
                "raw": None,
                "finish_reason": None,
                "teacher": "source_project",
                "prompt": "source_project",
                "prompt_hash": None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
        )
    return out
