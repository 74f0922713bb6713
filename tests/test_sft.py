"""SFT stage: strategies, filters, token budget with the real tokenizer, split, stats/plot; the original
sample's counts; the whole chain against the scripted server and with the tiny model as a local teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, compose, run_module
from fake_openai_server import FakeOpenAIServer

from nli_cot.core.parsing import parse_output
from nli_cot.core.prompts import completion_text, encode_example
from nli_cot.core.records import read_records
from nli_cot.teacher.reflect import run as run_reflect
from nli_cot.teacher.sft import Candidate, SftSource, cap, dedupe, detokenize, human_thought, id_hash, run
from nli_cot.teacher.thoughts import run as run_thoughts

FIX = REPO / "tests" / "fixtures" / "data"
SFT_FIELDS = ["id", "premise", "hypothesis", "thought_process", "label", "source"]


def sft_cfg(tmp_path, *extra):
    return compose([f"output_dir={tmp_path / 'sft'}", "plot=true", *extra], "sft")


def test_detokenize_esnli_text():
    assert detokenize("a man ca n't ride and sleep at once .") == "A man can't ride and sleep at once."
    assert (
        detokenize("two women hold packages ;  they are embracing .")
        == "Two women hold packages. They are embracing."
    )
    assert detokenize("it 's a dog ( a big one ) , see") == "It's a dog (a big one), see."


def test_human_thought_choices():
    src = SftSource(kind="human", path="x")
    exps = ["the dog is wet .", "", "a wet dog is a dog that got wet in the rain ."]
    assert (
        human_thought(exps, 1, src) == "The dog is wet. So the hypothesis can be inferred from the premise."
    )
    src.explanations = "longest"
    assert human_thought(exps, 0, src).startswith("A wet dog is a dog")
    src.explanations = "all"
    assert human_thought(exps, 0, src).count(".") == 3
    assert human_thought(["", "  "], 0, src) is None


def cand(i, p="p", h="h", label=1, src="correct"):
    return Candidate(str(i), p, h, "t", label, src)


def test_dedupe_by_id_and_normalised_text():
    kept, dropped = dedupe(
        [cand(1, "A b", "c"), cand(1, "x", "y"), cand(2, "a  B", "C"), cand(3, "a b", "c", label=0)]
    )
    assert [c.id for c in kept] == ["1"]
    assert [why for _, why in dropped] == [
        "duplicate_id",
        "duplicate_pair",
        "duplicate_pair_conflicting_label",
    ]


def test_cap_is_deterministic_and_keeps_order():
    cands = [cand(i, p=str(i)) for i in range(50)]
    a, b = cap(cands, 10, 0), cap(list(reversed(cands)), 10, 0)
    assert len(a) == 10 and {c.id for c in a} == {c.id for c in b}
    assert [int(c.id) for c in a] == sorted(int(c.id) for c in a)
    assert cap(cands, None, 0) == cands


def test_split_hash_is_trainings_hash():
    from nli_cot.training.data import in_dev_split

    for i in range(200):
        assert (id_hash(f"id-{i}", 3) < 0.1) == in_dev_split(f"id-{i}", 0.1, 3)


# ----------------------------------------------------------------------------------- the original sample


def check_outputs(out: Path, stats: dict) -> list[dict]:
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    dev = [json.loads(x) for x in (out / "dev.jsonl").read_text().splitlines()]
    for rec in train + dev:
        assert list(rec) == SFT_FIELDS and rec["label"] in (0, 1)
    assert stats["train"]["count"] == len(train) and stats["dev"]["count"] == len(dev)
    assert stats["total"] == len(train) + len(dev)
    assert not {r["id"] for r in train} & {r["id"] for r in dev}
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "stats.json").read_text()) == stats
    return train + dev


def test_original_sample_combined_and_correct_only(tmp_path, shared_data, mistral_tokenizer):
    """The counts the source project's files imply: 100 thoughts, 67 correct, 33 reflections."""
    common = [f"data_root={shared_data}"]
    stats = run(sft_cfg(tmp_path / "c", "sft_strategy=original_sample_combined", *common), mistral_tokenizer)
    recs = check_outputs(tmp_path / "c" / "sft", stats)
    assert stats["sources"][0] == {
        "kind": "correct",
        "path": str(shared_data / "original-sample/sample_thoughts.json"),
        "read": 100,
        "kept": 67,
        "rejected": {"wrong_label": 33},
    }
    assert stats["sources"][1]["read"] == 33 and stats["sources"][1]["kept"] == 32
    assert stats["sources"][1]["rejected"] == {"label_mismatch": 1}  # id 90: the reflection still says 0
    assert stats["total"] == 99 and stats["dropped"] == {}  # nothing over 512 tokens, no duplicates
    assert (
        sum(r["source"] == "correct" for r in recs) == 67
        and sum(r["source"] == "reflected" for r in recs) == 32
    )
    assert sum(r["label"] for r in recs) == 53  # 54 entailment pairs minus the dropped id 90
    assert stats["tokens"]["max"] <= 512 and stats["tokens"]["min"] > 100

    gold = run(
        sft_cfg(
            tmp_path / "g",
            "sft_strategy=original_sample_combined",
            "sft_strategy.reflected_mismatch=gold",
            *common,
        ),
        mistral_tokenizer,
    )
    assert gold["total"] == 100 and gold["train"]["labels"]["1"] + gold["dev"]["labels"]["1"] == 54

    only = run(
        sft_cfg(tmp_path / "o", "sft_strategy=original_sample_correct_only", *common), mistral_tokenizer
    )
    recs = check_outputs(tmp_path / "o" / "sft", only)
    assert only["total"] == 67 and {r["source"] for r in recs} == {"correct"}
    by_id = {r["id"]: r for r in recs}
    assert by_id["original-sample-17"]["thought_process"].startswith("step 1: the new dialogue on freedom")


def test_deterministic_bytes_and_trainings_reader(tmp_path, shared_data, mistral_tokenizer):
    from nli_cot.training.data import read_sft_records

    args = ["sft_strategy=original_sample_combined", f"data_root={shared_data}", "plot=false"]
    run(sft_cfg(tmp_path / "a", *args), mistral_tokenizer)
    run(sft_cfg(tmp_path / "b", *args), mistral_tokenizer)
    for name in ("train.jsonl", "dev.jsonl", "dropped.jsonl"):
        assert (tmp_path / "a/sft" / name).read_bytes() == (tmp_path / "b/sft" / name).read_bytes()
    assert len(read_sft_records(str(tmp_path / "a/sft/train.jsonl"))) > 80


def test_token_budget_drops_and_counts(tmp_path, shared_data, mistral_tokenizer):
    cfg = sft_cfg(
        tmp_path,
        "sft_strategy=original_sample_correct_only",
        f"data_root={shared_data}",
        "max_tokens=240",
        "plot=false",
    )
    stats = run(cfg, mistral_tokenizer)
    prompt = compose(["prompt=card"], "sft").prompt
    from nli_cot.teacher.stage_runner import import_source_thoughts

    lengths = []
    for r in import_source_thoughts(str(shared_data / "original-sample/sample_thoughts.json")):
        if r["correct"]:
            ex = encode_example(
                r["premise"],
                r["hypothesis"],
                completion_text(r["thought_process"], r["label"]),
                prompt,
                mistral_tokenizer,
            )
            lengths.append(len(ex.prompt_ids) + len(ex.completion_ids))
    over = sum(n > 240 for n in lengths)
    assert 0 < over < 67
    assert stats["dropped"] == {"over_token_budget": over} and stats["total"] == 67 - over
    dropped = read_records(tmp_path / "sft" / "dropped.jsonl")
    assert len(dropped) == over and all(d["tokens"] > 240 for d in dropped)


def test_human_strategy_on_a_fixture(tmp_path, mistral_tokenizer):
    cfg = sft_cfg(
        tmp_path,
        "sft_strategy=human",
        f"sft_strategy.sources.0.path={FIX / 'esnli_tiny.jsonl'}",
        "dev_fraction=0",
    )
    stats = run(cfg, mistral_tokenizer)
    recs = read_records(tmp_path / "sft" / "train.jsonl")
    assert [r["id"] for r in recs] == ["esnli-t-0", "esnli-t-1"]
    assert stats["sources"][0]["rejected"] == {"no_explanation": 1}
    assert recs[1]["thought_process"] == (
        "A man can't be riding a bike and sleeping at the same time. So the hypothesis cannot be inferred from the premise."
    )
    assert recs[0]["source"] == "human" and recs[0]["label"] == 1


def test_human_strategy_on_esnli_dev(tmp_path, shared_data, mistral_tokenizer):
    cfg = sft_cfg(
        tmp_path,
        "sft_strategy=human",
        f"data_root={shared_data}",
        "sft_strategy.sources.0.max_examples=300",
        "plot=false",
    )
    stats = run(cfg, mistral_tokenizer)
    assert stats["sources"][0]["read"] == 9842 and stats["sources"][0]["kept"] == 300
    assert stats["sources"][0]["rejected"] == {"over_max_examples": 9542}
    assert stats["total"] + sum(stats["dropped"].values()) == 300


def test_missing_input_is_a_one_line_cli_error(tmp_path):
    proc = run_module(
        "nli_cot.sft",
        [
            "sft_strategy=combined",
            f"thoughts_dir={tmp_path}",
            f"output_dir={tmp_path / 'o'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err == [
        f"error: {tmp_path}/original_sample.jsonl: no such file (correct source; build it with its stage first)"
    ]


# ----------------------------------------------------------------------------------------- config wiring


@pytest.mark.parametrize(
    "name",
    [
        "combined",
        "correct_only",
        "human",
        "combined_human",
        "original_sample_combined",
        "original_sample_correct_only",
    ],
)
def test_dataset_configs_point_at_the_sft_outputs(name):
    train_cfg = compose([f"dataset={name}"])
    sft = compose([f"sft_strategy={name}"], "sft")
    assert train_cfg.dataset.train_path == f"{sft.output_dir}/train.jsonl"
    assert train_cfg.dataset.eval_path == f"{sft.output_dir}/dev.jsonl"
    assert train_cfg.dataset.max_seq_length == sft.max_tokens == 512


@pytest.mark.parametrize(
    "experiment, name", [("abl0_1", "combined"), ("abl0_2", "combined"), ("abl1", "correct_only")]
)
def test_card_ablations_use_these_sets(experiment, name):
    assert compose([f"+experiment={experiment}"]).dataset.train_path == f"data/sft/original_sample/{name}/train.jsonl"


# ----------------------------------------------------------------------------------------- whole chains


def chain_overrides(tmp_path, teacher: list[str]) -> tuple[list[str], list[str], list[str]]:
    pairs = ["pairs=csv", f"pairs.path={FIX / 'pairs_ok.csv'}", "pairs.columns.id=id", "pairs.id_prefix=''"]
    thoughts = [*teacher, *pairs, f"output={tmp_path / 'thoughts/chain.jsonl'}", "progress=false"]
    reflect = [
        *teacher,
        "data_name=chain",
        f"thoughts={tmp_path / 'thoughts/chain.jsonl'}",
        f"output={tmp_path / 'reflections/chain.jsonl'}",
        "progress=false",
    ]
    sft = [
        "data_name=chain",
        f"thoughts_dir={tmp_path / 'thoughts'}",
        f"reflections_dir={tmp_path / 'reflections'}",
        "dev_fraction=0",
    ]
    return thoughts, reflect, sft


def test_chain_against_the_scripted_server(tmp_path, mistral_tokenizer):
    # pairs_ok.csv gold: p1 1, p2 0, p3 1, p4 0. Teacher: p1 right, p2 wrong, p3 unparseable, p4 right after a 500.
    script = {
        "A man is performing music.": [{"label": 1}],
        "A cat sleeps indoors.": [{"label": 1}, {"label": 0}],  # reflection fixes it
        "Children are at the beach.": [{"content": "?"}, {"label": 0}],  # reflection still disagrees
        "A woman is asleep.": [{"status": 500}, {"label": 0}],
    }
    with FakeOpenAIServer(script) as server:
        teacher = ["teacher=fake", f"teacher.base_url={server.url}"]
        t_args, r_args, s_args = chain_overrides(tmp_path, teacher)
        t = run_thoughts(compose(t_args, "thoughts"))
        r = run_reflect(compose(r_args, "reflect"))
    assert t["file"]["correct"] == 2 and t["file"]["parse_failures"] == 1
    assert r["file"]["records"] == 2 and r["file"]["agree"] == 1 and r["file"]["disagree"] == 1
    combined = run(sft_cfg(tmp_path / "c", "sft_strategy=combined", *s_args), mistral_tokenizer)
    only = run(sft_cfg(tmp_path / "o", "sft_strategy=correct_only", *s_args), mistral_tokenizer)
    assert combined["total"] == 3 and combined["train"]["per_source"] == {"correct": 2, "reflected": 1}
    assert only["total"] == 2
    recs = {x["id"]: x for x in read_records(tmp_path / "c" / "sft" / "train.jsonl")}
    assert (
        set(recs) == {"p1", "p2", "p4"} and recs["p2"]["label"] == 0 and recs["p2"]["source"] == "reflected"
    )


def test_chain_with_the_tiny_model_as_local_teacher(tmp_path, mistral_tokenizer):
    """End to end on CPU with a real (random) transformers model: every stage runs and its stats agree
    with the records it wrote, which agree with the parser."""
    teacher = ["teacher=local_tiny", "teacher.max_tokens=12", "teacher.batch_size=4"]
    t_args, r_args, s_args = chain_overrides(tmp_path, teacher)
    t = run_thoughts(compose(t_args, "thoughts"))
    thoughts = read_records(tmp_path / "thoughts/chain.jsonl")
    assert len(thoughts) == 4 and t["run"]["done"] == 4
    for rec in thoughts:
        parsed = parse_output(rec["raw"])
        assert (rec["parse_ok"], rec["predicted_label"]) == (parsed.ok, parsed.label)
        assert rec["teacher"] == "local:tiny_mistral" and 1 <= rec["completion_tokens"] <= 12
    assert t["file"]["parse_failures"] == sum(not r["parse_ok"] for r in thoughts)
    assert t["file"]["correct"] == sum(bool(r["correct"]) for r in thoughts)
    r = run_reflect(compose(r_args, "reflect"))
    needing = sum(1 for x in thoughts if not x["parse_ok"] or not x["correct"])
    assert r["selected"] == r["run"]["done"] == needing
    again = run_thoughts(compose(t_args, "thoughts"))
    assert again["run"]["done"] == 0 and again["run"]["already_done"] == 4
    stats = run(sft_cfg(tmp_path, "sft_strategy=combined", *s_args), mistral_tokenizer)
    reflections = read_records(tmp_path / "reflections/chain.jsonl")
    expected = sum(bool(x["correct"]) for x in thoughts) + sum(
        bool(x["agrees"]) and bool(x["improved_thought_process"]) for x in reflections
    )
    assert stats["total"] == expected
