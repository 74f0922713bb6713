"""The study's config schema: ``conf/study.yaml`` and its presets (``conf/study/*.yaml``), closed against typos.

The YAML says why each value is what it is; a field here says what the key means. The scheduling numbers are
typed ``Any`` on purpose: ``study.check_scheduling`` validates them with one line per mistake (a number >= 0, an
integer >= 1, ...), which says more than a type error. The condition catalogue's cross-references (a condition's
set and family, a family's anchor, a set's teacher) are checked by ``check_catalogue``, one line per mistake
naming its key, before the graph is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from nli_cot.core.checks import nearest, unknown_key_message
from nli_cot.core.config import register_schema

# The pair groups prep can write a label-only set from (study_data.prepare's ``label_sets``).
PAIR_GROUPS = ("train", "pool", "teacher")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class StudyEngine:
    address: str | None = field(default=None, metadata=_help(
        "null: a Dask cluster on this machine; tcp://host:8786: an existing scheduler whose workers declare "
        "GPU/CPU resources and share the repo, python and out_dir paths."))
    gpus: Any = field(default=None, metadata=_help(
        "Local only: GPUs used; null: torch.cuda.device_count(); 0: none (the CPU runs every job)."))
    slots_per_gpu: Any = field(default=1, metadata=_help("Local only: GPU jobs per card at once."))
    cpu_slots: Any = field(default=2, metadata=_help("Local only: CPU-only jobs at once beside the GPU jobs."))
    connect_timeout_s: Any = field(default=60, metadata=_help(
        "engine.address: how long to wait for the scheduler and its first worker."))
    dashboard_address: str | None = field(default=None, metadata=_help(
        "Dask dashboard address (e.g. ':8787'); null: no dashboard."))


@dataclass
class StudyData:
    train_source: str = field(default=MISSING, metadata=_help(
        "The train pairs with human explanations (a JSON-lines file under data_root)."))
    test_sets: dict[str, str | None] = field(default_factory=dict, metadata=_help(
        "Test set name -> its JSON-lines file under data_root (null: not used); every train and pool row is "
        "leak-checked against all of them."))
    sample_salt: int = field(default=0, metadata=_help("Salt of the id hash that picks the train and test rows."))
    n_train: int | None = field(default=None, metadata=_help("Train pairs (of train_source); null: all."))
    n_test: dict[str, int | None] = field(default_factory=dict, metadata=_help(
        "Test set (of test_sets) -> pairs decoded by generation conditions; null or absent: every row."))
    sft_dev_fraction: float = field(default=0.05, metadata=_help("Dev share of the train pairs, by id hash."))
    pool_files: list[str] = field(default_factory=list, metadata=_help(
        "Pairs without explanations: the teacher's pairs and the label-only pool sets."))
    n_teacher: int | None = field(default=None, metadata=_help(
        "Pool pairs the teacher writes reasoning for; null: all."))
    max_tokens: int = field(default=512, metadata=_help(
        "SFT token budget (prompt + completion); train.max_seq_length interpolates it."))


@dataclass
class StudyGenEval:
    enabled: bool = field(default=False, metadata=_help("Decoded dev metrics during training (trainer.gen_eval)."))
    max_examples: int = field(default=256, metadata=_help("Dev pairs decoded at each evaluation."))
    batch_size: int = field(default=256, metadata=_help("Rows decoded together."))
    max_new_tokens: int = field(default=192, metadata=_help("Decoding budget per dev answer."))


@dataclass
class StudyTrain:
    optimizer: str = field(default="adamw", metadata=_help("The optimizer group of every training run."))
    lr: float = field(default=5.0e-4, metadata=_help("Learning rate where a family has no grid."))
    lr_grid: list[float] = field(default_factory=list, metadata=_help(
        "The reasoning family's grid (catalogue.families.reasoning.lr_grid): non-empty, its anchor's seed 0 trains at "
        "each lr, the best dev score wins."))
    warmup_ratio: float = field(default=0.05, metadata=_help("Warm-up share of the optimiser steps."))
    batch_size: int = field(default=8, metadata=_help("Examples per micro-batch."))
    grad_accum: int = field(default=1, metadata=_help("Micro-batches per optimiser step."))
    max_epochs: int = field(default=1, metadata=_help("Passes over each condition's SFT set."))
    max_steps: int = field(default=-1, metadata=_help("> 0: a cap on the optimiser steps of every run."))
    label_lr_grid: list[float] = field(default_factory=list, metadata=_help(
        "The label-only family's grid (catalogue.families.label.lr_grid)."))
    lr_by_family: dict[str, float | None] = field(default_factory=dict, metadata=_help(
        "Family (a key of catalogue.families) -> its lr when the family has no grid in this invocation."))
    epochs_by_condition: dict[str, int] = field(default_factory=dict, metadata=_help(
        "Condition -> passes over its own set (overrides max_epochs and equal_steps)."))
    patience_by_condition: dict[str, int | None] = field(default_factory=dict, metadata=_help(
        "Condition -> its early-stopping patience (null: none)."))
    select_metric: str = field(default="eval/balanced_accuracy", metadata=_help(
        "What picks the checkpoint and the lr (with gen_eval on: decoded dev)."))
    select_mode: str = field(default="max", metadata=_help("min | max: which direction of select_metric is better."))
    gen_eval: StudyGenEval = field(default_factory=StudyGenEval, metadata=_help("Decoded dev evaluation."))
    equal_steps: bool = field(default=False, metadata=_help(
        "Every condition trains for the steps of max_epochs over the human SFT set."))
    eval_every_n_steps: int = field(default=25, metadata=_help("Steps between evaluations (and checkpoints)."))
    eval_batch_size: int = field(default=16, metadata=_help("Dev batch size."))
    early_stopping_patience: int | None = field(default=3, metadata=_help(
        "Evaluations without improvement before stopping; null: none."))
    early_stopping_min_steps: int = field(default=0, metadata=_help("No early stop before this step."))
    max_seq_length: int = field(default=MISSING, metadata=_help(
        "Training's token budget (dataset.max_seq_length): ${data.max_tokens}, so a kept SFT example fits."))
    precision: str = field(default="auto", metadata=_help("Lightning precision (auto: bf16-mixed on a bf16 GPU)."))
    log_every_n_steps: int = field(default=10, metadata=_help("Steps between logged metrics."))
    extra: list[str] = field(default_factory=list, metadata=_help("More nli_cot.train overrides, for every run."))


@dataclass
class StudyPredict:
    batch_size: int = field(default=16, metadata=_help("Pairs decoded together."))
    max_new_tokens: int = field(default=192, metadata=_help("Decoding budget per answer."))
    merge_adapter: bool = field(default=True, metadata=_help("Merge LoRA into the weights before decoding."))
    dtype: str = field(default="float32", metadata=_help("Weights' dtype at prediction."))
    label_probs: bool = field(default=True, metadata=_help("Record P(0)/P(1) at the label position (AUC)."))
    zero_shot_max_new_tokens: int | None = field(default=None, metadata=_help(
        "Zero-shot decoding budget; null: max_new_tokens."))
    zero_shot_batch_size: int | None = field(default=None, metadata=_help("Zero-shot batch size; null: batch_size."))
    full_test: list[str] = field(default_factory=list, metadata=_help(
        "Conditions scored on every test row; the rest on the sample (data.n_test)."))
    extra: list[str] = field(default_factory=list, metadata=_help("More nli_cot.predict overrides, for every run."))


@dataclass
class StudyBaseline:
    extra: list[str] = field(default_factory=list, metadata=_help("Extra nli_cot.baselines overrides of this kind."))


@dataclass
class StudyBaselines:
    bow: StudyBaseline = field(default_factory=StudyBaseline, metadata=_help("Bag of words."))
    hyp_bow: StudyBaseline = field(default_factory=StudyBaseline, metadata=_help("Hypothesis-only bag of words."))
    cross_encoder: StudyBaseline = field(default_factory=StudyBaseline, metadata=_help("MiniLM cross-encoder."))


@dataclass
class StudyTeacher:
    group: str = field(default="local_smollm2", metadata=_help("The teacher group (conf/teacher/)."))
    prompt: str = field(default="step3", metadata=_help("The teacher_prompt group of the thoughts stage."))
    reflect_prompt: str = field(default="default", metadata=_help("The reflect_prompt group of the reflect stage."))
    extra: list[str] = field(default_factory=list, metadata=_help("More overrides of this teacher's stages."))


@dataclass
class StudyTeachers:
    batch_size: int = field(default=16, metadata=_help("Prompts decoded together by a local teacher."))
    max_tokens: int = field(default=192, metadata=_help("The teacher's answer budget."))
    base: StudyTeacher = field(default_factory=StudyTeacher, metadata=_help(
        "The base model as teacher (conditions teacher_base_*)."))
    human: StudyTeacher = field(default_factory=StudyTeacher, metadata=_help(
        "The condition-3 model, seed 0, as teacher (conditions teacher_human_*)."))


@dataclass
class StudyCatalogueCondition:
    sft_set: str | None = field(default=None, metadata=_help(
        "The SFT set it trains on (a key of catalogue.sft_sets)."))
    family: str | None = field(default=None, metadata=_help(
        "Its lr family (a key of catalogue.families): it trains at the lr its family chose or fixed."))
    priority: int = field(default=4, metadata=_help(
        "Start order among one seed's jobs, lower first (the longest chains, the teachers', first)."))


@dataclass
class StudyCatalogueFamily:
    anchor: str | None = field(default=None, metadata=_help(
        "The family's condition whose first seed trains at each lr of lr_grid; its run at the chosen lr is its "
        "seed-0 model."))
    lr_grid: list[float] = field(default_factory=list, metadata=_help(
        "Non-empty: the lrs tried on the anchor's first seed, the best dev score wins; empty: "
        "train.lr_by_family.<family>, else train.lr."))
    label_only: bool = field(default=False, metadata=_help(
        "Its conditions train on the label alone (dataset.label_only); false: with written reasoning "
        "(train.equal_steps applies to them)."))
    select_job: str | None = field(default=None, metadata=_help(
        "The job that chooses the lr; null: select_lr_<family>."))
    choice_file: str | None = field(default=None, metadata=_help(
        "The choice, under out_dir; null: lr_choice_<family>.json."))


@dataclass
class StudyCatalogueSet:
    strategy: str | None = field(default=None, metadata=_help(
        "The sft_strategy the SFT stage writes it with (job sft:<set>): human (the train pairs' explanations) or a "
        "teacher recipe (combined | correct_only); null: a label-only set that prep writes from pairs."))
    teacher: str | None = field(default=None, metadata=_help(
        "With a recipe: the teacher (a key of catalogue.teacher_models) whose thoughts and reflections it reads."))
    pairs: list[str] = field(default_factory=list, metadata=_help(
        "strategy null: the pair groups (train, pool, teacher) prep writes as the set (with data.pool_files)."))


@dataclass
class StudyCatalogue:
    # Entries are plain mappings (each checked against its StudyCatalogue* dataclass by catalogue_of): a typed
    # dict of dataclasses would refuse a new entry given on the command line (+catalogue.conditions.x={...}).
    conditions: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Trained condition -> {sft_set, family, priority} (StudyCatalogueCondition); a new condition is one entry "
        "(zero-shot and baseline conditions are built in)."))
    families: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "lr family -> {anchor, lr_grid, label_only, select_job, choice_file} (StudyCatalogueFamily): one lr per "
        "family."))
    sft_sets: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "SFT set -> {strategy, teacher, pairs} (StudyCatalogueSet): who writes it (prep, or the SFT stage from the "
        "train pairs or from a teacher's reasoning)."))
    teacher_models: dict[str, str | None] = field(default_factory=dict, metadata=_help(
        "Teacher (teachers.<name>) -> the condition whose seed-0 model writes its reasoning, its chain waiting for "
        "that model; null: the base model."))
    step_budget_set: str = field(default="human", metadata=_help(
        "train.equal_steps: the SFT set whose max_epochs passes give every reasoning condition its optimiser steps."))


@dataclass
class StudyEvaluate:
    n_resamples: int = field(default=1000, metadata=_help("Bootstrap resamples of each evaluation's own CI."))
    plots: bool = field(default=True, metadata=_help("Evaluation plots."))
    length_edges: list[int] = field(default_factory=list, metadata=_help("Thought-length buckets in words."))


@dataclass
class StudyReport:
    n_resamples: int = field(default=1000, metadata=_help("Bootstrap resamples of the seed-mean CIs."))
    seed: int = field(default=0, metadata=_help("Seed of the report's resampling."))
    confidence: float = field(default=0.95, metadata=_help("Coverage of the CIs."))
    mcnemar_exact_below: int = field(default=25, metadata=_help("Exact McNemar below this many discordant pairs."))
    tost_margin: float = field(default=0.02, metadata=_help("Equivalence margin of the TOST tests."))
    alpha: float = field(default=0.05, metadata=_help("For the TOST and the Holm-adjusted decisions."))
    failed_run_dev_max: float = field(default=0.55, metadata=_help(
        "A run whose selected checkpoint scores <= this dev balanced accuracy is a failed run."))
    contrasts: list[list[str]] = field(default_factory=list, metadata=_help("Condition pairs tested pairwise."))


@dataclass
class StudyConfig:
    """`python -m nli_cot.study` (conf/study.yaml + a preset of conf/study/)."""

    study_name: str = field(default=MISSING, metadata=_help("The preset's name (study=<name>)."))
    stage: str = field(default="run", metadata=_help("run | report | plan | export_data | merge."))
    export_dir: str = field(default=".study-data", metadata=_help("stage=export_data: where the data copy goes."))
    merge_from: str | None = field(default=None, metadata=_help(
        "stage=merge: another machine's out_dir of this study, folded into out_dir."))
    out_dir: str = field(default=MISSING, metadata=_help(
        "Every stage's files, logs, job markers and the manifest."))
    data_root: str = field(default="../shared/data", metadata=_help("Folder of esnli/, mnli/, rte/."))
    results_dir: str = field(default="experiments/results", metadata=_help("Where the report is written."))
    report_name: str = field(default="small-scale-study", metadata=_help("File name stem of the report."))
    report_title: str = field(default="", metadata=_help("Title of the report."))
    report_note: str = field(default="", metadata=_help("One line under the title."))
    plots: bool = field(default=True, metadata=_help("PNGs of the SFT stage and the report."))
    force: bool = field(default=False, metadata=_help("Reuse out_dir although the method settings changed."))
    deadline_s: Any = field(default=None, metadata=_help("Wall seconds for this invocation; null: no limit."))
    report_reserve_s: Any = field(default=20, metadata=_help(
        "Running jobs are stopped this long before the deadline so the report fits."))
    start_margin_s: Any = field(default=30, metadata=_help("No job starts with less than this left before the stop."))
    kill_grace_s: Any = field(default=10, metadata=_help("SIGTERM -> SIGKILL delay when the deadline stops a job."))
    fail_jobs: list[str] = field(default_factory=list, metadata=_help("Drills/tests: these jobs exit 1."))
    python: str | None = field(default=None, metadata=_help("Interpreter of the stage subprocesses; null: this one."))
    engine: StudyEngine = field(default_factory=StudyEngine, metadata=_help("Where the jobs run (Dask)."))
    base_model: str = field(default="smollm2_135m", metadata=_help("The model group of every stage."))
    model_tokenizer: str | None = field(default=None, metadata=_help("The SFT stage's model.tokenizer."))
    prompt_name: str = field(default="chat", metadata=_help("The prompt group of every stage."))
    seeds: list[int] = field(default_factory=list, metadata=_help("Training seeds of every condition."))
    conditions: list[str] = field(default_factory=list, metadata=_help(
        "The conditions run: catalogue.conditions' trained ones and the built-in zero-shot and baseline ones."))
    catalogue: StudyCatalogue = field(default_factory=StudyCatalogue, metadata=_help(
        "What each trained condition is: its SFT set, lr family, and who writes the set."))
    data: StudyData = field(default_factory=StudyData, metadata=_help("The study's data."))
    train: StudyTrain = field(default_factory=StudyTrain, metadata=_help("Training of every condition."))
    predict: StudyPredict = field(default_factory=StudyPredict, metadata=_help("Prediction of every model."))
    baselines: StudyBaselines = field(default_factory=StudyBaselines, metadata=_help("The simple baselines."))
    teachers: StudyTeachers = field(default_factory=StudyTeachers, metadata=_help("The teacher conditions."))
    evaluate: StudyEvaluate = field(default_factory=StudyEvaluate, metadata=_help("Each evaluation."))
    report: StudyReport = field(default_factory=StudyReport, metadata=_help("The report's statistics."))


def _hint(value: Any, known: Sequence[str]) -> str:
    near = nearest(str(value), list(known)) if value is not None else None
    return f"did you mean {near}?" if near else f"known: {', '.join(known) or 'none'}"


def _unknown(key: str, what: str, value: Any, known: Sequence[str]) -> str:
    return f"{key}: unknown {what} {value!r} ({_hint(value, known)})"


ENTRY_SCHEMAS: dict[str, type] = {"conditions": StudyCatalogueCondition, "families": StudyCatalogueFamily,
                                 "sft_sets": StudyCatalogueSet}


def catalogue_of(cfg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``cfg["catalogue"]`` (resolved) with each entry's unset fields at their defaults, and one line per entry that
    is not a mapping or has a key its dataclass lacks."""
    cat = dict(cfg["catalogue"])
    errors = []
    for section, schema in ENTRY_SCHEMAS.items():
        fields = {f.name: f for f in dataclasses.fields(schema)}
        entries = {}
        for name, entry in (cat.get(section) or {}).items():
            if not isinstance(entry, dict):
                errors.append(f"catalogue.{section}.{name}: expected a mapping of {', '.join(fields)}, got {entry!r}")
                continue
            errors += [unknown_key_message(f"catalogue.{section}.{name}.{k}", list(fields)) for k in entry
                       if k not in fields]
            default = {k: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                       for k, f in fields.items()}
            entries[name] = default | {k: v for k, v in entry.items() if k in fields}
        cat[section] = entries
    return cat, errors


def check_catalogue(cfg: dict[str, Any], built_in: Sequence[str]) -> list[str]:
    """One line per mistake in the condition catalogue (``cfg["catalogue"]``, resolved) and in what names it (the
    condition list, ``train.lr_by_family``), each naming its key. ``built_in``: the conditions the graph knows
    without the catalogue (zero-shot, baselines)."""
    cat, errors = catalogue_of(cfg)
    conds, families, sets, models = cat["conditions"], cat["families"], cat["sft_sets"], cat["teacher_models"]
    teachers = [k for k, v in cfg["teachers"].items() if isinstance(v, dict)]
    errors += [f"conditions: {c!r} is neither in catalogue.conditions nor built in ({_hint(c, [*built_in, *conds])})"
               for c in cfg["conditions"] if c not in conds and c not in built_in]
    errors += [f"catalogue.conditions.{c}: a built-in condition's name" for c in conds if c in built_in]
    for c, e in conds.items():
        if e["sft_set"] not in sets:
            errors.append(_unknown(f"catalogue.conditions.{c}.sft_set", "SFT set", e["sft_set"], list(sets)))
        if e["family"] not in families:
            errors.append(_unknown(f"catalogue.conditions.{c}.family", "family", e["family"], list(families)))
    for f, e in families.items():
        key, anchor = f"catalogue.families.{f}.anchor", e["anchor"]
        if anchor is None:
            errors.append(f"{key}: not set (the family's condition whose first seed chooses its lr)")
        elif anchor not in conds:
            errors.append(_unknown(key, "condition", anchor, list(conds)))
        elif conds[anchor]["family"] != f:
            errors.append(f"{key}: {anchor} is not in family {f} (catalogue.conditions.{anchor}.family is "
                          f"{conds[anchor]['family']})")
    for name, e in sets.items():
        key = f"catalogue.sft_sets.{name}"
        if (e["strategy"] is None) == (not e["pairs"]):
            errors.append(f"{key}: set either strategy (the SFT stage writes it) or pairs (prep writes it), not "
                          f"{'both' if e['pairs'] else 'neither'}")
        errors += [_unknown(f"{key}.pairs", "pair group", g, PAIR_GROUPS)
                   for g in e["pairs"] or [] if g not in PAIR_GROUPS]
        if e["teacher"] is not None and e["teacher"] not in models:
            errors.append(_unknown(f"{key}.teacher", "teacher (not in catalogue.teacher_models)", e["teacher"],
                                   list(models)))
    for t, model in models.items():
        key = f"catalogue.teacher_models.{t}"
        if t not in teachers:
            errors.append(_unknown(key.rpartition(".")[0], "teacher (no teachers.<name> block)", t, teachers))
        elif model is not None and model not in conds:
            errors.append(_unknown(key, "condition", model, list(conds)))
        elif model is not None and (sets.get(conds[model]["sft_set"]) or {}).get("teacher") is not None:
            errors.append(f"{key}: {model} trains on a teacher's set; a teacher's model trains without one")
    if cat["step_budget_set"] not in sets:
        errors.append(_unknown("catalogue.step_budget_set", "SFT set", cat["step_budget_set"], list(sets)))
    errors += [_unknown("train.lr_by_family", "family", f, list(families))
               for f in cfg["train"].get("lr_by_family") or {} if f not in families]
    return errors


register_schema(StudyConfig, name="study_schema")
