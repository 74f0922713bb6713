"""dataset.loss_weight: up-weighting chosen completion tokens in the training loss (nli_cot.training.loss_weights).

- weight 1.0 (the default) leaves training bit-identical: no weights are built, the same losses come out;
- the weighted path with every weight 1 computes the plain loss (padded, padding-free, chunked, fused);
- a weight > 1 gives the closed form sum(w * ce) / sum(w), pulls the loss towards the marked tokens' CE, and one
  optimiser step on it lowers the marked tokens' CE more than a step on the plain loss;
- the right tokens are marked (markers and the label digit), and bad settings fail at start-up in one line.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import compose
from omegaconf import OmegaConf

from nli_cot.core.prompts import completion_text
from nli_cot.training.data import IGNORE_INDEX, NliDataModule, tokenize_records
from nli_cot.training.loss_weights import completion_token_weights, config_problem, marked_spans
from nli_cot.training.module import NliCotModule

RECORDS = [
    {"id": "a", "premise": "A poodle sleeps.", "hypothesis": "A dog sleeps.",
     "thought_process": "poodle -> dog: every poodle is a dog. So entailed.", "label": 1},
    {"id": "b", "premise": "Ann met Bo.", "hypothesis": "Bo met Ann.",
     "thought_process": "P: Ann met Bo. H: Bo met Ann. Different. So not entailed.", "label": 0},
    {"id": "c", "premise": "Ann has 7 cups.", "hypothesis": "Ann has at least 9 cups.",
     "thought_process": "7 vs at least 9: 7 is fewer than 9. So not entailed.", "label": 0},
    {"id": "d", "premise": "Bo does not sing.", "hypothesis": "It is not true that Bo sings.",
     "thought_process": "P means: Bo does not sing. H means: Bo does not sing. Same. So entailed.", "label": 1},
]
MARKERS = ["Same", "Different", "is fewer than", "every", "So entailed", "So not entailed"]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lw") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def _datamodule(sft_file, tokenizer, overrides: list[str]) -> NliDataModule:
    cfg = compose(["+experiment=abl1", "model=tiny_mistral", "dataset=sample", f"dataset.train_path={sft_file}",
                   f"dataset.eval_path={sft_file}", "trainer.per_device_batch_size=2", *overrides])
    dm = NliDataModule(cfg.dataset, cfg.trainer, cfg.prompt, tokenizer, seed=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def model(tiny_model_cfg, mistral_tokenizer):
    from nli_cot.models.modeling import attach_lora, load_base_model

    torch.manual_seed(0)
    base = load_base_model(tiny_model_cfg, mistral_tokenizer, for_training=True)
    peft_model = attach_lora(base, compose(["lora=default"]).lora)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft_model.eval()  # dropout off: two forwards are comparable


def _loss(model, dm: NliDataModule, loss_impl: str) -> torch.Tensor:
    module = NliCotModule(model, None, loss_impl=loss_impl, ce_chunk_tokens=7)
    with torch.no_grad():
        return module.compute_loss(dm._collate_train(dm.train_set))


LAYOUTS = {  # the padded card path, padding-free with the model's loss, and the demo's fast path (+ fused)
    "padded": ["trainer=default"],
    "packed": ["trainer=default", "trainer.padding_free=true"],
    "chunked": ["trainer=fast", "trainer.grad_accum=1"],
    "fused": ["trainer=fast", "trainer.grad_accum=2"],
}


def _impl(layout: str) -> str:
    return "chunked" if layout in ("chunked", "fused") else "model"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weight_one_is_bit_identical_to_no_weighting(model, mistral_tokenizer, sft_file, layout) -> None:
    plain = _datamodule(sft_file, mistral_tokenizer, LAYOUTS[layout])
    one = _datamodule(sft_file, mistral_tokenizer, [*LAYOUTS[layout], "dataset.loss_weight=1.0",
                                                   f"dataset.loss_weight_markers=[{','.join(MARKERS)}]",
                                                   "dataset.loss_weight_label=true"])
    assert plain.train_set == one.train_set and "weights" not in one.train_set[0]
    assert torch.equal(_loss(model, plain, _impl(layout)), _loss(model, one, _impl(layout)))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weighted_path_with_no_marked_token_is_the_plain_loss(model, mistral_tokenizer, sft_file, layout) -> None:
    plain = _datamodule(sft_file, mistral_tokenizer, LAYOUTS[layout])
    unmarked = _datamodule(sft_file, mistral_tokenizer, [*LAYOUTS[layout], "dataset.loss_weight=4.0",
                                                        "dataset.loss_weight_markers=[zzzq]"])
    assert unmarked.stats["loss_weighted_tokens_per_example"] == 0
    got, want = _loss(model, unmarked, _impl(layout)), _loss(model, plain, _impl(layout))
    assert torch.allclose(got, want, atol=1e-6), (float(got), float(want))


def _per_token_ce_and_marks(model, dm_weighted: NliDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """CE of every learned token of every example, and whether it is marked, one example at a time."""
    ces, marks = [], []
    with torch.no_grad():
        for ex in dm_weighted.train_set:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor(ex["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            keep = labels != IGNORE_INDEX
            ces.append(F.cross_entropy(logits[keep], labels[keep], reduction="none"))
            marks.append(torch.tensor(ex["weights"][1:])[keep] != 1.0)
    return torch.cat(ces), torch.cat(marks)


@pytest.mark.parametrize("layout", ["padded", "packed", "chunked"])
def test_weight_above_one_gives_the_weighted_mean(model, mistral_tokenizer, sft_file, layout) -> None:
    w = 5.0
    dm = _datamodule(sft_file, mistral_tokenizer, [*LAYOUTS[layout], f"dataset.loss_weight={w}",
                                                  f"dataset.loss_weight_markers=[{','.join(MARKERS)}]",
                                                  "dataset.loss_weight_label=true"])
    ce, marked = _per_token_ce_and_marks(model, dm)
    assert 0 < int(marked.sum()) < marked.numel()
    want = (ce[~marked].sum() + w * ce[marked].sum()) / (int((~marked).sum()) + w * int(marked.sum()))
    got = _loss(model, dm, _impl(layout))
    assert torch.allclose(got, want, atol=1e-5), (float(got), float(want))
    plain = ce.mean()  # the loss moves from the plain mean towards the marked tokens' mean
    assert abs(float(got - ce[marked].mean())) < abs(float(plain - ce[marked].mean()))


def test_one_step_on_the_weighted_loss_lowers_the_marked_tokens_more(model, mistral_tokenizer, sft_file) -> None:
    overrides = [*LAYOUTS["chunked"], f"dataset.loss_weight_markers=[{','.join(MARKERS)}]",
                 "dataset.loss_weight_label=true"]
    dms = {w: _datamodule(sft_file, mistral_tokenizer, [*overrides, f"dataset.loss_weight={w}"]) for w in (1.0001, 8.0)}
    ce0, marked = _per_token_ce_and_marks(model, dms[8.0])
    drops = {}
    for w, dm in dms.items():
        trained = copy.deepcopy(model)
        params = [p for p in trained.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5)
        NliCotModule(trained, None, loss_impl="chunked").compute_loss(dm._collate_train(dm.train_set)).backward()
        opt.step()
        ce1, _ = _per_token_ce_and_marks(trained, dm)
        drops[w] = float(ce0[marked].mean() - ce1[marked].mean())
    assert drops[8.0] > drops[1.0001] > 0, drops


def test_markers_and_the_label_mark_their_tokens(mistral_tokenizer) -> None:
    prompt = compose(["prompt=card"]).prompt
    rec = RECORDS[1]
    ex = tokenize_records([rec], mistral_tokenizer, prompt, 512, False,
                          weighting=OmegaConf.create({"loss_weight": 3.0, "loss_weight_markers": ["Different"],
                                                      "loss_weight_label": True})).examples[0]
    marked = [t for t, w in zip(ex["input_ids"], ex["weights"], strict=True) if w == 3.0]
    assert mistral_tokenizer.decode(marked).replace(" ", "") == "Different0"
    assert len(ex["weights"]) == len(ex["input_ids"]) and ex["weights"][-1] == 1.0  # EOS keeps 1
    text = completion_text(rec["thought_process"], rec["label"])
    assert text[slice(*marked_spans(text, [], True)[0])] == "0"
    with pytest.raises(ValueError, match="fast tokenizer"):
        completion_token_weights(text, [], object(), 3.0, ["x"], False)


@pytest.mark.parametrize(("settings", "message"), [
    ({"loss_weight": 0.0}, "must be > 0"),
    ({"loss_weight": 2.0}, "weights no token"),
    ({"loss_weight": 2.0, "loss_weight_markers": [""]}, "non-empty strings"),
])
def test_bad_settings_are_named(settings, message) -> None:
    cfg = OmegaConf.create({"loss_weight": 1.0, "loss_weight_markers": [], "loss_weight_label": False, **settings})
    assert message in (config_problem(cfg) or "")
    assert config_problem(OmegaConf.create({"loss_weight": 2.0, "loss_weight_markers": [],
                                            "loss_weight_label": True})) is None


def test_train_cli_rejects_a_weight_that_weighs_nothing(tmp_path) -> None:
    from conftest import run_inprocess

    proc = run_inprocess("nli_cot.train", ["+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=none",
                                           "dataset.loss_weight=3", f"hydra.run.dir={tmp_path}",
                                           f"output_dir={tmp_path}"])
    assert proc.returncode != 0
    assert "dataset.loss_weight=3.0 weights no token" in proc.stderr + proc.stdout
