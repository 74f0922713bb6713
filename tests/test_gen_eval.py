"""Generation-based dev evaluation: config checks, scoring, left-padded prompts, and a real training run."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, compose, run_inprocess

from nli_cot.core.metrics import macro_f1
from nli_cot.core.prompts import encode_prompt
from nli_cot.training.gen_eval import GenerationEval, config_problem, dev_subset, score

SAMPLE = REPO / "tests" / "fixtures" / "sft_sample.jsonl"
IDS = ["orig-0", "orig-17", "orig-85", "orig-51", "orig-68"]  # gold 1, 0, 0, 1, 0


@pytest.mark.parametrize(("overrides", "problem"), [
    ([], None),
    (["trainer.early_stopping_metric=eval/accuracy"], "needs generation-based eval"),
    (["trainer.gen_eval.enabled=true", "trainer.eval_every_n_steps=5", "trainer.gen_eval.every_n_steps=7"],
     "must be a positive multiple of trainer.eval_every_n_steps=5"),
    (["trainer.gen_eval.enabled=true", "trainer.eval_every_n_steps=5", "trainer.gen_eval.every_n_steps=10",
      "trainer.early_stopping_metric=eval/accuracy"], "needs accuracy at every evaluation"),
    (["trainer.gen_eval.enabled=true", "trainer.gen_eval.max_examples=0"], "max_examples must be > 0"),
    (["trainer.gen_eval.enabled=true", "trainer.early_stopping_metric=eval/f1", "trainer.early_stopping_mode=max"],
     None),
])
def test_config_problems(overrides: list[str], problem: str | None) -> None:
    found = config_problem(compose(overrides))
    assert found is None if problem is None else problem in found


def test_score_uses_the_shared_parser() -> None:
    texts = ['{"thought_process": "t", "predicted_label": 1}', '{"predicted_label": 0}', "no idea",
             "```json\n{\"thought_process\": \"t\", \"predicted_label\": \"1\"}\n```"]
    gold = [1, 1, 0, 1]
    got = score(gold, texts)
    # balanced accuracy by hand: recall of 1 = 2/3 (one "0"), recall of 0 = 0/1 (unparsed counts as wrong)
    assert got == {"eval/accuracy": 0.5, "eval/balanced_accuracy": (2 / 3 + 0) / 2,
                   "eval/f1": macro_f1(gold, [1, 0, None, 1]), "eval/parse_rate": 0.75}


def test_dev_subset_keeps_the_data_modules_order() -> None:
    records = dev_subset(SimpleNamespace(eval_path=None, train_path=str(SAMPLE)), [*IDS, "missing-id"], 4)
    assert [r["id"] for r in records] == IDS[:4]
    assert [r["label"] for r in records] == [1, 0, 0, 1]


class AnswerEverything(torch.nn.Module):
    """A stand-in for a PEFT model: generate() appends the same answer to every (left-padded) prompt."""

    def __init__(self, answer: list[int], vocab_size: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.answer = answer
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> torch.Tensor:
        self.seen.append((input_ids.clone(), attention_mask.clone()))
        return torch.cat([input_ids, torch.tensor([self.answer] * input_ids.shape[0])], dim=1)


def test_left_padded_greedy_answers_are_scored(mistral_tokenizer) -> None:
    prompt_cfg = compose(["model=tiny_mistral"]).prompt
    records = dev_subset(SimpleNamespace(eval_path=None, train_path=str(SAMPLE)), IDS, 5)
    answer = mistral_tokenizer.encode(' {"thought_process": "it follows", "predicted_label": 1}',
                                      add_special_tokens=False) + [mistral_tokenizer.eos_token_id]
    model = AnswerEverything(answer, len(mistral_tokenizer))
    callback = GenerationEval(records, prompt_cfg, mistral_tokenizer, every_n_steps=None, batch_size=2,
                              max_new_tokens=64)
    values = callback.evaluate(model)
    assert len(model.seen) == 3  # batches of 2, 2, 1
    for batch_no, (ids, mask) in enumerate(model.seen):
        for row in range(ids.shape[0]):
            rec = records[batch_no * 2 + row]
            prompt = encode_prompt(rec["premise"], rec["hypothesis"], prompt_cfg, mistral_tokenizer)
            pad = ids.shape[1] - len(prompt)
            assert ids[row, pad:].tolist() == prompt  # the training prompt, at the right edge
            assert mask[row].tolist() == [0] * pad + [1] * len(prompt)  # padding on the left only
    assert callback.last_texts == ['{"thought_process": "it follows", "predicted_label": 1}'] * 5
    assert values == {"eval/accuracy": 0.4, "eval/balanced_accuracy": 0.5,  # a constant answer: 0.5 by definition
                      "eval/f1": macro_f1([1, 0, 0, 1, 0], [1] * 5), "eval/parse_rate": 1.0}


@pytest.mark.slow
def test_training_logs_accuracy_and_picks_the_best_checkpoint_by_it(tmp_path: Path) -> None:
    proc = run_inprocess("nli_cot.train", [
        "+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=csv", "optimizer=adamw",
        "trainer.max_steps=2", "trainer.save_steps=1", "trainer.eval_every_n_steps=1",
        "trainer.per_device_batch_size=2", "trainer.grad_accum=1", "trainer.eval_batch_size=2",
        "dataset.max_train_examples=8", "dataset.max_eval_examples=4",
        "trainer.gen_eval.enabled=true", "trainer.gen_eval.max_examples=3", "trainer.gen_eval.batch_size=2",
        "trainer.gen_eval.max_new_tokens=6", "trainer.early_stopping_metric=eval/accuracy",
        "trainer.early_stopping_mode=max", f"hydra.run.dir={tmp_path}",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "Mistral_Thinking_Abl1"
    with (run / "logs" / "metrics.csv").open() as f:
        evals = [r for r in csv.DictReader(f) if r.get("eval/loss")]
    assert len(evals) == 2  # one per evaluation, each with the generation metrics beside the loss
    for row in evals:
        for key in ("eval/accuracy", "eval/balanced_accuracy", "eval/f1", "eval/parse_rate"):
            assert 0.0 <= float(row[key]) <= 1.0
    status = json.loads((run / "status.json").read_text())
    assert status["best"]["metric"] == "eval/accuracy"
    assert status["best"]["value"] == max(float(r["eval/accuracy"]) for r in evals)
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["best_metric"] == {"eval/accuracy": status["best"]["value"]}
    assert (run / state["best_checkpoint"] / "adapter_model.safetensors").is_file()
