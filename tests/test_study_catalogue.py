"""The study's condition catalogue (conf/study.yaml ``catalogue:``): the graph it derives is the one the study always
ran (pinned in tests/fixtures/study_graphs.json), a condition is added by config alone, and each catalogue mistake
stops the study in one line naming its key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import nli_cot.orchestration.study_schema  # noqa: F401  (registers the study's schema)
from nli_cot.orchestration.study import LocalJobs
from nli_cot.orchestration.study_graph import StudyGraph

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "fixtures" / "study_graphs.json"
# Each preset as shipped, plus variants that reach the graph's other branches: a teacher whose model is not itself
# a condition, a label family anchor trained only for its grid, equal steps without a teacher, no pool.
VARIANTS: dict[str, list[str]] = {
    "review": ["study=review"],
    "full": ["study=full"],
    "cpu": ["study=cpu"],
    "review_students_only": ["study=review", "conditions=[label_only_pool,teacher_human_correct_only,bow]"],
    "full_no_teacher": ["study=full", "conditions=[human,label_only_all]", "seeds=[0,1]",
                        "train.label_lr_grid=[1.0e-3,2.0e-3]"],
    "cpu_teacher_base": ["study=cpu", "conditions=[teacher_base_correct_only,zero_shot]", "train.equal_steps=true"],
}


def study_cfg(out: Path, *overrides: str) -> dict[str, Any]:
    """conf/study.yaml composed as ``python -m nli_cot.study`` composes it (resolved; the preset's name set by hand:
    compose sets no HydraConfig)."""
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("study", overrides=[f"out_dir={out}", *overrides])
    cfg.study_name = str(cfg.report_name)
    return OmegaConf.to_container(cfg, resolve=True)


def graph_of(cfg: dict[str, Any], out: Path) -> tuple[StudyGraph, LocalJobs, list]:
    g = StudyGraph(cfg, out, python="python")
    local = LocalJobs(cfg, g)
    jobs = g.jobs({"prep": local.prep, "prep_cmd": local.prep_cmd, "evaluate": local.evaluate,
                   "evaluate_cmd": local.evaluate_cmd, "select_lr": local.select_lr})
    return g, local, jobs


def snapshot(out: Path, *overrides: str) -> dict[str, Any]:
    """Every job of the graph: its name (in build order), lane, priority, dependencies and meta, and a hash of its
    stage and overrides (composed with the placeholders of ``validate``: SFT set sizes, checkpoints)."""
    g, local, jobs = graph_of(study_cfg(out, *overrides), out)
    here = str(out.resolve())
    g.dry = True
    try:
        rows = []
        for j in jobs:
            row: dict[str, Any] = {"name": j.name, "lane": j.lane, "priority": list(j.priority), "deps": list(j.deps),
                                   "meta": j.meta}
            if j.name in g.specs:
                stage, build = g.specs[j.name]
                spec = json.dumps([stage, [x.replace(here, "<out>") for x in build()]])
                row["spec_sha256"] = hashlib.sha256(spec.encode()).hexdigest()[:16]
            rows.append(row)
    finally:
        g.dry = False
    return {"jobs": rows, "prep": local.prep_cmd().replace(here, "<out>")}


def write_pinned(tmp: Path) -> None:
    """Re-pin (only when a graph change is meant): python -c 'from test_study_catalogue import *; write_pinned(...)'."""
    parts = []
    for name, overrides in VARIANTS.items():  # one job a line: a graph change is a readable diff
        snap = snapshot(tmp / name, *overrides)
        jobs = ",\n".join("   " + json.dumps(j) for j in snap["jobs"])
        parts.append(f' {json.dumps(name)}: {{"prep": {json.dumps(snap["prep"])},\n  "jobs": [\n{jobs}]}}')
    PINNED.write_text("{\n" + ",\n".join(parts) + "\n}\n")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_graph_from_the_catalogue_is_the_one_the_study_always_ran(variant, tmp_path):
    pinned = json.loads(PINNED.read_text())[variant]
    now = snapshot(tmp_path / variant, *VARIANTS[variant])
    assert [j["name"] for j in now["jobs"]] == [j["name"] for j in pinned["jobs"]]
    for got, want in zip(now["jobs"], pinned["jobs"], strict=True):
        assert got == want, got["name"]
    assert now["prep"] == pinned["prep"]


# ------------------------------------------------------------------------------------- a new condition


# A label-only condition on the human train pairs plus the teacher's pairs, with an lr family (and grid) of its own:
# three entries on the command line, no Python.
NEW_CONDITION = ("+catalogue.sft_sets.label_mix={pairs:[train,teacher]}",
                 "+catalogue.families.mix={anchor:label_only_mix,lr_grid:[1.0e-3,3.0e-3],label_only:true}",
                 "+catalogue.conditions.label_only_mix={sft_set:label_mix,family:mix}",
                 "conditions=[zero_shot,human,label_only_mix,teacher_human_combined]", "seeds=[0,1]")


def test_a_new_condition_is_added_by_config_alone(tmp_path):
    g, local, jobs = graph_of(study_cfg(tmp_path, "study=review", *NEW_CONDITION), tmp_path)
    by = {j.name: j for j in jobs}
    grid = ["train:label_only_mix_s0_lr1e-3", "train:label_only_mix_s0_lr3e-3"]
    assert by["select_lr_mix"].deps == grid and all(by[n].deps == ["prep"] for n in grid)  # prep writes the set
    assert by["predict:label_only_mix_s0"].deps == ["prep", "select_lr_mix"]  # the anchor's chosen run is its model
    assert by["train:label_only_mix_s1"].deps == ["prep", "select_lr_mix"] and "train:label_only_mix_s0" not in by
    assert g.choice_path("mix") == tmp_path.resolve() / "lr_choice_mix.json"
    assert "label_sets={'label_all': ['train', 'pool'], 'label_pool': ['teacher'], 'label_mix': ['train', " \
           "'teacher']}" in local.prep_cmd()
    g.dry = True  # placeholders for what prep will write (the set's size)
    train = " ".join(g.train_cmd("label_only_mix", 1, "label_only_mix_s1", lr=1e-3))
    g.dry = False
    assert "sft/label_mix/train.jsonl" in train and "dataset.label_only=true" in train
    assert "label_only_mix" in g.known_conditions and not g.reasoning("label_only_mix")
    # the rest of the graph is what it was: the same jobs, the new condition's beside them
    assert g.validate(jobs) >= 6  # every new job's config composes like the others'
    plain = snapshot(tmp_path / "again", "study=review", *NEW_CONDITION)["jobs"]
    without = snapshot(tmp_path / "without", "study=review", "conditions=[zero_shot,human,teacher_human_combined]",
                       "seeds=[0,1]")["jobs"]
    assert [j for j in plain if "label_only_mix" not in j["name"] and j["name"] != "select_lr_mix"] == without


def test_the_report_shows_the_lr_choice_of_a_family_added_by_config(tmp_path):
    from nli_cot.orchestration.study_report import build, render

    cfg = study_cfg(tmp_path, "study=review", *NEW_CONDITION)
    g, _, _ = graph_of(cfg, tmp_path)
    g.choice_path("mix").write_text(json.dumps({
        "lr": 3e-3, "run": "label_only_mix_s0_lr3e-3", "family": "mix", "condition": "label_only_mix", "seed": 0,
        "metric": "eval/loss (min)",
        "table": [{"lr": 1e-3, "best_dev_loss": 0.41}, {"lr": 3e-3, "best_dev_loss": 0.37}], "at_grid_edge": "upper"}))
    r = build(cfg, g, tmp_path)  # nothing has run: an empty report, with the choices that exist
    assert set(r["lr_choices"]) == {"reasoning", "label", "mix"} and r["lr_choices"]["mix"]["lr"] == 3e-3
    md = render(r, "", [])
    assert "mix family 0.003 (chosen on dev, below)" in md and "label-only family" in md
    assert "Learning-rate choice, mix family (condition `label_only_mix`" in md and "→ **0.003**" in md


def test_the_study_cli_plans_a_condition_added_on_its_command_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "nli_cot.study", "stage=plan", f"out_dir={tmp_path}",
                        "base_model=tiny_mistral", *NEW_CONDITION], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "select_lr_mix" in r.stdout and "train:label_only_mix_s1" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "nli_cot.study", "stage=plan", f"out_dir={tmp_path}",
                          "catalogue.families.label.anchor=human"], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert bad.returncode != 0 and not bad.stdout.strip() and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: catalogue.families.label.anchor: human is not in family label"), bad.stderr


# ------------------------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(("overrides", "message"), [
    (["catalogue.conditions.human.sft_set=humn"],
     "catalogue.conditions.human.sft_set: unknown SFT set 'humn' (did you mean human?)"),
    (["catalogue.families.label.anchor=null"],
     "catalogue.families.label.anchor: not set (the family's condition whose first seed chooses its lr)"),
    (["catalogue.families.label.anchor=human"],
     "catalogue.families.label.anchor: human is not in family label (catalogue.conditions.human.family is "
     "reasoning)"),
    (["conditions=[human,label_only_mixed]"],
     "conditions: 'label_only_mixed' is neither in catalogue.conditions nor built in (did you mean label_only?)"),
    (["catalogue.conditions.label_only_pool.family=labels"],
     "catalogue.conditions.label_only_pool.family: unknown family 'labels' (did you mean label?)"),
    (["+catalogue.conditions.label_only.sft_sett=human"],
     "catalogue.conditions.label_only.sft_sett: unknown key in 'catalogue.conditions.label_only' (did you mean "
     "catalogue.conditions.label_only.sft_set?)"),
    (["+catalogue.sft_sets.human.pairs=[train]"],
     "catalogue.sft_sets.human: set either strategy (the SFT stage writes it) or pairs (prep writes it), not both"),
    (["catalogue.sft_sets.label_pool.pairs=[teachers]"],
     "catalogue.sft_sets.label_pool.pairs: unknown pair group 'teachers' (did you mean teacher?)"),
    (["catalogue.sft_sets.teacher_human_combined.teacher=student"],
     "catalogue.sft_sets.teacher_human_combined.teacher: unknown teacher (not in catalogue.teacher_models) "
     "'student' (known: base, human)"),
    (["catalogue.teacher_models.human=teacher_base_combined"],
     "catalogue.teacher_models.human: teacher_base_combined trains on a teacher's set; a teacher's model trains "
     "without one"),
    (["catalogue.step_budget_set=humans"], "catalogue.step_budget_set: unknown SFT set 'humans' (did you mean human?)"),
    (["+train.lr_by_family.reasonin=1e-3"], "train.lr_by_family: unknown family 'reasonin' (did you mean reasoning?)"),
])
def test_each_catalogue_mistake_is_one_line_naming_its_key(overrides, message, tmp_path):
    cfg = study_cfg(tmp_path, "study=review", *overrides)
    with pytest.raises(ValueError) as err:
        StudyGraph(cfg, tmp_path)
    assert str(err.value) == message


def test_several_mistakes_say_how_many_more(tmp_path):
    cfg = study_cfg(tmp_path, "study=cpu", "catalogue.conditions.human.sft_set=x", "catalogue.families.label.anchor=y")
    with pytest.raises(ValueError, match=r"^catalogue.conditions.human.sft_set: .* \(and 1 more\)$"):
        StudyGraph(cfg, tmp_path)


# ---------------------------------------------------------------------------------------- the out_dir


def test_an_out_dir_remembers_its_catalogue_entries_and_refuses_a_changed_one(tmp_path):
    from nli_cot.orchestration.study import check_settings, settings_fingerprint

    out = tmp_path / "out"
    out.mkdir()
    cfg = study_cfg(out, "study=review")
    # an out_dir from before the catalogue was config: its settings file has no catalogue; it resumes
    (out / "study_settings.json").write_text(json.dumps(settings_fingerprint(cfg)))
    check_settings(out, cfg, force=False)
    recorded = json.loads((out / "study_settings.json").read_text())["catalogue"]
    assert recorded["conditions"]["label_only"] == {"sft_set": "human", "family": "label", "priority": 3}
    check_settings(out, study_cfg(out, "study=review", *NEW_CONDITION[:3]), force=False)  # a new entry: fine
    assert "label_only_mix" in json.loads((out / "study_settings.json").read_text())["catalogue"]["conditions"]
    changed = study_cfg(out, "study=review", "catalogue.conditions.label_only.sft_set=label_pool")
    with pytest.raises(SystemExit, match=r"\(catalogue.conditions.label_only differ\)"):
        check_settings(out, changed, force=False)
    check_settings(out, changed, force=True)  # knowingly: recorded as it is now
    now = json.loads((out / "study_settings.json").read_text())["catalogue"]
    assert now["conditions"]["label_only"]["sft_set"] == "label_pool" and "label_only_mix" in now["conditions"]


def test_the_default_sets_stay_out_of_the_fingerprint_so_earlier_out_dirs_resume(tmp_path):
    """Out_dirs made while the train source and test sets were fixed in code have fingerprints without them; at
    those values they stay out of every fingerprint, so such an out_dir is still the same study."""
    from nli_cot.orchestration.study import settings_fingerprint

    cfg = study_cfg(tmp_path, "study=review")
    data = settings_fingerprint(cfg)["settings"]["data"]
    assert "train_source" not in data and "test_sets" not in data
    other = study_cfg(tmp_path, "study=review", "data.test_sets.rte_dev=null")
    assert settings_fingerprint(other)["settings"]["data"]["test_sets"]["rte_dev"] is None
