"""Adding a data set is one YAML file (issue #21): a new conf/pairs/<name>.yaml, and every stage that takes data
(thoughts, predict, reflect, sft, training) reaches it through overrides alone; one strategy file serves every
pairs set, because SFT sets live in data/sft/<data_name>/<strategy>/ (conf/sft.yaml, conf/dataset/sft.yaml)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
STAGES = ["nli_cot.training.train", "nli_cot.inference.predict", "nli_cot.teacher.thoughts",
          "nli_cot.teacher.reflect", "nli_cot.teacher.sft", "nli_cot.orchestration.study"]


@pytest.fixture
def new_pairs(tmp_path):
    """A temp conf dir holding exactly one new file, pairs/mini.yaml, and the search-path override that adds it."""
    data = tmp_path / "mini.csv"
    data.write_text("id,premise,hypothesis,label\na,A man sleeps.,A person rests.,1\nb,A dog runs.,A cat sits.,0\n")
    extra = tmp_path / "conf"
    (extra / "pairs").mkdir(parents=True)
    (extra / "pairs" / "mini.yaml").write_text(
        f"defaults:\n  - pairs_schema\n  - _self_\nname: mini\npath: {data}\nformat: csv\n")
    for name in STAGES:
        importlib.import_module(name)  # registers the schemas
    return f"hydra.searchpath=[file://{extra}]", extra


def app(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_a_new_pairs_file_is_all_a_new_data_set_needs(new_pairs):
    from nli_cot.core.pairs import load_pairs

    searchpath, extra = new_pairs
    thoughts = app("thoughts", [searchpath, "pairs=mini"])
    assert [p.id for p in load_pairs(thoughts.pairs).pairs] == ["a", "b"]
    assert thoughts.output == "data/thoughts/mini.jsonl"
    predict = app("predict", [searchpath, "pairs=mini"])
    assert predict.output == f"outputs/predictions/{predict.model.name}/mini.jsonl"
    reflect = app("reflect", [searchpath, "data_name=mini"])
    assert (reflect.thoughts, reflect.output) == (thoughts.output, "data/reflections/mini.jsonl")
    for strategy in ["combined", "correct_only"]:
        sft = app("sft", [searchpath, f"sft_strategy={strategy}", "data_name=mini"])
        sources = {s.kind: s.path for s in sft.sft_strategy.sources}
        assert sources["correct"] == thoughts.output
        assert sources.get("reflected", reflect.output) == reflect.output
        assert sft.output_dir == f"data/sft/mini/{strategy}"
        train = app("config", [searchpath, f"dataset={strategy}", "dataset.data_name=mini"])
        assert train.dataset.train_path == f"{sft.output_dir}/train.jsonl"
        assert train.dataset.eval_path == f"{sft.output_dir}/dev.jsonl"
        assert sft.max_tokens == train.dataset.max_seq_length  # one budget, derived
    assert [p.relative_to(extra) for p in extra.rglob("*") if p.is_file()] == [Path("pairs/mini.yaml")]


@pytest.mark.parametrize("strategy", sorted(p.stem for p in (REPO / "conf" / "sft_strategy").glob("*.yaml")))
def test_every_strategy_has_a_training_set_at_its_output(strategy):
    for name in STAGES:
        importlib.import_module(name)
    for data_name in ["original_sample", "esnli_dev"]:
        sft = app("sft", [f"sft_strategy={strategy}", f"data_name={data_name}"])
        train = app("config", [f"dataset={strategy}", f"dataset.data_name={data_name}"])
        assert train.dataset.train_path == f"{sft.output_dir}/train.jsonl"
        assert sft.max_tokens == train.dataset.max_seq_length == 512


def test_the_budget_has_one_source():
    for name in STAGES:
        importlib.import_module(name)
    sft = app("sft", ["dataset.max_seq_length=640"])
    assert sft.max_tokens == 640
    study = app("study", ["data.max_tokens=640"])  # the SFT budget the study passes to sft and to training
    assert study.train.max_seq_length == 640
