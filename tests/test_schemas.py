"""Config schemas (issue #21): every conf group file composes against its group's schema (an unknown key fails),
every schema field has help text, every schema is registered once, by the module that defines it."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Every module that defines a schema; importing them registers every schema.
SCHEMA_MODULES = [
    "nli_cot.core.config",
    "nli_cot.core.pairs",
    "nli_cot.models.generation",
    "nli_cot.teacher.teachers",
    "nli_cot.teacher.teacher_prompts",
    "nli_cot.teacher.thoughts",
    "nli_cot.teacher.reflect",
    "nli_cot.teacher.sft",
    "nli_cot.training.train",
    "nli_cot.inference.predict",
    "nli_cot.inference.serve",
    "nli_cot.inference.export",
    "nli_cot.evaluation.baselines",
    "nli_cot.evaluation.evaluate",
    "nli_cot.orchestration.demo",
    "nli_cot.orchestration.demo_data",
    "nli_cot.orchestration.study",
]
# Top-level configs read without Hydra, each checked against its schema when loaded.
LOADED = {"compare": "nli_cot.evaluation.compare:CompareConfig", "ablations": "nli_cot.orchestration.ablations:ChainConfig"}
# group -> the top-level config that composes it (the one the test composes each of its files in).
GROUP_APPS = {
    "dataset": "config", "model": "config", "lora": "config", "optimizer": "config", "trainer": "config",
    "logger": "config", "prompt": "config", "pairs": "predict", "teacher": "thoughts",
    "teacher_prompt": "thoughts", "reflect_prompt": "reflect", "sft_strategy": "sft",
}
# conf folders that are not schema groups: global presets (`# @package _global_`) and Hydra's own plugins.
PRESET_DIRS = {"experiment", "study", "sweep", "hydra"}


def schemas() -> dict[tuple[str | None, str], type]:
    for name in SCHEMA_MODULES:
        importlib.import_module(name)
    from nli_cot.core.config import SCHEMAS

    return SCHEMAS


def compose_app(app: str, overrides: list[str]):
    schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=app, overrides=overrides)


def group_files() -> list[tuple[str, str]]:
    return [(d.name, f.stem) for d in sorted(CONF.iterdir()) if d.is_dir() and d.name not in PRESET_DIRS
            for f in sorted(d.glob("*.yaml"))]


def test_every_conf_group_has_a_schema_and_an_app():
    groups = {g for (g, _) in schemas() if g is not None}
    dirs = {d.name for d in CONF.iterdir() if d.is_dir() and d.name not in PRESET_DIRS}
    assert dirs == groups == set(GROUP_APPS), (dirs ^ groups, dirs ^ set(GROUP_APPS))


@pytest.mark.parametrize(("group", "option"), group_files())
def test_group_file_composes_against_its_schema(group, option):
    cfg = compose_app(GROUP_APPS[group], [f"{group}={option}"])
    assert OmegaConf.get_type(cfg[group]) is schemas()[(group, f"{group}_schema")]
    with pytest.raises((HydraException, OmegaConfBaseException), match="not_a_key"):
        compose_app(GROUP_APPS[group], [f"{group}={option}", f"{group}.not_a_key=1"])


def test_an_unknown_key_in_a_group_file_fails(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "typo.yaml").write_text("defaults:\n  - lora_schema\n  - _self_\nr: 8\nalhpa: 16\n")
    with pytest.raises((HydraException, OmegaConfBaseException), match="alhpa"):
        compose_app("config", [f"hydra.searchpath=[file://{tmp_path}]", "lora=typo"])


@pytest.mark.parametrize("app", sorted({name for (g, name) in schemas() if g is None}))
def test_top_level_schema_has_its_yaml(app):
    stem = app.removesuffix("_schema")
    yaml = CONF / ("config.yaml" if stem == "train" else f"{stem}.yaml")
    assert f"- {app}" in yaml.read_text(), f"{yaml.name} does not extend {app}"


def test_every_top_level_config_has_a_schema():
    registered = {name.removesuffix("_schema") for (g, name) in schemas() if g is None}
    stems = {p.stem for p in CONF.glob("*.yaml")}
    assert stems - {"config"} == (registered - {"train"}) | set(LOADED), "a top-level config with no schema"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "study").glob("*.yaml")))
def test_study_presets_compose_against_the_study_schema(preset):
    from nli_cot.orchestration.study_schema import StudyConfig

    cfg = compose_app("study", [f"study={preset}"])
    assert OmegaConf.get_type(cfg) is StudyConfig
    with pytest.raises((HydraException, OmegaConfBaseException), match="not_a_key"):
        compose_app("study", [f"study={preset}", "train.not_a_key=1"])


@pytest.mark.parametrize("stem", sorted(LOADED))
def test_loaded_config_is_checked_against_its_schema(stem, tmp_path):
    module, cls = LOADED[stem].split(":")
    node = getattr(importlib.import_module(module), cls)
    OmegaConf.merge(OmegaConf.structured(node), OmegaConf.load(CONF / f"{stem}.yaml"))
    bad = tmp_path / f"{stem}.yaml"
    bad.write_text((CONF / f"{stem}.yaml").read_text() + "not_a_key: 1\n")
    with pytest.raises(OmegaConfBaseException, match="not_a_key"):
        OmegaConf.merge(OmegaConf.structured(node), OmegaConf.load(bad))


def test_the_loaders_use_the_schemas(tmp_path):
    from nli_cot.evaluation.compare import load_defaults
    from nli_cot.orchestration.ablations import ChainError, load_chain

    assert load_defaults().mcnemar_exact_below == 25
    bad = tmp_path / "chain.yaml"
    bad.write_text("stages:\n  - experiment: abl1\n    warm_start: abl0_1\n")
    with pytest.raises(ChainError, match="warm_start"):
        load_chain(bad)


def nested_schemas(node: type, seen: set[type]) -> None:
    if node in seen:
        return
    seen.add(node)
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        for arg in [hints[f.name], *typing.get_args(hints[f.name])]:
            for inner in [arg, *typing.get_args(arg)]:
                if dataclasses.is_dataclass(inner):
                    nested_schemas(inner, seen)


def all_schema_classes() -> list[type]:
    seen: set[type] = set()
    loaded = [getattr(importlib.import_module(m), c) for m, c in (v.split(":") for v in LOADED.values())]
    for node in [*schemas().values(), *loaded]:
        nested_schemas(node, seen)
    return sorted(seen, key=lambda c: (c.__module__, c.__qualname__))


@pytest.mark.parametrize("node", all_schema_classes(), ids=lambda c: c.__qualname__)
def test_every_schema_field_has_help(node):
    missing = [f.name for f in dataclasses.fields(node) if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"{node.__module__}.{node.__qualname__}: no help text for {missing}"


def register_calls() -> list[tuple[str, str | None, str]]:
    """(module file, group, name) of every register_schema call in nli_cot, read from the source."""
    calls = []
    for path in sorted((REPO / "nli_cot").rglob("*.py")):
        text = path.read_text()
        if path.name != "config.py":
            assert "ConfigStore" not in text, f"{path}: register schemas through core.config.register_schema"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_schema":
                kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords if isinstance(k.value, ast.Constant)}
                if "group" in kw or "name" in kw:
                    group = kw.get("group")
                    calls.append((str(path.relative_to(REPO)), group, kw.get("name") or f"{group}_schema"))
    return calls


def test_every_schema_is_registered_once():
    calls = register_calls()
    keys = [(g, n) for (_, g, n) in calls]
    twice = {k for k in keys if keys.count(k) > 1}
    assert not twice, [c for c in calls if (c[1], c[2]) in twice]
    from nli_cot.core.config import GROUPS

    # the training groups are registered in one loop in core/config.py; everything else by one literal call
    assert set(schemas()) == set(keys) | {(g, f"{g}_schema") for g in GROUPS}


def test_a_second_schema_under_a_registered_name_is_refused():
    from nli_cot.core.config import LoraConfig, register_schema

    schemas()
    from hydra.core.config_store import ConfigStore

    stored = ConfigStore.instance().repo["lora"]["lora_schema.yaml"]
    register_schema(LoraConfig, group="lora")  # the same class again: a no-op, the store is not touched
    assert ConfigStore.instance().repo["lora"]["lora_schema.yaml"] is stored

    @dataclasses.dataclass
    class OtherLora:
        r: int = dataclasses.field(default=1, metadata={"help": "x"})

    with pytest.raises(RuntimeError, match="lora/lora_schema registered twice"):
        register_schema(OtherLora, group="lora")


SCHEMA_MODULE = """
from dataclasses import dataclass, field

from nli_cot.core.config import register_schema


@dataclass
class ZzConfig:
    x: int = field(default=1, metadata={"help": "x"})


register_schema(ZzConfig, name="zz_test_schema")
"""


def test_a_module_run_again_as_main_keeps_the_importable_schema(tmp_path, monkeypatch):
    """`python -m pkg.stage` after `import pkg.stage` (or the reverse) defines the class twice, same name, same file:
    the registration stays the importable module's class either way, and the store is not touched by a no-op."""
    import runpy
    import sys

    from hydra.core.config_store import ConfigStore

    from nli_cot.core.config import SCHEMAS

    path = tmp_path / "zz_schema_mod.py"
    path.write_text(SCHEMA_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    repo = ConfigStore.instance().repo
    key = (None, "zz_test_schema")
    try:
        module = importlib.import_module("zz_schema_mod")
        stored = repo["zz_test_schema.yaml"]
        runpy.run_path(str(path), run_name="__main__")  # the module run again: a no-op
        assert SCHEMAS[key] is module.ZzConfig and repo["zz_test_schema.yaml"] is stored

        del SCHEMAS[key], repo["zz_test_schema.yaml"], sys.modules["zz_schema_mod"]
        runpy.run_path(str(path), run_name="__main__")  # first as __main__, then imported: the import wins
        assert SCHEMAS[key].__module__ == "__main__"
        module = importlib.import_module("zz_schema_mod")
        assert SCHEMAS[key] is module.ZzConfig
        assert OmegaConf.get_type(OmegaConf.structured(repo["zz_test_schema.yaml"].node)) is module.ZzConfig
        runpy.run_path(str(path), run_name="__main__")  # and stays
        assert SCHEMAS[key] is module.ZzConfig
    finally:
        SCHEMAS.pop(key, None)
        repo.pop("zz_test_schema.yaml", None)
        sys.modules.pop("zz_schema_mod", None)
