"""The parser on a corpus of realistic (mostly broken) model outputs, and on the source project's own data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nli_cot.core.parsing import RULES, ParseResult, parse_output

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "original-sample"

T0 = "step 1: the man is asleep on a bench. step 2: sleeping and running cannot happen at once. step 3: the hypothesis cannot be inferred from the premise."
T1 = "step 1: a woman plays a guitar on stage. step 2: playing a guitar on stage is performing music. step 3: the hypothesis can be inferred from the premise."
PROMPT = (
    "<s>[INST] Premise: A man plays guitar.\nHypothesis: A man performs music.\n\nUse chain of thought reasoning to "
    "determine if the hypothesis is entailed by the premise. Provide your reasoning and the final label (0 or 1) "
    'in JSON format: {"thought_process": "...", "predicted_label": ...} [/INST]'
)

# (id, raw output, expected label or None, expected rule)
CORPUS: list[tuple[str, str, int | None, str]] = [
    # clean JSON in the shapes models write it
    ("clean_0", json.dumps({"thought_process": T0, "predicted_label": 0}), 0, "json"),
    ("clean_1", json.dumps({"thought_process": T1, "predicted_label": 1}), 1, "json"),
    ("pretty_printed", '{\n  "thought_process": "' + T1 + '",\n  "predicted_label": 1\n}', 1, "json"),
    ("eos_token_kept", json.dumps({"thought_process": T0, "predicted_label": 0}) + "</s>", 0, "json"),
    ("label_first", '{"predicted_label": 1, "thought_process": "' + T1 + '"}', 1, "json"),
    ("raw_newline_in_string", '{"thought_process": "step 1: a\nstep 2: b", "predicted_label": 0}', 0, "json"),
    ("float_label", '{"thought_process": "x", "predicted_label": 1.0}', 1, "json"),
    ("prompt_echoed", PROMPT + ' {"thought_process": "' + T1 + '", "predicted_label": 1} </s>', 1, "json"),
    (
        "chatml_echoed",
        "<|im_start|>user\nPremise: a\nHypothesis: b<|im_end|>\n<|im_start|>assistant\n"
        '{"thought_process": "x", "predicted_label": 0}<|im_end|>',
        0,
        "json",
    ),
    # extra text around the object
    (
        "trailing_text",
        json.dumps({"thought_process": T1, "predicted_label": 1}) + "\n\nI hope this helps!",
        1,
        "json_trailing_text",
    ),
    (
        "repeated_object",
        json.dumps({"thought_process": T0, "predicted_label": 0}) + " " + json.dumps({"thought_process": T0}),
        0,
        "json_trailing_text",
    ),
    (
        "repetition_until_max_tokens",
        json.dumps({"thought_process": T0, "predicted_label": 0}) + " [/INST] step 3: the" * 3,
        0,
        "json_trailing_text",
    ),
    (
        "leading_prose",
        'Sure! Here is my answer:\n{"thought_process": "' + T0 + '", "predicted_label": 0}',
        0,
        "json_embedded",
    ),
    (
        "double_encoded",
        json.dumps(json.dumps({"thought_process": "x", "predicted_label": 1})),
        1,
        "double_encoded",
    ),
    # code fences
    (
        "fence_json",
        "```json\n" + json.dumps({"thought_process": T1, "predicted_label": 1}) + "\n```",
        1,
        "code_fence",
    ),
    (
        "fence_plain",
        "```\n" + json.dumps({"thought_process": T0, "predicted_label": 0}) + "\n```",
        0,
        "code_fence",
    ),
    (
        "fence_with_prose",
        "Here you go:\n```json\n"
        + json.dumps({"thought_process": T0, "predicted_label": 0})
        + "\n```\nDone.",
        0,
        "code_fence",
    ),
    ("fence_unclosed", '```json\n{"thought_process": "x", "predicted_label": 1}', 1, "code_fence"),
    # single quotes / python dicts
    ("single_quotes", "{'thought_process': 'step 1: a dog runs.', 'predicted_label': 1}", 1, "single_quotes"),
    (
        "single_quotes_apostrophe",
        "{'thought_process': \"the man's dog runs\", 'predicted_label': 0}",
        0,
        "single_quotes",
    ),
    (
        "single_quotes_broken_by_apostrophe",
        "{'thought_process': 'the man's dog runs', 'predicted_label': 0}",
        0,
        "single_quotes",
    ),
    ("python_true", "{'thought_process': 'x', 'predicted_label': True}", 1, "label_word"),
    # objects json.loads rejects
    (
        "unescaped_inner_quotes",
        '{"thought_process": "Step 1: The dog chases the cat. "Up the tree" suggests the cat climbs.", "predicted_label": 1}',
        1,
        "loose_json",
    ),
    ("trailing_comma", '{"thought_process": "x", "predicted_label": 0,}', 0, "loose_json"),
    ("unquoted_keys", '{thought_process: "a man sleeps", predicted_label: 0}', 0, "loose_json"),
    ("missing_comma", '{"thought_process": "x" "predicted_label": 1}', 1, "loose_json"),
    # label written as a string or a word
    ("label_quoted_digit", '{"thought_process": "x", "predicted_label": "1"}', 1, "label_string"),
    (
        "label_digit_with_gloss",
        '{"thought_process": "x", "predicted_label": "0 (no entailment)"}',
        0,
        "label_string",
    ),
    ("label_entailment", '{"thought_process": "x", "predicted_label": "entailment"}', 1, "label_word"),
    (
        "label_not_entailment",
        '{"thought_process": "x", "predicted_label": "not entailment"}',
        0,
        "label_word",
    ),
    (
        "label_not_underscore",
        '{"thought_process": "x", "predicted_label": "not_entailment"}',
        0,
        "label_word",
    ),
    ("label_contradiction", '{"thought_process": "x", "predicted_label": "Contradiction"}', 0, "label_word"),
    ("label_json_bool", '{"thought_process": "x", "predicted_label": false}', 0, "label_word"),
    ("label_key_alias", '{"reasoning": "x", "label": 1}', 1, "json"),
    (
        "fence_and_word",
        '```json\n{"thought_process": "x", "predicted_label": "entailment"}\n```',
        1,
        "label_word",
    ),
    # truncated objects (max_new_tokens hit)
    ("truncated_after_label", '{"thought_process": "' + T1 + '", "predicted_label": 1', 1, "truncated"),
    ("truncated_label_first", '{"predicted_label": 0, "thought_process": "step 1: a man sl', 0, "truncated"),
    (
        "truncated_in_thought_with_verdict",
        '{"thought_process": "step 1: x. step 3: the hypothesis cannot be inferred from the premise, as',
        0,
        "conclusion_sentence",
    ),
    (
        "truncated_in_thought_no_verdict",
        '{"thought_process": "step 1: the man is asleep. step 2: the',
        None,
        "unparseable",
    ),
    ("truncated_at_key", '{"thought_process": "' + T1 + '", "predicted_', 1, "conclusion_sentence"),
    # label missing or invalid, verdict in the thought
    ("missing_label", json.dumps({"thought_process": T0}), 0, "conclusion_sentence"),
    ("missing_label_positive", json.dumps({"thought_process": T1}), 1, "conclusion_sentence"),
    (
        "teacher_half_label",  # the source teacher's own invalid answer (sample_thoughts.json, chat_history)
        '{\n  "thought_process": "Step 3: the hypothesis can be reasonably inferred from the premise, but it is '
        'not a definitive conclusion.",\n  "predicted_label": 0.5\n}',
        1,
        "conclusion_sentence",
    ),
    (
        "template_label_echoed",
        '{"thought_process": "' + T0 + '", "predicted_label": "<0 for no entailment, 1 for entailment>"}',
        0,
        "conclusion_sentence",
    ),
    (
        "no_contradiction_then_verdict",
        json.dumps({"thought_process": "there is no contradiction, so the hypothesis can be inferred."}),
        1,
        "conclusion_sentence",
    ),
    (
        "negated_truth",
        json.dumps({"thought_process": "step 3: it is not logically entailed that the hypothesis is true."}),
        0,
        "conclusion_sentence",
    ),
    # free text
    ("final_label_line", "Step 1: a. Step 2: b.\nFinal label: 0", 0, "label_line"),
    ("answer_word_line", "The premise talks about dogs.\nAnswer: Entailment", 1, "label_line"),
    ("label_is_sentence", "step 1: x. Therefore the predicted label is 1.", 1, "label_line"),
    ("bare_digit", "1", 1, "bare_label"),
    ("bare_word", "Not entailment.", 0, "bare_label"),
    (
        "prose_negative",
        "Step 1: The premise is about a sleeping man. Step 2: running contradicts sleeping. Step 3: Therefore, the hypothesis is not entailed by the premise.",
        0,
        "conclusion_sentence",
    ),
    (
        "prose_positive",
        "Playing guitar on stage is a performance, so the hypothesis follows from the premise.",
        1,
        "conclusion_sentence",
    ),
    # clean failures: nothing that says a label, and digits in prose are never labels
    ("steps_only", "step 1: the man. step 2: the dog. step 3: the cat.", None, "unparseable"),
    ("empty", "", None, "unparseable"),
    ("whitespace", "  \n </s>", None, "unparseable"),
    (
        "out_of_range_label_no_verdict",
        '{"thought_process": "step 1: x.", "predicted_label": 2}',
        None,
        "unparseable",
    ),
    ("garbage_tokens", "}}}{{ ,,, [/INST] ::::", None, "unparseable"),
    ("template_echo_only", PROMPT, None, "unparseable"),
]


@pytest.mark.parametrize(("text", "label", "rule"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_corpus(text: str, label: int | None, rule: str) -> None:
    result = parse_output(text)
    assert (result.label, result.rule) == (label, rule)
    assert result.ok == (label is not None)
    assert result.rule in RULES


def test_corpus_is_large_and_unique() -> None:
    assert len(CORPUS) >= 40
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


def test_thought_is_kept() -> None:
    assert parse_output(json.dumps({"thought_process": T0, "predicted_label": 0})).thought == T0
    broken = '{"thought_process": "Step 1: "Up the tree" means up.", "predicted_label": 1}'
    assert parse_output(broken).thought == 'Step 1: "Up the tree" means up.'
    truncated = parse_output('{"thought_process": "step 1: the man is asleep. step 2: the')
    assert truncated.thought == "step 1: the man is asleep. step 2: the" and not truncated.ok


def test_result_is_frozen() -> None:
    result = parse_output("1")
    assert isinstance(result, ParseResult)
    with pytest.raises(AttributeError):
        result.label = 0  # type: ignore[misc]


def test_non_string_input_is_unparseable() -> None:
    assert parse_output(None) == ParseResult(None, None, "unparseable", False)  # type: ignore[arg-type]


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (expected <repo>/../shared/data)")
    return path


def test_source_finetune_texts_parse_as_json() -> None:
    """The source project's SFT texts: prompt (with its own JSON template) + answer + </s>."""
    rows = [json.loads(line) for line in _require(DATA / "sample_ft.jsonl").open()]
    for row in rows:
        answer = json.loads(row["text"].split("[/INST]")[-1].replace("</s>", ""))
        result = parse_output(row["text"])
        assert (result.label, result.rule, result.thought) == (
            answer["predicted_label"],
            "json",
            answer["thought_process"],
        )


def test_source_teacher_conclusions_agree_with_labels() -> None:
    """With the label removed, the verdict sentence of the teacher's thoughts recovers its label."""
    rows = [json.loads(line) for line in _require(DATA / "sample_thoughts.json").open()]
    results = [parse_output(json.dumps({"thought_process": r["thought_process"]})) for r in rows]
    assert all(r.rule == "conclusion_sentence" for r in results)
    agree = sum(r.label == row["predicted_label"] for r, row in zip(results, rows, strict=True))
    # 97/100 today; the 3 others say "can be inferred" while labelling 0 (the teacher contradicting itself).
    assert agree >= 95


def test_source_teacher_invalid_answers() -> None:
    """The two answers the source teacher had to be re-prompted for (label 0.5)."""
    rows = [json.loads(line) for line in _require(DATA / "sample_thoughts.json").open()]
    answers = [m["content"] for r in rows for m in r["chat_history"] if m["role"] == "assistant"]
    assert len(answers) == 2
    for answer in answers:
        result = parse_output(answer)
        assert (result.label, result.rule) == (1, "conclusion_sentence")


def test_an_escaped_unpaired_surrogate_reads_as_a_replacement_character():
    """Constrained decoding lets a model write any \\uXXXX escape; json.loads reads \\ud800 into an unpaired surrogate
    that no JSON response or record file can carry (serve once answered 500): the thought has U+FFFD there."""
    p = parse_output('{"thought_process": "a \\ud800 b \\ud83d\\ude00", "predicted_label": 1}')
    assert (p.label, p.thought, p.rule, p.ok) == (1, "a \ufffd b \U0001f600", "json", True)
    assert parse_output("Step 1: raw \ud800 half.\nLabel: 0").thought == "Step 1: raw \ufffd half."
