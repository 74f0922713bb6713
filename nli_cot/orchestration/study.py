"""Recipe: the small-scale study, ``python -m nli_cot.study [study=review|full|cpu] [stage=run|report|plan]``.

The model card's ablation design measured for real on SmolLM2-135M-Instruct: zero-shot (plain and constrained),
label-only SFT (on all pairs, on the human pairs, on the teacher's pairs), human-reasoning SFT and teacher-reasoning
SFT (combined / correct-only), plus encoder and bag-of-words baselines, each trained with several seeds and tested on
e-SNLI test, MNLI dev matched and RTE dev. ``make study`` runs ``study=review`` (the default); ``study=full`` is the
2026-11 design, ``study=cpu`` a reduced CPU version.

Features
- Every stage job's config is composed with Hydra's compose API (the stage's own config and schema, as its CLI
  composes it) and validated before any job starts (a bad override fails in one line naming the job); when the
  job is submitted its composed config is stored as its spec (``<out_dir>/specs/<job>.yaml``) and run by
  ``python -m nli_cot.orchestration.run_job <spec>`` (the stage's ``run(cfg)`` in a fresh process). The manifest
  records that command and the equivalent CLI one (``python -m nli_cot.train ...``). Evaluation calls
  ``nli_cot.evaluation.evaluate.run`` in process.
- A job graph (``nli_cot.orchestration.study_graph``) run on Dask distributed (``nli_cot.orchestration.study_engine``): locally a cluster of
  one worker per GPU slot (``engine.slots_per_gpu`` per card, one ``CUDA_VISIBLE_DEVICES`` each) plus
  ``engine.cpu_slots`` CPU workers; ``engine.address=tcp://host:8786`` sends the same tasks to an existing
  scheduler (e.g. dask-jobqueue on SLURM). Seed-0 jobs first, the teacher chains first of all.
- Resumable (finished jobs leave atomic markers; the stage CLIs resume inside a job) and deadline-aware
  (``deadline_s``: no job starts too close to it, running ones are stopped in time, the report is written, and
  the next invocation continues). The manifest (``<out_dir>/manifest.json``) logs every attempt's command, seed,
  times, GPU and exit code; a failed job skips its dependents only. Progress lines go to the terminal and to
  ``<out_dir>/study.log``.
- Hyper-parameters are fixed in ``conf/study/*.yaml`` with reasons; the learning rate may be chosen per family on
  the dev split of the train pairs (``train.lr_grid`` on ``human`` seed 0, ``train.label_lr_grid`` on ``label_only``
  seed 0: the families' anchors in ``conf/study.yaml`` ``catalogue``); early stopping, the best checkpoint and
  the lr follow decoded dev balanced accuracy with ``train.gen_eval.enabled`` (else dev loss). The test sets are never used for a choice.
- The report (``nli_cot.orchestration.study_report``): ``<results_dir>/<report_name>.md`` + ``.json`` + plots.
- ``stage=plan`` prints the jobs in start order with their dependencies and what is already done;
  ``stage=export_data export_dir=.study-data`` writes the trimmed data copy that travels to the GPU machine;
  ``stage=merge merge_from=<dir>`` folds another machine's out_dir of the same study (same data) into this one,
  so that a study can span GPU sessions that each start bare.

Limits
- The method settings are fingerprinted in ``<out_dir>/study_settings.json``: reusing an out_dir with other
  sizes is refused (``force=true`` overrides), because finished jobs would otherwise be mixed with new ones. The
  condition catalogue is recorded there entry by entry: a new entry is fine, a changed one is refused the same way.
- Local jobs (evaluation, data sampling, the lr choice) run in the driver, one at a time: on a cluster the driver's
  machine must see out_dir too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nli_cot.core.records import write_json_atomic
from nli_cot.orchestration.study_engine import Engine, EngineConfig, check_engine, marker_path
from nli_cot.orchestration.study_graph import StudyGraph
from nli_cot.orchestration.study_schema import catalogue_of  # its import registers the study's schema

FINGERPRINTED = ("base_model", "model_tokenizer", "prompt_name", "data", "train", "predict", "teachers", "evaluate",
                "baselines")
EXIT_FAILED, EXIT_UNFINISHED = 1, 3
STAGES = ("run", "report", "plan", "export_data", "merge")


# The train source and test sets of conf/study.yaml, left out of the fingerprint at these values. They were fixed
# in the code when the first out_dirs were made, so those out_dirs' fingerprints lack them; and because the rule holds
# for every out_dir since, each one made with these sets (before or after they became config) has its fingerprint
# without them. Dropping the rule would change all those fingerprints and check_settings would refuse to resume
# them (force=true aside): the rule stays as long as such out_dirs are to be continued or merged.
_SETS_BEFORE_CONFIG = {"train_source": "esnli/dev.jsonl", "test_sets": {
    "esnli_test": "esnli/test.jsonl", "mnli_dev_matched": "mnli/dev_matched.jsonl", "rte_dev": "rte/dev.jsonl"}}


def settings_fingerprint(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide results (not scheduling, not paths, not the seed/condition lists, which may grow;
    the condition catalogue, which may grow too, is checked entry by entry by ``check_settings``). The train source
    and test sets count only where they differ from ``_SETS_BEFORE_CONFIG`` (why: its comment)."""
    settings = json.loads(json.dumps({k: cfg[k] for k in FINGERPRINTED}))
    settings["evaluate"].pop("plots", None)  # pictures only; off on a machine without matplotlib
    for key, value in _SETS_BEFORE_CONFIG.items():
        if settings["data"].get(key) == value:
            settings["data"].pop(key)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return {"sha256": hashlib.sha256(blob.encode()).hexdigest()[:16], "settings": settings}


def catalogue_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The catalogue entries (``catalogue.<section>.<name>``) that both have and that differ: a condition, family or
    set whose finished jobs meant something else. A field the old entry lacks is not a change."""
    changed = []
    for section, entries in old.items():
        if not isinstance(entries, dict):
            changed += [f"catalogue.{section}"] if new.get(section) != entries else []
            continue
        for name, entry in entries.items():
            now = (new.get(section) or {}).get(name, entry)
            if (any(now.get(k) != v for k, v in entry.items()) if isinstance(entry, dict) and isinstance(now, dict)
                    else now != entry):
                changed.append(f"catalogue.{section}.{name}")
    return changed


def check_settings(out: Path, cfg: dict[str, Any], force: bool) -> None:
    """Refuse an out_dir made with other method settings (``settings_fingerprint``) or with another meaning of a
    catalogue entry it has seen, unless ``force``; record the settings and every catalogue entry seen so far (an
    out_dir from before the catalogue was config has none recorded: nothing to compare, the entries are added)."""
    path = out / "study_settings.json"
    fp = settings_fingerprint(cfg)
    catalogue = json.loads(json.dumps(catalogue_of(cfg)[0]))
    if path.is_file():
        old = json.loads(path.read_text())
        seen = old.get("catalogue") or {}
        diff = [k for k in FINGERPRINTED if old["settings"].get(k) != fp["settings"].get(k)]
        diff += catalogue_changes(seen, catalogue)
        if (old["sha256"] != fp["sha256"] or diff) and not force:
            raise SystemExit(f"error: {out} was made with other settings ({', '.join(diff)} differ); use another "
                             "out_dir, or force=true to mix them knowingly")
        catalogue = {k: {**seen[k], **v} if isinstance(v, dict) and isinstance(seen.get(k), dict) else v
                     for k, v in {**seen, **catalogue}.items()}
        if old["sha256"] == fp["sha256"] and old.get("catalogue") == catalogue:
            return
    write_json_atomic(path, {**fp, "catalogue": catalogue})


MERGED_DIRS = ("eval", "runs", "sft", "teachers", "predictions", "jobs", "logs", "specs", "hydra")


def merge_out_dir(src: Path, dst: Path) -> dict[str, list[str]]:
    """Fold another invocation's out_dir (e.g. a GPU machine's, unpacked here) into ``dst``.

    One study may span machines that do not share a disk: each GPU session starts bare. Entries that ``dst`` lacks
    are copied (eval, runs, sft, teachers, predictions, job markers, logs); entries both have are kept as ``dst``
    has them and listed; the manifest gets ``src``'s invocations and its jobs that ``dst`` has not finished. Refused
    when the two were prepared from different data (``data/data_manifest.json`` differs): they are not one study.
    """
    import shutil

    for d in (src, dst):
        if not (d / "manifest.json").is_file():
            raise SystemExit(f"error: {d}: no manifest.json (not a study out_dir)")
    a, b = (d / "data" / "data_manifest.json" for d in (src, dst))
    if not a.is_file() or not b.is_file() or json.loads(a.read_text()) != json.loads(b.read_text()):
        raise SystemExit(f"error: {a} and {b} differ (or one is missing): the two out_dirs hold different data")
    done: dict[str, list[str]] = {"copied": [], "kept": []}
    for sub in MERGED_DIRS:
        if not (src / sub).is_dir():
            continue
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for entry in sorted((src / sub).iterdir()):
            target = dst / sub / entry.name
            if target.exists():
                done["kept"].append(f"{sub}/{entry.name}")
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
            done["copied"].append(f"{sub}/{entry.name}")
    theirs, ours = (json.loads((d / "manifest.json").read_text()) for d in (src, dst))
    seen = {(i.get("start"), i.get("pid")) for i in ours.get("invocations", [])}
    ours.setdefault("invocations", []).extend(
        i for i in theirs.get("invocations", []) if (i.get("start"), i.get("pid")) not in seen)
    for name, job in theirs.get("jobs", {}).items():
        if (ours.setdefault("jobs", {}).get(name) or {}).get("status") != "done":
            ours["jobs"][name] = job
            ours.setdefault("status", {})[name] = job.get("status")
    write_json_atomic(dst / "manifest.json", ours)
    return done


def detect_gpus(setting: int | None) -> list[str]:
    """GPU ids for CUDA_VISIBLE_DEVICES: the visible ones (or the first ``setting`` of them)."""
    if setting == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() == "":
        return []
    import torch

    count = torch.cuda.device_count()
    ids = [x.strip() for x in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
    return ids if setting is None else ids[: int(setting)]


class LocalJobs:
    """The in-process jobs: data sampling, per-set evaluation, the learning-rate choice."""

    def __init__(self, cfg: dict[str, Any], graph: StudyGraph) -> None:
        self.cfg, self.g = cfg, graph

    def prep(self) -> dict[str, Any]:
        from nli_cot.orchestration.study_data import prepare

        return prepare(self.cfg["data_root"], self.g.data, **self._prep_kwargs())

    def _prep_kwargs(self) -> dict[str, Any]:
        from nli_cot.orchestration.study_data import test_sets_of

        d = self.cfg["data"]
        pool = list(d.get("pool_files") or [])
        label_sets = self.g.label_sets() if pool else {}  # the catalogue's sets of pairs: they need the pool
        return {"n_train": d["n_train"], "n_test": dict(d["n_test"]), "salt": d["sample_salt"],
                "test_sets": test_sets_of(d), "train_source": d["train_source"], "pool_files": pool,
                "n_teacher": d.get("n_teacher"), "dev_fraction": d["sft_dev_fraction"], "label_sets": label_sets}

    def prep_cmd(self) -> str:
        return (f"(in process) nli_cot.orchestration.study_data.prepare(data_root={self.cfg['data_root']!r}, "
                + ", ".join(f"{k}={v!r}" for k, v in self._prep_kwargs().items()) + f") -> {self.g.data}")

    def _eval_overrides(self, mid: str, test_set: str) -> list[str]:
        e = self.cfg["evaluate"]
        return [f"predictions={self.g.predictions(mid).with_suffix('') / f'{test_set}.jsonl'}",
                f"out_dir={self.g.eval_dir(mid, test_set)}", f"name={mid}",
                f"bootstrap.n_resamples={e['n_resamples']}", f"plots={str(e['plots']).lower()}",
                f"length_edges=[{','.join(str(x) for x in e['length_edges'])}]"]

    def evaluate(self, mid: str) -> dict[str, Any]:
        """Split one model's predictions by test set and evaluate each set (nli_cot.evaluation.evaluate.run)."""
        from nli_cot.evaluation.evaluate import run as evaluate_run
        from nli_cot.orchestration.run_job import compose_stage
        from nli_cot.orchestration.study_data import set_of_ids

        sets = set_of_ids(self.g.data)
        records = [json.loads(x) for x in self.g.predictions(mid).read_text().splitlines() if x.strip()]
        split_dir = self.g.predictions(mid).with_suffix("")
        split_dir.mkdir(parents=True, exist_ok=True)
        by_set: dict[str, list[str]] = {}
        for r in records:
            by_set.setdefault(sets[r["id"]], []).append(json.dumps(r, ensure_ascii=False))
        result = {}
        for test_set, lines in sorted(by_set.items()):
            path = split_dir / f"{test_set}.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            cfg = compose_stage("evaluate", self._eval_overrides(mid, test_set))
            m = evaluate_run(cfg)
            result[test_set] = {"n": m["n"], "accuracy": m["accuracy"]["value"]}
        return result

    def evaluate_cmd(self, mid: str) -> str:
        return "split predictions by set, then " + " && ".join(
            "python -m nli_cot.evaluate " + " ".join(self._eval_overrides(mid, s)) for s in self.g.test_sets)

    def select_lr(self, family: str = "reasoning") -> dict[str, Any]:
        """The learning rate whose anchor seed-0 run reached the best dev value of the runs' monitored metric
        (``train.select_metric`` with gen_eval on, else dev loss); test sets are never consulted. Says whether the
        choice sits at an edge of the grid (then the optimum may lie beyond it)."""
        table = []
        metric = None
        for lr, run in self.g.lr_runs(family):
            status = json.loads((self.g.run_dir(run) / "model" / "status.json").read_text())
            best = status.get("best") or {}
            metric = best.get("metric") or metric
            table.append({"lr": lr, "run": run, "best_dev": best.get("value"), "metric": best.get("metric"),
                          "best_dev_loss": best.get("value") if best.get("metric") == "eval/loss" else None,
                          "best_checkpoint": best.get("checkpoint"), "global_step": status.get("global_step")})
        scored = [t for t in table if t["best_dev"] is not None]
        if not scored:
            raise RuntimeError(f"no {family} lr-grid run recorded a dev metric (is the dev split empty?)")
        maximise = metric is not None and metric != "eval/loss"
        best = (max if maximise else min)(scored, key=lambda t: t["best_dev"])
        lrs = sorted(t["lr"] for t in table)
        edge = None if len(lrs) < 2 else "lowest" if best["lr"] == lrs[0] else "highest" if best["lr"] == lrs[-1] else None
        choice = {"lr": best["lr"], "run": best["run"], "metric": f"{metric} ({'max' if maximise else 'min'})",
                  "table": table, "condition": self.g.anchor(family), "family": family, "seed": self.g.seeds[0],
                  "at_grid_edge": edge}
        write_json_atomic(self.g.choice_path(family), choice)
        return choice


def plan(jobs: list, state_dir: Path) -> None:
    for j in sorted(jobs, key=lambda j: j.priority):
        done = "done" if marker_path(state_dir, j.name).is_file() else "todo"
        print(f"{done:5} {j.lane:5} {j.name:42} <- {', '.join(j.deps) or '-'}")


def main_run(cfg: dict[str, Any]) -> int:
    out = Path(cfg["out_dir"]).resolve()
    t0 = time.time()
    from nli_cot.orchestration.study_data import check_data_sets

    problems = check_data_sets(cfg["data"])
    if problems:  # the test sets and train source, before anything reads them
        raise SystemExit(f"error: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    try:
        graph = StudyGraph(cfg, out, cfg["python"])
    except ValueError as e:  # a config mistake: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    local = LocalJobs(cfg, graph)
    jobs = graph.jobs({"prep": local.prep, "prep_cmd": local.prep_cmd, "evaluate": local.evaluate,
                       "evaluate_cmd": local.evaluate_cmd, "select_lr": local.select_lr})
    if cfg["stage"] in ("run", "plan"):
        try:  # every stage job's config composes, before any job starts
            graph.validate(jobs)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    deadline = cfg["deadline_s"]
    stop_at = None if deadline is None else t0 + float(deadline) - float(cfg["report_reserve_s"])
    if cfg["stage"] == "plan":
        plan(jobs, out / "jobs")
        return 0
    if cfg["stage"] == "merge":
        if not cfg.get("merge_from"):
            raise SystemExit("error: stage=merge needs merge_from=<another out_dir of this study>")
        done = merge_out_dir(Path(cfg["merge_from"]).resolve(), out)
        print(f"merged {cfg['merge_from']} into {out}: {len(done['copied'])} entries copied, "
              f"{len(done['kept'])} kept as they were here" + (f" ({', '.join(done['kept'])})" if done["kept"] else ""))
        return 0
    if cfg["stage"] == "export_data":
        from nli_cot.orchestration.study_data import test_sets_of, trim_copy

        d = cfg["data"]
        files = [d["train_source"], *test_sets_of(d).values(), *(d.get("pool_files") or [])]
        sizes = trim_copy(cfg["data_root"], cfg["export_dir"], files)
        print(f"{cfg['export_dir']}: " + ", ".join(f"{k} {v} rows" for k, v in sizes.items()))
        return 0
    from nli_cot.orchestration.study_report import write_report

    code = 0
    if cfg["stage"] == "run":
        out.mkdir(parents=True, exist_ok=True)
        check_settings(out, cfg, bool(cfg["force"]))
        e = cfg["engine"]
        gpus = [] if e["address"] else detect_gpus(e["gpus"])
        env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
               "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        say = progress_printer(out / "study.log", t0)
        engine = Engine(
            jobs, out / "jobs", out / "logs", out / "manifest.json",
            EngineConfig(address=e["address"], gpus=gpus, slots_per_gpu=int(e["slots_per_gpu"]),
                         cpu_slots=int(e["cpu_slots"]), connect_timeout_s=float(e["connect_timeout_s"]),
                         dashboard_address=e["dashboard_address"]),
            stop_at=stop_at, start_margin_s=float(cfg["start_margin_s"]), kill_grace_s=float(cfg["kill_grace_s"]),
            env=env, fail_jobs=tuple(cfg["fail_jobs"]), python=graph.python, printer=say)
        where = e["address"] or (f"gpus {gpus} x {e['slots_per_gpu']} slots + {e['cpu_slots']} CPU slots" if gpus
                                 else f"no GPU: {e['cpu_slots']} job(s) at a time")
        say(f"study {cfg['study_name']}: {len(jobs)} jobs on {where}, "
            f"deadline {deadline if deadline is not None else 'none'} s -> {out}")
        from nli_cot.orchestration.study_report import device_name, versions

        summary = engine.run({"device": device_name(), "versions": versions(), "argv": sys.argv[1:]})
        print_summary(summary, out / "study.log")
        code = EXIT_FAILED if summary["failed"] else EXIT_UNFINISHED if summary["left"] else 0
        write_json_atomic(out / "last_invocation.json", {"exit_code": code, **summary})
    paths = write_report(cfg, graph, out)
    print(f"report: {paths['md']} ({paths['json']})", flush=True)
    return code


def progress_printer(log_path: Path, t0: float):
    """Progress lines (``[  12.3s] [done] train:human_s0 ...``) to the terminal and appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        text = f"[{time.time() - t0:7.1f}s] {line}"
        print(text, flush=True)
        with log_path.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    return say


def check_scheduling(cfg: dict[str, Any]) -> list[str]:
    """One line per bad value of the scheduling knobs (``engine`` and the deadline's)."""
    errors = check_engine(cfg["engine"])
    for key, nullable in (("deadline_s", True), ("report_reserve_s", False), ("start_margin_s", False),
                          ("kill_grace_s", False)):
        v = cfg[key]
        if (v is None and not nullable) or (v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                               or v < 0)):
            errors.append(f"{key} must be a number >= 0{' or null' if nullable else ''}, got {v!r}")
    return errors


def summary_lines(s: dict[str, Any]) -> list[str]:
    lines = [f"== study invocation: {s['wall_s']} s; " + ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items()))]
    if s["already_finished"]:
        lines.append(f"   {s['already_finished']} jobs were already finished (skipped)")
    lines += [f"   FAILED  {n}: {why}" for n, why in s["failed"].items()]
    lines += [f"   skipped {n}: {why}" for n, why in s["skipped"].items()]
    lines += [f"   no data {n}: {why}" for n, why in s["no_data"].items()]
    if s["left"]:
        lines.append(f"   LEFT ({len(s['left'])}, {'stopped in time' if s['stopped_by_deadline'] else 'not started'}): "
                     + ", ".join(s["left"]))
        lines.append("   re-run the same command to continue")
    return lines


def print_summary(s: dict[str, Any], log_path: Path | None = None) -> None:
    """The invocation's summary to the terminal (and appended to the progress log)."""
    text = "\n" + "\n".join(summary_lines(s)) + "\n"
    print(text, end="", flush=True)
    if log_path is not None:
        with log_path.open("a", encoding="utf-8") as f:
            f.write(text)


@hydra.main(config_path="../../conf", config_name="study", version_base="1.3")
def main(cfg: DictConfig) -> None:
    plain = OmegaConf.to_container(cfg, resolve=True)
    if plain["stage"] not in STAGES:
        raise SystemExit(f"error: stage must be one of {', '.join(STAGES)}, got {plain['stage']!r}")
    if importlib.util.find_spec("matplotlib") is None:  # the GPU machine may lack it: numbers still come out
        print("warning: matplotlib is not installed: no plots (SFT lengths, evaluation, report)", file=sys.stderr)
        plain["evaluate"]["plots"] = False
        plain["plots"] = False
    errors = check_scheduling(plain)
    if errors:
        raise SystemExit("error: " + "; ".join(errors))
    code = main_run(plain)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
