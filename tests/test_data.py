"""Completion-only labels, the EOS label, padding and padding-free collation, pinned prompt ids."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from nli_cot.core.prompts import completion_text, encode_example, prompt_text, user_message
from nli_cot.training.data import (
    IGNORE_INDEX,
    DataError,
    ResumableBatchSampler,
    collate_padded,
    collate_padding_free,
    in_dev_split,
    read_sft_records,
    tokenize_records,
)

RECORD = {"id": "x1", "premise": "All birds can fly.", "hypothesis": "Penguins can fly.",
          "thought_process": "Step 1: penguins are birds. Step 2: so they fly.", "label": 1}


@pytest.fixture(scope="module")
def card_prompt():
    return compose(["prompt=card"]).prompt


def test_vocabulary_is_not_resized_by_padding(mistral_tokenizer) -> None:
    assert len(mistral_tokenizer) == 32768
    assert mistral_tokenizer.pad_token_id == mistral_tokenizer.unk_token_id == 0
    assert (mistral_tokenizer.bos_token_id, mistral_tokenizer.eos_token_id) == (1, 2)


def test_card_prompt_text_is_the_cards(card_prompt) -> None:
    text = prompt_text(RECORD["premise"], RECORD["hypothesis"], card_prompt)
    assert text == (
        "[INST] Premise: All birds can fly.\nHypothesis: Penguins can fly.\n\nDetermine if the hypothesis can be "
        "inferred from the premise. Write out your thought process step by step, then provide your final answer "
        "(1 for entailment, 0 for no entailment). Respond in JSON format with 'thought_process' and "
        "'predicted_label' keys. [/INST]"
    )


def test_prompt_ids_are_pinned_for_both_inst_spellings(mistral_tokenizer) -> None:
    card = compose(["prompt=card"]).prompt
    v3 = compose(["prompt=mistral_v3"]).prompt
    a = encode_example("A b.", "C d.", completion_text(None, 1), card, mistral_tokenizer)
    b = encode_example("A b.", "C d.", completion_text(None, 1), v3, mistral_tokenizer)
    # <s> [INST] once each, at the start; [/INST] last; the two spellings differ only by the space before it.
    assert a.prompt_ids[:2] == [1, 3] and b.prompt_ids[:2] == [1, 3]
    assert a.prompt_ids[-1] == 4 and b.prompt_ids[-1] == 4
    assert a.prompt_ids.count(1) == 1 and a.prompt_ids.count(3) == 1
    assert a.prompt_ids[:-2] == b.prompt_ids[:-1]
    assert a.prompt_ids[-2] == mistral_tokenizer.convert_tokens_to_ids("▁")
    # Pinned against sentencepiece itself, the reference implementation of the v3 tokenizer.
    assert a.prompt_ids[:8] == [1, 3, 8577, 1632, 29515, 1098, 1055, 29491]
    sp = _sentencepiece_v3()
    assert a.prompt_ids[2:-2] == sp.encode(user_message("A b.", "C d.", card))
    assert a.completion_ids == sp.encode('{"predicted_label": 1}') + [2]
    assert a.completion_ids[:-1] == [10598, 11245, 11705, 29498, 2327, 2032, 29473, 29508, 29520]


def _sentencepiece_v3():
    import importlib.util
    from pathlib import Path

    import sentencepiece

    from nli_cot.models.modeling import MISTRAL_V3_SPM

    data = Path(importlib.util.find_spec("mistral_common").submodule_search_locations[0]) / "data"
    return sentencepiece.SentencePieceProcessor(model_file=str(data / MISTRAL_V3_SPM))


def test_labels_mask_the_prompt_and_keep_the_completion_and_eos(mistral_tokenizer, card_prompt) -> None:
    ts = tokenize_records([RECORD], mistral_tokenizer, card_prompt, max_len=512, label_only=False)
    ex = ts.examples[0]
    rendered = encode_example(RECORD["premise"], RECORD["hypothesis"],
                              completion_text(RECORD["thought_process"], 1), card_prompt, mistral_tokenizer)
    n_prompt = len(rendered.prompt_ids)
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["labels"][-1] == mistral_tokenizer.eos_token_id
    decoded = mistral_tokenizer.decode(ex["input_ids"][n_prompt:-1])
    assert decoded.strip() == completion_text(RECORD["thought_process"], 1)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_eos_label_survives_padding(mistral_tokenizer, card_prompt, pad_is_eos: bool) -> None:
    short = dict(RECORD, id="s", thought_process="Short.")
    ts = tokenize_records([RECORD, short], mistral_tokenizer, card_prompt, 512, False)
    eos = mistral_tokenizer.eos_token_id
    pad = eos if pad_is_eos else mistral_tokenizer.pad_token_id
    batch = collate_padded(ts.examples, pad)
    for row, ex in enumerate(ts.examples):
        n = len(ex["input_ids"])
        assert batch["labels"][row, n - 1].item() == eos  # the EOS is learned even when pad == eos
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()


def test_padding_free_rows_restart_positions(mistral_tokenizer, card_prompt) -> None:
    ts = tokenize_records([RECORD, dict(RECORD, id="b")], mistral_tokenizer, card_prompt, 512, False)
    batch = collate_padding_free(ts.examples)
    n0 = len(ts.examples[0]["input_ids"])
    assert batch["input_ids"].shape == (1, n0 + len(ts.examples[1]["input_ids"]))
    assert batch["position_ids"][0, 0] == 0 and batch["position_ids"][0, n0] == 0
    assert batch["labels"][0, n0] == IGNORE_INDEX  # the next example's BOS is never a target
    assert "attention_mask" not in batch


def test_too_long_examples_are_dropped_and_counted(mistral_tokenizer, card_prompt) -> None:
    long = dict(RECORD, id="long", thought_process="word " * 600)
    ts = tokenize_records([RECORD, long], mistral_tokenizer, card_prompt, max_len=512, label_only=False)
    assert [e["id"] for e in ts.examples] == ["x1"] and ts.dropped_too_long == 1


def test_label_only_completion(mistral_tokenizer, card_prompt) -> None:
    ex = tokenize_records([RECORD], mistral_tokenizer, card_prompt, 512, label_only=True).examples[0]
    tail = mistral_tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX][:-1]).strip()
    assert tail == '{"predicted_label": 1}'


def test_dev_split_is_a_stable_hash_of_the_id() -> None:
    ids = [f"id-{i}" for i in range(2000)]
    dev = [i for i in ids if in_dev_split(i, 0.1, 0)]
    assert 150 < len(dev) < 250
    assert dev == [i for i in reversed(ids) if in_dev_split(i, 0.1, 0)][::-1]
    assert dev != [i for i in ids if in_dev_split(i, 0.1, 1)]


def test_batch_order_is_a_function_of_seed_and_epoch_and_skips_on_resume() -> None:
    s = ResumableBatchSampler(list(range(50)), 4, seed=7, shuffle=True, group_by_length=False)
    s.set_epoch(2)
    full = list(s)
    s.skip = 5
    assert list(s) == full[5:]
    assert list(s) == full  # the skip applies once
    s.set_epoch(3)
    assert list(s) != full
    assert sorted(i for b in full for i in b) == list(range(50))


def test_bad_records_are_named_by_line_and_field(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "premise": "p", "hypothesis": "h", "label": 1}\n'
                    '{"id": "b", "premise": "", "hypothesis": "h", "label": 0}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'premise'"):
        read_sft_records(str(path))
    path.write_text('{"id": "a", "premise": "p", "hypothesis": "h", "label": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'label' must be 0 or 1"):
        read_sft_records(str(path))


def test_loss_ignores_padding(mistral_tokenizer, card_prompt, tiny_model_cfg) -> None:
    """Padding changes nothing: the loss of a padded batch equals the token-weighted loss of its examples."""
    from nli_cot.models.modeling import load_base_model

    model = load_base_model(tiny_model_cfg, mistral_tokenizer).eval()
    short = dict(RECORD, id="s", thought_process="Short.")
    ts = tokenize_records([RECORD, short], mistral_tokenizer, card_prompt, 512, False)
    with torch.no_grad():
        padded = model(**collate_padded(ts.examples, mistral_tokenizer.pad_token_id)).loss
        per_ex = [(model(**collate_padded([ex], 0)).loss, sum(t != IGNORE_INDEX for t in ex["labels"][1:]))
                  for ex in ts.examples]
    weighted = sum(loss * n for loss, n in per_ex) / sum(n for _, n in per_ex)
    assert torch.allclose(padded, weighted, atol=1e-5)


def test_data_parallel_ranks_split_the_global_order() -> None:
    lengths = list(range(45))
    single = ResumableBatchSampler(lengths, 4, seed=3, shuffle=True, group_by_length=False)
    ranks = [ResumableBatchSampler(lengths, 4, seed=3, shuffle=True, group_by_length=False, num_replicas=2, rank=r)
             for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(1)
    global_batches = list(single)
    per_rank = [list(r) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == 6  # 12 batches, 6 a rank
    assert per_rank[0] == global_batches[0:12:2] and per_rank[1] == global_batches[1:12:2]
    assert not {i for b in per_rank[0] for i in b} & {i for b in per_rank[1] for i in b}
