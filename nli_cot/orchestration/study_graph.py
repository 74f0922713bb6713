"""The study's job graph: conditions x seeds -> stage commands (the project's own CLIs) with their dependencies.

Conditions, every one tested on the same test pairs (generation conditions on the sample, label-probability
conditions and baselines on every row):
- ``zero_shot`` / ``zero_shot_constrained``: the base model, the card's prompt through its chat template (constrained:
  always-valid JSON).
- ``label_only``: SFT on ``{"predicted_label": y}`` (the human set with ``dataset.label_only=true``: same pairs,
  same dev split), the control that says whether written reasoning helps; ``label_only_all`` on every pair (human
  pairs + the pool), ``label_only_pool`` on the teacher's pairs (written by prep).
- ``bow`` / ``hyp_bow`` / ``cross_encoder``: ``nli_cot.baselines`` on ``label_only_all``'s pairs and split.
- ``human``: SFT on e-SNLI's human explanations as the thought process (``sft_strategy=human``).
- ``teacher_base_combined`` / ``teacher_base_correct_only``: the base model writes thoughts for every teacher pair
  (the pool sample ``data.n_teacher`` when ``data.pool_files`` is set, else the train pairs)
  (thoughts stage), reflects on the ones it got wrong (reflect stage); SFT sets ``combined`` (correct +
  reflections that reach the gold label) and ``correct_only`` (the card's Abl0.1/0.2 and Abl1 recipes).
- ``teacher_human_*``: the same with the condition-3 model (seed 0, best checkpoint) as teacher: one round of
  self-improvement.

The trained conditions are config: conf/study.yaml ``catalogue`` (checked by ``study_schema.check_catalogue``) says
which SFT set each trains on and its lr family, which family anchor chooses the lr, who writes each set (prep, the
SFT stage from the train pairs, or from a teacher's thoughts and reflections) and whose seed-0 model each teacher
is. The graph derives its jobs from that: the job that writes a condition's set is its training's dependency, a
teacher's chain waits for its model, and a family anchor's seed-0 model is its grid run at the chosen lr. Zero-shot
and baseline conditions are built in (the base model; ``nli_cot.baselines`` kinds).

Jobs (``lane``): prep (local), sft (cpu), thoughts/reflect/train/predict (gpu), evaluate (local), select_lr
(local). Priorities put every seed-0 job before seeds 1-2, and the teacher chains (the critical path) first.

Limits
- One learning rate per family (reasoning, label-only): chosen on the anchor's seed 0 when its grid is set.
- A training run with an empty SFT set ends as ``no_data`` (with its predictions and evaluation), not a failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nli_cot.orchestration.run_job import JobSpecError, compose_stage, equivalent_command, spec_command
from nli_cot.orchestration.study_data import test_sets_of
from nli_cot.orchestration.study_engine import Job, NoData, safe_name
from nli_cot.orchestration.study_schema import catalogue_of, check_catalogue

ZERO_SHOT = ("zero_shot", "zero_shot_constrained")
BASELINES = ("bow", "hyp_bow", "cross_encoder")
BUILT_IN = (*ZERO_SHOT, *BASELINES)  # the conditions outside the catalogue: the base model, nli_cot.baselines kinds
SEEDLESS = (*ZERO_SHOT, "bow", "hyp_bow")  # deterministic given the data: one model, not one per seed
# Start order inside one seed of the built-in conditions' jobs (the catalogue's conditions have their own).
_ORDER = {"zero_shot": 5, "baseline": 6}


def model_id(condition: str, seed: int | None) -> str:
    return condition if seed is None else f"{condition}_s{seed}"


def _fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


class StudyGraph:
    """Paths and commands of one study directory; ``jobs()`` is the graph."""

    def __init__(self, cfg: dict[str, Any], out_dir: Path, python: str | None = None) -> None:
        self.cfg = cfg
        self.out = out_dir.resolve()
        self.python = python or sys.executable
        self.dry = False  # validate(): placeholders stand in for what dependencies will write
        self.specs: dict[str, tuple[str, Callable[[], list[str]]]] = {}  # job -> (stage, its overrides)
        self.overrides_of: dict[str, list[str]] = {}  # job -> the overrides of its last spec
        self.data = self.out / "data"
        problems = check_catalogue(cfg, BUILT_IN)
        if problems:
            raise ValueError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        catalogue = catalogue_of(cfg)[0]
        self.trained: dict[str, dict[str, Any]] = catalogue["conditions"]  # catalogue order
        self.families: dict[str, dict[str, Any]] = catalogue["families"]
        self.sets: dict[str, dict[str, Any]] = catalogue["sft_sets"]
        self.budget_set: str = catalogue["step_budget_set"]
        # teacher id (its jobs' and directory's name) -> its teachers.<name> block and its model's condition
        self.teachers = {f"teacher_{t}": t for t in catalogue["teacher_models"]}
        self.teacher_model = {f"teacher_{t}": m for t, m in catalogue["teacher_models"].items()}
        self.known_conditions = (*ZERO_SHOT, *self.trained, *BASELINES)  # the report's row order
        self.conditions = [c for c in self.known_conditions if c in cfg["conditions"]]
        self.seeds = [int(s) for s in cfg["seeds"]]

    # ------------------------------------------------------------------------------------ catalogue

    def family(self, condition: str) -> str:
        return self.trained[condition]["family"]

    def anchor(self, family: str) -> str:
        return self.families[family]["anchor"]

    def label_only(self, condition: str) -> bool:
        """Trains on the label alone (its family's ``label_only``); the others write reasoning."""
        return bool(self.families[self.family(condition)]["label_only"])

    def reasoning(self, condition: str) -> bool:
        return condition in self.trained and not self.label_only(condition)

    def sft_set(self, condition: str) -> str:
        return self.trained[condition]["sft_set"]

    def teacher_of(self, condition: str) -> str | None:
        """The teacher id whose reasoning the condition's set is made of, or None."""
        t = self.sets[self.sft_set(condition)]["teacher"]
        return None if t is None else f"teacher_{t}"

    def set_job(self, name: str) -> str:
        """The job that writes SFT set ``name``: prep (a label-only set of pairs) or the SFT stage's sft:<name>."""
        return "prep" if self.sets[name]["strategy"] is None else f"sft:{name}"

    def select_job(self, family: str) -> str:
        return self.families[family]["select_job"] or f"select_lr_{family}"

    def label_sets(self) -> dict[str, list[str]]:
        """The label-only sets prep writes: set -> the pair groups it holds."""
        return {name: list(e["pairs"]) for name, e in self.sets.items() if e["strategy"] is None}

    @property
    def test_sets(self) -> list[str]:
        """The test sets every model is scored on: conf/study.yaml ``data.test_sets`` (checked at start-up by
        ``study_data.check_data_sets``), in its order."""
        return list(test_sets_of(self.cfg["data"]))

    # ---------------------------------------------------------------------------------------- paths

    def sft_dir(self, name: str) -> Path:
        return self.out / "sft" / name

    def teacher_dir(self, teacher: str) -> Path:
        return self.out / "teachers" / teacher

    def run_dir(self, mid: str) -> Path:
        return self.out / "runs" / mid

    def predictions(self, mid: str) -> Path:
        return self.out / "predictions" / f"{mid}.jsonl"

    def eval_dir(self, mid: str, test_set: str | None = None) -> Path:
        d = self.out / "eval" / mid
        return d / test_set if test_set else d

    def grid(self, family: str) -> list[Any]:
        return list(self.families[family]["lr_grid"] or [])

    def lr_runs(self, family: str) -> list[tuple[float, str]]:
        anchor = self.anchor(family)
        return [(float(lr), f"{anchor}_s{self.seeds[0]}_lr{_fmt_lr(float(lr))}") for lr in self.grid(family)]

    def choice_path(self, family: str) -> Path:
        return self.out / (self.families[family]["choice_file"] or f"lr_choice_{family}.json")

    def chosen_lr(self, condition: str) -> float:
        family = self.family(condition)
        path = self.choice_path(family)
        if self.grid(family) and path.is_file():
            return float(json.loads(path.read_text())["lr"])
        fixed = (self.cfg["train"].get("lr_by_family") or {}).get(family)
        return float(fixed if fixed is not None else self.cfg["train"]["lr"])

    def trained_run(self, mid: str) -> Path:
        """The run dir behind a trained model id; for a grid's anchor at seed 0, the chosen lr's run."""
        for family in self.families:
            if mid == model_id(self.anchor(family), self.seeds[0]) and self.grid(family):
                choice = json.loads(self.choice_path(family).read_text())
                return self.run_dir(choice["run"])
        return self.run_dir(mid)

    def sft_stats(self, name: str) -> dict[str, Any]:
        if self.dry:
            return {"train": {"count": 1}, "dev": {"count": 1}}
        return json.loads((self.sft_dir(name) / "stats.json").read_text())

    def checkpoint(self, mid: str) -> Path:
        """The best checkpoint (dev loss) of a finished run; for a family anchor's seed 0 under a grid, of the
        chosen lr."""
        if self.dry:
            return self.run_dir(mid) / "model" / "checkpoint-0"
        run = self.trained_run(mid)
        status = json.loads((run / "model" / "status.json").read_text())
        best = (status.get("best") or {}).get("checkpoint")
        if best and (run / "model" / best).is_dir():
            return run / "model" / best
        ckpts = sorted((run / "model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not ckpts:
            raise FileNotFoundError(f"{run}: no checkpoint")
        return ckpts[-1]

    # ------------------------------------------------------------------------------------- commands

    # Each *_cmd is the command a user would type for the job (``python -m nli_cot.<stage> <overrides>``); the job
    # itself runs the same overrides as a composed config (a spec file) through ``nli_cot.orchestration.run_job``.

    def _py(self, module: str, *args: str) -> list[str]:
        return [self.python, "-m", module, *args]

    def spec_path(self, job: str) -> Path:
        return self.out / "specs" / f"{safe_name(job)}.yaml"

    def stage_job(self, name: str, stage: str, cmd: Callable[[], list[str]]) -> dict[str, Any]:
        """``Job`` fields of a stage job: its spec is composed when the job is submitted (dependencies done)."""
        self.specs[name] = (stage, lambda: cmd()[3:])
        return {"argv": lambda: self.job_argv(name), "equivalent": lambda: self.equivalent(name)}

    def job_argv(self, name: str) -> list[str]:
        """Compose the job's config, store it as its spec (``<out>/specs/<job>.yaml``), return the runner's argv."""
        stage, overrides = self.specs[name][0], self.specs[name][1]()
        argv = spec_command(self.spec_path(name), stage, overrides, self.python)
        self.overrides_of[name] = overrides
        return argv

    def equivalent(self, name: str) -> str:
        return " ".join(equivalent_command(self.specs[name][0], self.overrides_of.get(name, [])))

    def validate(self, jobs: list[Job]) -> int:
        """Compose one job per (stage, condition, lr run) before any job starts, with placeholders for what
        dependencies will write (SFT set sizes, checkpoints); a bad override or group option is a ValueError of
        one line naming the job. Returns the number of configs composed."""
        seen: set[tuple] = set()
        self.dry = True
        try:
            for job in jobs:
                if job.name not in self.specs:
                    continue
                stage, build = self.specs[job.name]
                key = (stage, job.meta.get("condition"), job.meta.get("lr"))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    compose_stage(stage, build())
                except JobSpecError as err:
                    raise ValueError(f"job {job.name}: {err}") from None
        finally:
            self.dry = False
        return len(seen)

    def sft_cmd(self, name: str, strategy: str, teacher: str | None) -> list[str]:
        c = self.cfg
        args = [f"sft_strategy={strategy}", f"model={c['base_model']}", f"prompt={c['prompt_name']}",
                f"model.tokenizer={c['model_tokenizer'] if c['model_tokenizer'] else 'null'}",
                f"name={name}", f"output_dir={self.sft_dir(name)}", f"data_root={c['data_root']}",
                f"dev_fraction={c['data']['sft_dev_fraction']}", f"max_tokens={c['data']['max_tokens']}",
                f"plot={str(c.get('plots', True)).lower()}"]
        if teacher is None:
            args.append(f"sft_strategy.sources.0.path={self.data / 'train_pairs.jsonl'}")
        else:
            t = self.teacher_dir(teacher)
            args += [f"thoughts_dir={t / 'thoughts'}", f"reflections_dir={t / 'reflections'}", "data_name=train"]
        return self._py("nli_cot.sft", *args)

    def _teacher_args(self, teacher: str) -> list[str]:
        c = self.cfg["teachers"]
        t = c[self.teachers[teacher]]
        args = [f"teacher={t['group']}", f"teacher.batch_size={c['batch_size']}",
                f"teacher.max_tokens={c['max_tokens']}", "progress=false"]
        if self.teacher_model[teacher] is not None:
            args.append(f"teacher.adapter={self.checkpoint(model_id(self.teacher_model[teacher], self.seeds[0]))}")
        return args + list(t["extra"])

    def thoughts_cmd(self, teacher: str) -> list[str]:
        t = self.cfg["teachers"][self.teachers[teacher]]
        return self._py("nli_cot.thoughts", *self._teacher_args(teacher), "pairs=esnli", "pairs.name=study_train",
                        f"pairs.path={self.pairs_for_teacher()}", "pairs.extra_fields=[]",
                        f"teacher_prompt={t['prompt']}",
                        f"output={self.teacher_dir(teacher) / 'thoughts' / 'train.jsonl'}")

    def reflect_cmd(self, teacher: str) -> list[str]:
        d = self.teacher_dir(teacher)
        prompt = self.cfg["teachers"][self.teachers[teacher]].get("reflect_prompt", "default")
        return self._py("nli_cot.reflect", *self._teacher_args(teacher), "data_name=train", f"reflect_prompt={prompt}",
                        f"thoughts={d / 'thoughts' / 'train.jsonl'}", f"output={d / 'reflections' / 'train.jsonl'}")

    def step_budget(self, condition: str | None = None) -> tuple[int, int]:
        """(max_epochs, max_steps) of every training run.

        With ``train.equal_steps`` every reasoning condition gets the optimiser steps that ``max_epochs`` passes over
        ``catalogue.step_budget_set`` take (the human set, the largest: one example per train pair), epochs
        unbounded; early stopping on the dev loss still picks the best checkpoint. Without it a small teacher set
        (e.g. 369 examples) trains for a few steps only, and its row would mix the teacher's quality with
        under-training.
        """
        t = self.cfg["train"]
        own = (t.get("epochs_by_condition") or {}).get(condition)
        if own is not None:  # a set with its own pass count (e.g. the 47k label-only pairs)
            return int(own), int(t["max_steps"])
        if not t.get("equal_steps") or (condition is not None and not self.reasoning(condition)):
            return int(t["max_epochs"]), int(t["max_steps"])
        n = self.sft_stats(self.budget_set)["train"]["count"]
        per_step = int(t["batch_size"]) * int(t["grad_accum"])
        steps = max(1, -(-int(n) // per_step) * int(t["max_epochs"]))
        return -1, steps if int(t["max_steps"]) <= 0 else min(steps, int(t["max_steps"]))

    def train_cmd(self, condition: str, seed: int, run: str, lr: float | None = None) -> list[str]:
        c, t = self.cfg, self.cfg["train"]
        sft = self.sft_dir(self.sft_set(condition))
        stats = self.sft_stats(self.sft_set(condition))
        eval_path = str(sft / "dev.jsonl") if stats["dev"]["count"] else "null"
        own_patience = t.get("patience_by_condition") or {}
        patience = own_patience[condition] if condition in own_patience else t["early_stopping_patience"]
        max_epochs, max_steps = self.step_budget(condition)
        args = [
            "+experiment=study",  # what every study run shares (conf/experiment/study.yaml)
            f"model={c['base_model']}", f"prompt={c['prompt_name']}", f"optimizer={t['optimizer']}",
            f"dataset.name={condition}", f"dataset.train_path={sft / 'train.jsonl'}",
            f"dataset.eval_path={eval_path}", f"dataset.label_only={str(self.label_only(condition)).lower()}",
            f"dataset.max_seq_length={t['max_seq_length']}",
            f"output_dir={self.run_dir(run)}", f"seed={seed}",
            f"optimizer.lr={lr if lr is not None else self.chosen_lr(condition)}",
            f"optimizer.warmup_ratio={t['warmup_ratio']}",
            f"trainer.per_device_batch_size={t['batch_size']}", f"trainer.grad_accum={t['grad_accum']}",
            f"trainer.max_epochs={max_epochs}", f"trainer.max_steps={max_steps}",
            f"trainer.eval_every_n_steps={t['eval_every_n_steps']}", f"trainer.save_steps={t['eval_every_n_steps']}",
            f"trainer.eval_batch_size={t['eval_batch_size']}",
            f"trainer.early_stopping_patience={patience if patience else 'null'}",
            f"trainer.early_stopping_min_steps={t.get('early_stopping_min_steps') or 0}",
            f"trainer.precision={t['precision']}", f"trainer.log_every_n_steps={t['log_every_n_steps']}",
        ]
        gen = t.get("gen_eval") or {}
        if gen.get("enabled") and eval_path != "null":
            # Checkpoint and lr are chosen by a decoded dev metric (balanced accuracy), not by dev loss: loss
            # rewards fluent thoughts, the product is the label.
            args += ["trainer.gen_eval.enabled=true", f"trainer.gen_eval.max_examples={gen['max_examples']}",
                     f"trainer.gen_eval.batch_size={gen['batch_size']}",
                     f"trainer.gen_eval.max_new_tokens={gen['max_new_tokens']}",
                     f"trainer.early_stopping_metric={t['select_metric']}", f"trainer.early_stopping_mode={t['select_mode']}"]
        return self._py("nli_cot.train", *args, *t["extra"])

    def predict_cmd(self, mid: str, condition: str) -> list[str]:
        c, p = self.cfg, self.cfg["predict"]
        max_new = p.get("zero_shot_max_new_tokens") if condition in ZERO_SHOT else None
        batch = (p.get("zero_shot_batch_size") if condition in ZERO_SHOT else None) or p["batch_size"]
        args = [f"model={c['base_model']}", f"prompt={c['prompt_name']}", "pairs=esnli", "pairs.name=study_test",
                f"pairs.path={self.test_file(condition)}", "pairs.extra_fields=[]", f"output={self.predictions(mid)}",
                f"run_name={mid}", f"batch_size={batch}",
                f"decoding.max_new_tokens={max_new or p['max_new_tokens']}",
                f"decoding.label_probs={str(bool(p.get('label_probs'))).lower()}",
                f"model.dtype={p['dtype']}", "progress=false"]
        if condition == "zero_shot_constrained":
            args.append("decoding.constrained=true")
        if condition not in ZERO_SHOT:
            args += [f"adapter.path={self.checkpoint(mid)}", f"adapter.merge={str(p['merge_adapter']).lower()}"]
        return self._py("nli_cot.predict", *args, *p["extra"])

    def test_file(self, condition: str) -> Path:
        """Conditions scored without long decoding (label-only, baselines) read every test row; generation
        conditions the fixed sample (``data.n_test``), a subset of it."""
        full = condition in (self.cfg["predict"].get("full_test") or [])
        return self.data / ("test_full.jsonl" if full else "test.jsonl")

    def pairs_for_teacher(self) -> Path:
        return self.data / ("teacher_pairs.jsonl" if self.cfg["data"].get("pool_files") else "train_pairs.jsonl")

    def baseline_cmd(self, kind: str, mid: str, seed: int) -> list[str]:
        """A surface or encoder baseline on the same pairs and split as ``label_only_all``, scored on every test row."""
        b = self.cfg.get("baselines") or {}
        s = self.sft_dir("label_all")
        return self._py("nli_cot.baselines", f"kind={kind}", f"train={s / 'train.jsonl'}", f"dev={s / 'dev.jsonl'}",
                        f"test={self.test_file(kind)}", f"output={self.predictions(mid)}", f"seed={seed}",
                        *((b.get(kind) or {}).get("extra") or []))

    # ----------------------------------------------------------------------------------------- checks

    def _require_sft(self, name: str) -> None:
        stats = self.sft_stats(name)
        if stats["train"]["count"] == 0:
            raise NoData(f"SFT set {name} is empty ({json.dumps(stats['sources'])[:300]})")

    # ------------------------------------------------------------------------------------------ graph

    def jobs(self, local: dict[str, Any]) -> list[Job]:
        """The graph. ``local`` maps local job kinds (prep, evaluate, select_lr) to callables built by the driver;
        ``select_lr`` takes the lr family (a key of ``catalogue.families``)."""
        conds = set(self.conditions)
        seeds = self.seeds
        s0 = seeds[0]
        jobs: list[Job] = [Job("prep", "local", (-1,), fn=local["prep"], equivalent=local["prep_cmd"],
                               meta={"stage": "prep"})]
        teachers = [t for t in self.teachers if any(self.teacher_of(c) == t for c in conds & set(self.trained))]
        # A teacher's model trains at seed 0 even when its condition is not run: the teacher's chain waits for it.
        students = {m for t in teachers if (m := self.teacher_model[t]) is not None}
        trained = [c for c in self.trained if c in conds or c in students]
        grids = [f for f in self.families if self.grid(f) and any(self.family(c) == f for c in trained)]
        equal_steps = bool(self.cfg["train"].get("equal_steps"))
        budget = [self.budget_set] if equal_steps and any(self.reasoning(c) for c in trained) else []
        # The sets the SFT stage writes from the train pairs, written before anything trains (a teacher's sets wait
        # for its chain): every trained condition's, each grid anchor's, and the step budget's.
        needed = {self.sft_set(c) for c in trained} | {self.sft_set(self.anchor(f)) for f in grids} | set(budget)
        for name, entry in self.sets.items():
            if name in needed and entry["strategy"] is not None and entry["teacher"] is None:
                jobs.append(Job(f"sft:{name}", "cpu", (s0, -1), ["prep"],
                                **self.stage_job(f"sft:{name}", "sft", lambda n=name, e=entry: self.sft_cmd(
                                    n, e["strategy"], None)),
                                meta={"stage": "sft", "condition": name}))
        # A teacher's model trains first among its group's jobs: the teacher's chain (the critical path) waits for it.
        every_student = {m for m in self.teacher_model.values() if m is not None}

        def order(group: str) -> int:
            if group in _ORDER:
                return _ORDER[group]
            if group in self.teachers:  # a teacher's chain starts with its earliest condition
                return min((e["priority"] for c, e in self.trained.items() if self.teacher_of(c) == group), default=0)
            return int(self.trained[group]["priority"])

        def pri(seed: int | None, group: str, step: int) -> tuple:
            return (seeds.index(seed if seed is not None else s0), order(group), step)

        def set_deps(condition: str) -> list[str]:
            """The jobs writing what a training run reads: its SFT set, and under equal_steps the budget's set."""
            deps = [self.set_job(self.sft_set(condition))]
            deps += [j for j in map(self.set_job, budget) if self.reasoning(condition) and j not in deps]
            return deps

        def add_model(condition: str, seed: int | None, train_dep: str | None, group: str) -> None:
            """predict + evaluate of one model (trained by ``train_dep``, or the base model)."""
            mid = model_id(condition, seed)
            pred = f"predict:{mid}"
            jobs.append(Job(pred, "gpu", pri(seed, group, 5), ["prep"] + ([train_dep] if train_dep else []),
                            **self.stage_job(pred, "predict", lambda: self.predict_cmd(mid, condition)),
                            meta={"stage": "predict", "condition": condition, "seed": seed}))
            add_evaluate(condition, seed, pred, group)

        def add_evaluate(condition: str, seed: int | None, dep: str, group: str) -> None:
            mid = model_id(condition, seed)
            jobs.append(Job(f"evaluate:{mid}", "local", pri(seed, group, 6), [dep],
                            fn=lambda: local["evaluate"](mid), equivalent=lambda: local["evaluate_cmd"](mid),
                            meta={"stage": "evaluate", "condition": condition, "seed": seed}))

        def train_job(condition: str, seed: int, deps: list[str], group: str, step: int) -> str:
            mid = model_id(condition, seed)
            name = f"train:{mid}"
            jobs.append(Job(name, "gpu", pri(seed, group, step), deps,
                            **self.stage_job(name, "train", lambda: self.train_cmd(condition, seed, mid)),
                            check=lambda: self._require_sft(self.sft_set(condition)),
                            meta={"stage": "train", "condition": condition, "seed": seed}))
            return name

        for condition in ZERO_SHOT:
            if condition in conds:
                add_model(condition, None, None, "zero_shot")
        # lr grids: the anchor's first seed at each lr, then the choice (dev metric); the family waits for it.
        ready: dict[str, list[str]] = {f: [] for f in self.families}
        for family in grids:
            anchor = self.anchor(family)
            names = []
            for lr, run in self.lr_runs(family):
                name = f"train:{run}"
                names.append(name)
                jobs.append(Job(name, "gpu", pri(s0, anchor, 1), set_deps(anchor),
                                **self.stage_job(name, "train",
                                                 lambda lr=lr, run=run, a=anchor: self.train_cmd(a, s0, run, lr)),
                                check=lambda a=anchor: self._require_sft(self.sft_set(a)),
                                meta={"stage": "train", "condition": anchor, "seed": s0, "lr": lr}))
            sel = self.select_job(family)
            jobs.append(Job(sel, "local", pri(s0, anchor, 2), names, fn=lambda f=family: local["select_lr"](f),
                            equivalent=lambda n=names: "(in process) best dev metric of " + ", ".join(n),
                            meta={"stage": "select_lr", "family": family}))
            ready[family] = [sel]

        def seed0_model(condition: str) -> str:
            """The job after which the condition's seed-0 model exists: its family's lr choice for the anchor under
            a grid (the chosen lr's run is that model), else its training."""
            family = self.family(condition)
            return ready[family][0] if condition == self.anchor(family) and ready[family] else "train:" + model_id(
                condition, s0)

        for seed in seeds:
            for condition in trained:
                family = self.family(condition)
                if self.teacher_of(condition) is not None or (condition not in conds and seed != s0):
                    continue
                if condition == self.anchor(family) and seed == s0 and ready[family]:
                    if condition in conds:  # the grid's chosen run is this model
                        add_model(condition, s0, ready[family][0], condition)
                    continue
                step = 1 if condition in every_student else 3
                dep = train_job(condition, seed, [*set_deps(condition), *ready[family]], condition, step)
                if condition in conds:
                    add_model(condition, seed, dep, condition)
            for teacher in teachers:
                model = self.teacher_model[teacher]
                tdeps = [seed0_model(model)] if model is not None else []
                if seed == s0:
                    jobs.append(Job(f"thoughts:{teacher}", "gpu", pri(s0, teacher, 0), ["prep", *tdeps],
                                    **self.stage_job(f"thoughts:{teacher}", "thoughts",
                                                     lambda t=teacher: self.thoughts_cmd(t)),
                                    meta={"stage": "thoughts", "condition": teacher}))
                    jobs.append(Job(f"reflect:{teacher}", "gpu", pri(s0, teacher, 1), [f"thoughts:{teacher}"],
                                    **self.stage_job(f"reflect:{teacher}", "reflect",
                                                     lambda t=teacher: self.reflect_cmd(t)),
                                    meta={"stage": "reflect", "condition": teacher}))
                for condition in (c for c in trained if self.teacher_of(c) == teacher and c in conds):
                    name = self.sft_set(condition)
                    if seed == s0 and not any(j.name == f"sft:{name}" for j in jobs):  # a set two conditions share
                        jobs.append(Job(f"sft:{name}", "cpu", pri(s0, teacher, 2), [f"reflect:{teacher}"],
                                        **self.stage_job(f"sft:{name}", "sft", lambda n=name, t=teacher: self.sft_cmd(
                                            n, self.sets[n]["strategy"], t)),
                                        meta={"stage": "sft", "condition": name}))
                    dep = train_job(condition, seed, [*set_deps(condition), *ready[self.family(condition)]], teacher, 3)
                    add_model(condition, seed, dep, teacher)
            for kind in BASELINES:
                if kind not in conds or (kind in SEEDLESS and seed != s0):
                    continue
                sd = None if kind in SEEDLESS else seed
                mid = model_id(kind, sd)
                name = f"baseline:{mid}"
                jobs.append(Job(name, "gpu" if kind == "cross_encoder" else "cpu", pri(sd, "baseline", 4), ["prep"],
                                **self.stage_job(name, "baselines",
                                                 lambda k=kind, m=mid, s=seed: self.baseline_cmd(k, m, s)),
                                meta={"stage": "baseline", "condition": kind, "seed": sd}))
                add_evaluate(kind, sd, name, "baseline")
        return jobs
