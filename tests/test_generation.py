"""Decoding: token texts, stop-at-close, the JSON grammar and constraint, label readout, voting.

The constraint is proven on random-weight models (the tiny Mistral with the real v3 sentencepiece tokenizer,
and a byte-level BPE / ChatML tokenizer trained here): every output must parse as clean JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nli_cot.core.parsing import ParseResult, parse_output
from nli_cot.core.prompts import encode_prompt
from nli_cot.models.generation import (
    JsonCloseStopping,
    JsonGrammar,
    frame_grammar,
    generate_batch,
    left_pad,
    majority_vote,
    vocab_index,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FRAME = {"open": '{"thought_process": "', "middle": '", "predicted_label": ', "close": "}"}


def decoding(**overrides: object):
    base = {
        "max_new_tokens": 64,
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "stop_at_json_close": True,
        "constrained": False,
        "label_probs": False,
        "json_frame": FRAME,
    }
    return OmegaConf.create({**base, **overrides})


def _pairs(n: int) -> list[dict]:
    path = DATA / "esnli" / "dev.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (expected <repo>/../shared/data)")
    return [json.loads(line) for line in path.open()][:n]


@pytest.fixture(scope="module")
def tiny(tiny_model_cfg, mistral_tokenizer):
    from nli_cot.models.modeling import load_base_model

    torch.manual_seed(0)
    return load_base_model(tiny_model_cfg, mistral_tokenizer).eval()


@pytest.fixture(scope="module")
def card_prompt():
    from conftest import compose

    return compose(["prompt=card"]).prompt


# ------------------------------------------------------------------------------------------- vocabulary


def test_token_texts_rebuild_the_text(mistral_tokenizer) -> None:
    vocab = vocab_index(mistral_tokenizer)
    text = ' {"thought_process": "step 1: the man\'s \\"dog\\" runs.", "predicted_label": 0}'
    ids = mistral_tokenizer.encode(text, add_special_tokens=False)
    assert "".join(vocab.text(i) for i in ids) == text
    assert vocab.texts[mistral_tokenizer.eos_token_id] is None  # special tokens have no text
    assert vocab.texts[mistral_tokenizer.convert_tokens_to_ids("[INST]")] is None
    for ch in '{}":, 01':
        assert ch in vocab.single_char


# ------------------------------------------------------------------------------------------- stop at close


def _feed(stop: JsonCloseStopping, ids: list[int], prompt_len: int) -> list[bool]:
    done = []
    for k in range(1, len(ids) + 1):
        row = torch.tensor([[0] * prompt_len + ids[:k]])
        done.append(bool(stop(row, None)[0]))
    return done


@pytest.mark.parametrize(
    ("text", "closes_after"),
    [
        (
            '{"thought_process": "a", "predicted_label": 1} trailing',
            '{"thought_process": "a", "predicted_label": 1}',
        ),
        (
            '{"thought_process": "a } inside {", "predicted_label": 0}',
            '{"thought_process": "a } inside {", "predicted_label": 0}',
        ),
        (
            '{"thought_process": "an \\"escaped\\" } quote", "predicted_label": 0}!',
            '{"thought_process": "an \\"escaped\\" } quote", "predicted_label": 0}',
        ),
        ('Sure: {"a": {"b": 1}} and more', 'Sure: {"a": {"b": 1}}'),
        ('{"thought_process": "never closes', None),
    ],
)
def test_json_close_stopping(mistral_tokenizer, text: str, closes_after: str | None) -> None:
    vocab = vocab_index(mistral_tokenizer)
    ids = mistral_tokenizer.encode(text, add_special_tokens=False)
    stop = JsonCloseStopping(vocab, batch_rows=1, prompt_len=3)
    done = _feed(stop, ids, prompt_len=3)
    if closes_after is None:
        assert not any(done)
        return
    first = done.index(True)
    assert "".join(vocab.text(i) for i in ids[: first + 1]).strip() == closes_after
    assert stop.state[0].closed_at == first + 1


# ------------------------------------------------------------------------------------------- grammar


def test_grammar_accepts_exactly_the_frame() -> None:
    g = JsonGrammar(" ", FRAME["open"], FRAME["middle"], FRAME["close"])
    good = ' {"thought_process": "it\'s \\"x\\" \\u00e9 \\n ok", "predicted_label": 1}'
    state = g.advance(g.start, good)
    assert state is not None and g.kind(state) == "end" and g.min_rest(state) == 1
    # char by char gives the same state
    s = g.start
    for ch in good:
        s = g.advance(s, ch)
        assert s is not None
    assert s == state
    for bad in (
        '{"thought_process": "x", "predicted_label": 1}',  # missing the completion prefix
        ' {"thought_process": "a\nb", "predicted_label": 1}',  # raw newline in the string
        ' {"thought_process": "\\x", "predicted_label": 1}',  # bad escape
        ' {"thought_process": "x", "predicted_label": 2}',  # label out of range
        ' {"thought_process": "x", "predicted_label": 1}}',  # text after the end
    ):
        assert g.advance(g.start, bad) is None, bad
    # shortest completion: '"' + middle + digit + "}" + EOS from inside the string
    inside = g.advance(g.start, ' {"thought_process": "ab')
    assert g.min_rest(inside) == 1 + len(FRAME["middle"]) - 1 + 1 + 1 + 1


def test_frame_needs_budget_and_quotes() -> None:
    with pytest.raises(ValueError, match="max_new_tokens=10 is too small"):
        frame_grammar(decoding(max_new_tokens=10), " ")
    with pytest.raises(ValueError, match="opening quote"):
        frame_grammar(decoding(json_frame={**FRAME, "open": '{"thought_process": '}), " ")


# ------------------------------------------------------------------------------------------- constrained, tiny Mistral


def test_constrained_200_generations_all_parse(tiny, mistral_tokenizer, card_prompt) -> None:
    """200 answers of a random-weight model to 200 different pairs, under four budgets (47 = the frame alone):
    every one is clean JSON. Greedy keeps it fast; sampling is covered by the ChatML test and predict's."""
    pairs = _pairs(200)
    prompts = [encode_prompt(p["premise"], p["hypothesis"], card_prompt, mistral_tokenizer) for p in pairs]
    results = []
    for b, max_new in enumerate((47, 56, 64, 80)):
        cfg = decoding(max_new_tokens=max_new, constrained=True, label_probs=True)
        chunk = prompts[b * 50 : (b + 1) * 50]
        out = generate_batch(
            tiny, mistral_tokenizer, chunk, cfg, completion_prefix=card_prompt.completion_prefix
        )
        results += [g for gs in out.outputs for g in gs]
    assert len(results) >= 200
    parsed = [parse_output(g.text) for g in results]
    assert Counter(p.rule for p in parsed) == {"json": len(results)}
    for g in results:
        obj = json.loads(g.text)
        assert list(obj) == ["thought_process", "predicted_label"] and obj["predicted_label"] in (0, 1)
        assert isinstance(obj["thought_process"], str)
        assert g.finish_reason == "json_closed" and g.n_tokens <= 80
        assert g.label_probs is not None and 0.0 <= g.label_probs.p_label_1 <= 1.0
    assert any(len(json.loads(g.text)["thought_process"]) > 20 for g in results)  # thoughts are not all empty


def test_label_readout_matches_a_forward_pass(tiny, mistral_tokenizer, card_prompt) -> None:
    prompt = encode_prompt("A man plays a guitar.", "A man plays music.", card_prompt, mistral_tokenizer)
    cfg = decoding(max_new_tokens=56, constrained=True, label_probs=True, stop_at_json_close=False)
    out = generate_batch(tiny, mistral_tokenizer, [prompt], cfg, completion_prefix=" ").outputs[0][0]
    assert out.finish_reason == "eos"
    ids = out.token_ids
    vocab = vocab_index(mistral_tokenizer)
    gen_text, pos = "", 0  # find the step that generated the label digit
    while not (
        gen_text.rstrip().endswith('"predicted_label":') and vocab.text(ids[pos]).strip() in ("0", "1")
    ):
        gen_text += vocab.text(ids[pos])
        pos += 1
    with torch.no_grad():
        logits = tiny(torch.tensor([prompt + ids[:pos]])).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    zero = [i for i, t in enumerate(vocab.texts) if t and re.match(r"\s*0(?![0-9.])", t)]
    one = [i for i, t in enumerate(vocab.texts) if t and re.match(r"\s*1(?![0-9.])", t)]
    assert out.label_probs.p0 == pytest.approx(probs[zero].sum().item(), rel=1e-3)
    assert out.label_probs.p1 == pytest.approx(probs[one].sum().item(), rel=1e-3)


def test_unconstrained_stops_or_runs_to_budget(tiny, mistral_tokenizer, card_prompt) -> None:
    prompts = [
        encode_prompt(p["premise"], p["hypothesis"], card_prompt, mistral_tokenizer) for p in _pairs(4)
    ]
    out = generate_batch(tiny, mistral_tokenizer, prompts, decoding(max_new_tokens=24))
    for (g,) in out.outputs:
        assert g.finish_reason in ("json_closed", "eos", "max_new_tokens")
        assert g.n_tokens <= 24
        if g.finish_reason == "max_new_tokens":
            assert g.n_tokens == 24
    assert out.prompt_tokens == [len(p) for p in prompts]


# ------------------------------------------------------------------------------------------- ChatML / byte-level BPE


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        json.dumps(
            {
                "thought_process": f"step 1: {p['premise']} step 2: {p['hypothesis']}",
                "predicted_label": p["label"],
            }
        )
        for p in _pairs(200)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def test_constrained_with_chatml_bpe(bpe_tokenizer) -> None:
    from conftest import compose
    from transformers import LlamaConfig, LlamaForCausalLM

    prompt_cfg = compose(["prompt=chat"]).prompt
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    vocab = vocab_index(bpe_tokenizer)
    assert vocab.text(bpe_tokenizer.convert_tokens_to_ids("Ġthe")) == " the"
    prompts = [encode_prompt(p["premise"], p["hypothesis"], prompt_cfg, bpe_tokenizer) for p in _pairs(25)]
    assert bpe_tokenizer.decode(prompts[0]).endswith("<|im_start|>assistant\n")
    cfg = decoding(max_new_tokens=70, do_sample=True, constrained=True, label_probs=True)
    out = generate_batch(
        model, bpe_tokenizer, prompts, cfg, num_samples=8, completion_prefix=prompt_cfg.completion_prefix
    )
    texts = [g.text for gs in out.outputs for g in gs]
    assert len(texts) == 200
    assert all(parse_output(t).rule == "json" for t in texts), [
        t for t in texts if parse_output(t).rule != "json"
    ]
    assert all(json.loads(t)["predicted_label"] in (0, 1) for t in texts)


# ------------------------------------------------------------------------------------------- helpers


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def _p(label: int | None) -> ParseResult:
    return ParseResult(label, None, "json" if label is not None else "unparseable", label is not None)


def test_majority_vote() -> None:
    v = majority_vote([_p(1), _p(0), _p(1), _p(None), _p(1)])
    assert (v.label, v.share, v.counts, v.index) == (1, 0.6, {"0": 1, "1": 3, "none": 1}, 0)
    tie = majority_vote([_p(None), _p(0), _p(1)])
    assert (tie.label, tie.index) == (0, 1)  # tie: the earliest sample among the tied labels
    none = majority_vote([_p(None), _p(None)])
    assert (none.label, none.share, none.index) == (None, 0.0, None)


def test_decoded_text_is_valid_utf8():
    """A tokenizer can decode a token to half a character (an unpaired surrogate); the answer's text has U+FFFD."""
    from nli_cot.models.generation import decode_text

    class HalfCharacter:
        def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=True):
            assert skip_special_tokens and not clean_up_tokenization_spaces
            return "ok \ud800" if ids else ""

    assert decode_text(HalfCharacter(), [5]) == "ok \ufffd"
    (decode_text(HalfCharacter(), [5]) + "\n").encode("utf-8")
