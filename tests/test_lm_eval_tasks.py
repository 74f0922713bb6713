"""The lm-evaluation-harness tasks shipped in nli_cot/lm_eval_tasks: the filter reads labels with nli_cot.core.parsing,
the tasks load our data files with the project's pair configs and prompt, and on the tiny model (CPU) lm_eval with an
adapter scores its generations exactly as nli_cot.evaluate scores the same generations, and differently from the
base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, compose, run_inprocess, run_module

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra `harness`: pip install -e '.[harness]'")

TASKS = REPO / "nli_cot" / "lm_eval_tasks"
N_PAIRS = 30


def _utils():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nli_cot_lm_eval_utils", TASKS / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_filter_reads_labels_with_nli_cot_parsing() -> None:
    from nli_cot.core.parsing import parse_output

    utils = _utils()
    outputs = [
        ' {"thought_process": "Step 1: ...", "predicted_label": 1}',
        '{"thought_process": "no", "predicted_label": 0',  # truncated: the parser's rescue rule
        "Pimir Биография inspir",  # garbage
        "The hypothesis is entailed by the premise.",  # a conclusion sentence
    ]
    filtered = utils.ParseLabelFilter().apply([[o] for o in outputs], [{}] * len(outputs))
    expected = [[str(parse_output(o).label) if parse_output(o).label is not None else "unparsed"] for o in outputs]
    assert filtered == expected == [["1"], ["0"], ["unparsed"], ["1"]]
    assert utils.process_results({"label": 1}, ["1"]) == {"acc": 1.0, "macro_f1": (1, 1), "parse_rate": 1.0}
    assert utils.process_results({"label": 0}, ["unparsed"]) == {"acc": 0.0, "macro_f1": (0, None), "parse_rate": 0.0}
    from nli_cot.core.metrics import macro_f1

    items = [(1, 1), (0, None), (0, 0), (1, 0), (0, 1)]
    assert utils.macro_f1(items) == macro_f1([g for g, _ in items], [p for _, p in items])


def test_prompt_and_data_are_the_projects(shared_data: Path) -> None:
    import nli_cot.inference.predict  # noqa: F401  (registers the predict and pairs schemas)
    from nli_cot.core.pairs import load_pairs
    from nli_cot.core.prompts import prompt_text

    utils = _utils()
    doc = {"premise": "A dog runs .", "hypothesis": "An animal moves ."}
    assert utils.doc_to_text(doc) == prompt_text(doc["premise"], doc["hypothesis"], compose(["prompt=card"]).prompt)
    for loader, overrides in ((utils.load_rte_dev, ["pairs=rte", "pairs.path=${data_root}/rte/dev.jsonl"]),
                              (utils.load_mnli_dev_matched, ["pairs=mnli"]),
                              (utils.load_esnli_test, ["pairs=esnli", "pairs.path=${data_root}/esnli/test.jsonl"])):
        ds = loader(data_root=str(shared_data), limit=7, version=1.0)["test"]
        pairs = load_pairs(compose([*overrides, f"data_root={shared_data}", "pairs.limit=7"], "predict").pairs).pairs
        assert ds["id"] == [p.id for p in pairs] and ds["label"] == [p.label for p in pairs]
        assert ds["premise"] == [p.premise for p in pairs]


def test_task_yamls_register() -> None:
    from lm_eval.tasks import TaskManager

    # Only our folder is indexed here (~1 s instead of ~12 s for the harness's thousands of built-in yamls); beside
    # the built-ins, as `make lm-eval` runs them, they register in test_make_target_command_line_runs below.
    tm = TaskManager(include_path=str(TASKS), include_defaults=False)
    assert {"nli_cot_esnli", "nli_cot_mnli", "nli_cot_rte"} <= set(tm.all_tasks)


def test_harness_prompt_ids_are_nli_cot_prompt_ids(tiny_model_cfg, mistral_tokenizer) -> None:
    """With add_bos_token=True the harness feeds the model exactly nli_cot.core.prompts.encode_prompt's ids."""
    from lm_eval.models.huggingface import HFLM

    from nli_cot.core.prompts import encode_prompt
    from nli_cot.models.modeling import resolve_model_path

    utils = _utils()
    lm = HFLM(pretrained=resolve_model_path(tiny_model_cfg, mistral_tokenizer), add_bos_token=True, device="cpu",
              dtype="float32")
    prompt = compose(["prompt=card"]).prompt
    for doc in ({"premise": "A dog runs .", "hypothesis": "An animal moves ."},
                {"premise": "Two men , one in a hat , sit on a bench .", "hypothesis": "Nobody is outside"}):
        ids, _ = lm.tok_batch_encode([utils.doc_to_text(doc)])
        assert ids[0].tolist() == encode_prompt(doc["premise"], doc["hypothesis"], prompt, mistral_tokenizer)


# ----------------------------------------------------------------- the harness end to end on the tiny model

# A label-only adapter that learns the answer's form in 40 CPU steps (measured: RTE parse rate 100% on 30 pairs):
# LoRA on the output layer and the MLPs of the tiny random model, short e-SNLI pairs, constant lr.
STEPS = 40
ADAPTER_ARGS = [
    "+experiment=abl1", "model=tiny_mistral", "dataset=sample", "dataset.label_only=true", "logger=csv",
    "trainer.per_device_batch_size=8", "trainer.grad_accum=1", "trainer.fuse_grad_accum=false",
    "trainer.eval_batch_size=16", "trainer.log_every_n_steps=10", f"trainer.save_steps={STEPS}",
    f"trainer.eval_every_n_steps={STEPS}", "trainer.early_stopping_patience=null", "optimizer.name=adamw",
    "optimizer.lr=2e-2", "optimizer.scheduler=constant", "lora.dropout=0", "lora.r=32", "lora.alpha=64",
    "lora.target_modules=[lm_head,gate_proj,up_proj,down_proj]", f"trainer.max_steps={STEPS}", "run_name=label_only",
]


def _short_sft(shared_data: Path, path: Path, n: int = 160) -> None:
    with (shared_data / "esnli" / "dev.jsonl").open() as f:
        rows = [json.loads(next(f)) for _ in range(400)]
    rows = sorted(rows, key=lambda r: len(r["premise"]) + len(r["hypothesis"]))[:n]
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "premise": r["premise"], "hypothesis": r["hypothesis"],
                                "thought_process": None, "label": r["label"]}) + "\n")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, shared_data: Path) -> Path:
    tmp = tmp_path_factory.mktemp("lm_eval")
    _short_sft(shared_data, tmp / "sft.jsonl")
    proc = run_inprocess("nli_cot.train", ADAPTER_ARGS + [f"dataset.train_path={tmp / 'sft.jsonl'}",
                                                      f"hydra.run.dir={tmp / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run" / "label_only" / f"checkpoint-{STEPS}"


def _harness(base: str, adapter: Path | None, tm) -> dict:
    args = f"pretrained={base},add_bos_token=True,dtype=float32" + (f",peft={adapter}" if adapter else "")
    return lm_eval.simple_evaluate(model="hf", model_args=args, tasks=["nli_cot_rte"], limit=N_PAIRS,
                                   task_manager=tm, gen_kwargs="max_gen_toks=24", batch_size=8, device="cpu",
                                   log_samples=True)


@pytest.mark.slow
def test_harness_scores_equal_nli_cot_evaluate_and_see_the_adapter(adapter: Path, shared_data: Path, tmp_path: Path,
                                                                   tiny_model_cfg, mistral_tokenizer) -> None:
    from lm_eval.tasks import TaskManager

    from nli_cot.evaluation.evaluate import run as evaluate
    from nli_cot.models.modeling import resolve_model_path

    base = resolve_model_path(tiny_model_cfg, mistral_tokenizer)
    # One task index for both runs, of our folder only: beside the harness's thousands of built-in yamls it took ~13 s
    # a run (one thread). Registering beside the built-ins, as `make lm-eval` does, is test_make_target_command_line_runs.
    tm = TaskManager(include_path=str(TASKS), include_defaults=False, metadata={"data_root": str(shared_data)})
    scores = {}
    for name, ad in (("base", None), ("adapter", adapter)):
        out = _harness(base, ad, tm)
        res = out["results"]["nli_cot_rte"]
        samples = out["samples"]["nli_cot_rte"]
        assert len(samples) == N_PAIRS
        # The same generations as nli_cot.predict records, scored by nli_cot.evaluation.evaluate.
        pred = tmp_path / f"{name}.jsonl"
        with pred.open("w") as f:
            for s in samples:
                f.write(json.dumps({"id": s["doc"]["id"], "label": s["doc"]["label"], "raw_text": s["resps"][0][0]})
                        + "\n")
        m = evaluate(compose([f"predictions={pred}", f"out_dir={tmp_path / name}", "plots=false"], "evaluate"))
        assert res["acc,nli_cot_parse"] == pytest.approx(m["accuracy"]["value"], abs=1e-12)
        assert res["macro_f1,nli_cot_parse"] == pytest.approx(m["macro_f1"]["value"], abs=1e-12)
        assert res["parse_rate,nli_cot_parse"] == pytest.approx(1 - m["parsing"]["failure_rate"], abs=1e-12)
        scores[name] = (res["acc,nli_cot_parse"], res["parse_rate,nli_cot_parse"])
    # The adapter was applied: the random base writes nothing parseable, the adapter writes labels.
    assert scores["base"][1] == 0.0 and scores["adapter"][1] > 0.5
    assert scores["base"] != scores["adapter"]


@pytest.mark.slow
def test_make_target_command_line_runs(shared_data: Path, tmp_path: Path, tiny_model_cfg, mistral_tokenizer) -> None:
    """`lm_eval ... --include_path nli_cot/lm_eval_tasks --tasks nli_cot_rte` as the Make target runs it."""
    from nli_cot.models.modeling import resolve_model_path

    base = str((REPO / resolve_model_path(tiny_model_cfg, mistral_tokenizer)).resolve())
    proc = run_module("lm_eval", ["--model", "hf", "--model_args", f"pretrained={base},add_bos_token=True",
                                  "--include_path", str(TASKS), "--tasks", "nli_cot_rte", "--limit", "4",
                                  "--gen_kwargs", "max_gen_toks=4", "--device", "cpu",
                                  "--metadata", json.dumps({"data_root": str(shared_data)}),
                                  "--output_path", str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nli_cot_rte" in proc.stdout and "parse_rate" in proc.stdout
