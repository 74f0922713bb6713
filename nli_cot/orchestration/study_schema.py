"""The study's config schema: ``conf/study.yaml`` and its presets (``conf/study/*.yaml``), closed against typos.

The YAML says why each value is what it is; a field here says what the key means. The scheduling numbers are
typed ``Any`` on purpose: ``study.check_scheduling`` validates them with one line per mistake (a number >= 0, an
integer >= 1, ...), which says more than a type error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from nli_cot.core.config import register_schema


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
        "Non-empty: condition 'human' seed 0 trains at each lr, the best dev score wins (reasoning family)."))
    warmup_ratio: float = field(default=0.05, metadata=_help("Warm-up share of the optimiser steps."))
    batch_size: int = field(default=8, metadata=_help("Examples per micro-batch."))
    grad_accum: int = field(default=1, metadata=_help("Micro-batches per optimiser step."))
    max_epochs: int = field(default=1, metadata=_help("Passes over each condition's SFT set."))
    max_steps: int = field(default=-1, metadata=_help("> 0: a cap on the optimiser steps of every run."))
    label_lr_grid: list[float] = field(default_factory=list, metadata=_help(
        "The lr grid of the label-only family (anchor: label_only seed 0)."))
    lr_by_family: dict[str, float | None] = field(default_factory=dict, metadata=_help(
        "Family (reasoning | label) -> its lr when the family has no grid in this invocation."))
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
    conditions: list[str] = field(default_factory=list, metadata=_help("The conditions run."))
    data: StudyData = field(default_factory=StudyData, metadata=_help("The study's data."))
    train: StudyTrain = field(default_factory=StudyTrain, metadata=_help("Training of every condition."))
    predict: StudyPredict = field(default_factory=StudyPredict, metadata=_help("Prediction of every model."))
    baselines: StudyBaselines = field(default_factory=StudyBaselines, metadata=_help("The simple baselines."))
    teachers: StudyTeachers = field(default_factory=StudyTeachers, metadata=_help("The teacher conditions."))
    evaluate: StudyEvaluate = field(default_factory=StudyEvaluate, metadata=_help("Each evaluation."))
    report: StudyReport = field(default_factory=StudyReport, metadata=_help("The report's statistics."))


register_schema(StudyConfig, name="study_schema")
