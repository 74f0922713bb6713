"""Model output -> (label, thought, which rule fired).

One parser for every stage that reads a model's answer (prediction, generation-based eval during training, the
teacher stages), so a label means the same thing everywhere.

Rules, tried in this order; the first that yields a label 0/1 wins:

1. Structured answers (an object with a label key and a thought key):
   - ``json``: the whole output is one JSON object (raw newlines inside strings are tolerated).
   - ``json_trailing_text`` / ``json_embedded``: a JSON object followed by text / preceded by prose.
   - ``double_encoded``: the object was written as a JSON string literal (``"{\\"thought_process\\": ...}"``).
   - ``code_fence``: the object sits in a Markdown fence (```` ```json ... ``` ````), closed or not.
   - ``single_quotes``: a Python-style dict (``{'predicted_label': 1}``), incl. apostrophes that break it.
   - ``loose_json``: an object json.loads rejects (unescaped inner quotes, trailing commas, bare words).
   - ``truncated``: an object that never closes (max_new_tokens hit) but whose label was already written.
   - ``typographic``: the object was written with typographic punctuation (curly or full-width quotes,
     full-width braces, colons, commas or digits, non-breaking or zero-width spaces); see below.
   Label values are coerced: 0/1 (also 0.0/1.0) are clean; ``"1"`` fires ``label_string``; words such as
   ``"entailment"``, ``"not entailment"``, ``"contradiction"``, ``true`` fire ``label_word``.
2. Free text:
   - ``label_line``: the last ``Final label: 0`` / ``Answer: entailment`` / ``the label is 1`` line.
   - ``bare_label``: the whole output is a label (``1``, ``Entailment.``).
   - ``conclusion_sentence``: the last sentence (of the thought if one was found, else of the text) that
     states a verdict ("the hypothesis cannot be inferred", "is entailed", "contradicts the premise").
     Within a sentence the last verdict phrase wins, and digits are never read from prose,
     so "step 1" is not a label (the source project's fallback made exactly that mistake).
3. ``unparseable``: no label; ``thought`` is still returned when an object carried one.

When several repairs were needed, ``rule`` is the least certain of them in ``RULES`` order (e.g. a fenced
object whose label is the word "entailment" gives ``label_word``).

Typographic text: an output is first parsed as written. Only when that is not strict ``json`` and the output
contains typographic punctuation is it parsed again with that punctuation normalised to ASCII (``TYPOGRAPHIC``);
the second reading wins when it is better (a label where there was none, or a more certain rule), and its rule
is at least ``typographic``. So a clean output parses exactly as before, and a curly quote inside a valid JSON
string is kept as written.

Before parsing, special tokens such as ``</s>`` are removed and an echoed prompt is dropped: an output that
starts with ``[INST]`` (or ChatML ``<|im_start|>``) is cut after the first ``[/INST]`` (the first
``<|im_start|>assistant``), as a decode of the full sequence contains the prompt and, for the source
project's prompt, its own ``{"thought_process": ...}`` template.

Limits: only binary labels; a label value outside {0, 1} (e.g. the source teacher's ``0.5``) is invalid and
the verdict falls back to the thought's conclusion; the conclusion patterns are English and tuned to the
phrasing of NLI chains of thought ("can be inferred", "entailed", "follows"), so an unusual verdict phrasing
ends as ``unparseable`` rather than a guess.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from nli_cot.core.records import utf8_safe

# Least to most uncertain; a result reports the most uncertain rule it needed.
RULES: tuple[str, ...] = (
    "json",
    "json_trailing_text",
    "json_embedded",
    "double_encoded",
    "code_fence",
    "single_quotes",
    "loose_json",
    "typographic",
    "label_string",
    "label_word",
    "truncated",
    "label_line",
    "bare_label",
    "conclusion_sentence",
    "unparseable",
)
STRICT_RULE = "json"  # any other rule with a label is a rescue by a fallback
# Rules that read an object (a thought can come with the label); the later ones rescue a label from prose.
OBJECT_RULES: frozenset[str] = frozenset(RULES[: RULES.index("label_string")])

LABEL_KEYS = ("predicted_label", "label", "prediction", "final_label", "answer")
THOUGHT_KEYS = ("thought_process", "thought", "thoughts", "reasoning", "rationale", "explanation")

# Prompt echoes (a decode of the whole sequence): (how the prompt starts, where it ends).
_PROMPT_MARKERS = (("[INST]", "[/INST]"), ("<|im_start|>", "<|im_start|>assistant"))
# Removed before parsing; <|im_start|> stays, as it locates the ChatML prompt end.
_SPECIAL_TOKENS = ("</s>", "<s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<unk>", "<pad>")

_WORD_LABELS: dict[str, int] = {
    "entailment": 1,
    "entailed": 1,
    "entails": 1,
    "yes": 1,
    "true": 1,
    "not entailment": 0,
    "no entailment": 0,
    "non entailment": 0,
    "not entailed": 0,
    "no": 0,
    "false": 0,
    "contradiction": 0,
    "neutral": 0,
}

_DIGIT_STRING = re.compile(r"\s*([01])(?:\.0+)?\s*(?:\(.*\))?\s*")
_FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_LABEL_KEYS_RE = "|".join(LABEL_KEYS)
_THOUGHT_KEYS_RE = "|".join(THOUGHT_KEYS)
_LABEL_FIELD = re.compile(
    r"""["']?\b(?:""" + _LABEL_KEYS_RE + r""")\b["']?\s*[:=]\s*"""
    r"""(?P<v>"[^"\n]*"|'[^'\n]*'|[^,}\s]+(?:[ \t]+[a-zA-Z_]+)?)""",
    re.IGNORECASE,
)
_THOUGHT_FIELD = re.compile(
    r"""(?P<kq>["']?)\b(?:""" + _THOUGHT_KEYS_RE + r""")\b(?P=kq)\s*:\s*(?P<q>["'])""", re.IGNORECASE
)
_LABEL_VALUE_WORDS = r"entailment|not[ _-]entailment|no[ _-]entailment|non[ _-]entailment|not entailed|entailed|contradiction|neutral"
_LABEL_LINE = re.compile(
    r"\b(?:final\s+)?(?:predicted[ _]label|label|answer|prediction|verdict)\s*(?:is|[:=])\s*[\"'(*]*\s*"
    r"(?P<v>[01](?![\d.]\d|\d)|" + _LABEL_VALUE_WORDS + r")\b",
    re.IGNORECASE,
)
_SINGLE_QUOTED_KEY = re.compile(r"'(?:" + _THOUGHT_KEYS_RE + "|" + _LABEL_KEYS_RE + r")'\s*:", re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")

# Verdict phrases. "cannot be inferred" does not match "can be inferred", and adverbs ("reasonably",
# "logically") are allowed in between. When a sentence has both ("no contradiction, so it can be inferred"),
# the later phrase is the verdict; on a tie the negation wins.
_ADVERB = r"(?:(?!not\b)\w+ly\s+)?"
_NEG = re.compile(
    r"\b(?:can ?not|can't|could not|couldn't|is not possible to|is not reasonable to|unable to)\s+(?:be\s+)?"
    + _ADVERB
    + r"(?:inferred|infer|concluded|conclude|deduced|deduce|entailed|entail|determined|established|confirmed)\b"
    r"|\b(?:is|are)\s+not\s+" + _ADVERB + r"(?:entailed|inferred|implied|supported|true|a valid inference)\b"
    r"|\b(?:does|do)\s*(?:not|n't)\s+" + _ADVERB + r"(?:entail|follow|imply|support)\b"
    r"|\b(?:no|not|non)[ _-]entailment\b|\bnot\s+entailed\b"
    r"|\bcontradicts?\b|\bis\s+an?\s+contradiction\b|\bis\s+(?:false|contradicted|unsupported)\b",
    re.IGNORECASE,
)
_POS = re.compile(
    r"\b(?:can|could)\s+(?:be\s+)?" + _ADVERB + r"(?:inferred|concluded|deduced)\b"
    r"|\b(?:is|are)\s+" + _ADVERB + r"(?:entailed|implied|supported)\b"
    r"|\b(?:is|it's|seems)\s+"
    + _ADVERB
    + r"(?:possible|reasonable|safe|valid|logical)\s+to\s+(?:infer|conclude)\b"
    r"|\b(?:entails|implies)\s+the\s+hypothesis\b|\bfollows\s+" + _ADVERB + r"from\b"
    r"|(?<!that )\bthe\s+hypothesis\s+is\s+" + _ADVERB + r"true\b"
    r"|\b(?:there is|this is|is an?|indicates|shows|conclude)\s+(?:(?!no\b|not\b)\w+\s+)?entailment\b",
    re.IGNORECASE,
)


# Typographic punctuation -> ASCII (None: removed). Only applied when the output as written is not strict JSON.
TYPOGRAPHIC: dict[int, str | None] = str.maketrans(
    {
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\uff02\u301d\u301e\u301f", '"'),
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\uff07", "'"),
        "\uff5b": "{",
        "\uff5d": "}",
        "\uff1a": ":",
        "\ufe55": ":",
        "\uff0c": ",",
        "\u3001": ",",
        "\uff3b": "[",
        "\uff3d": "]",
        **{chr(0xFF10 + d): str(d) for d in range(10)},  # full-width digits
        **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000", " "),
        **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", None),  # zero-width, soft hyphen
    }
)


def normalise_typography(text: str) -> str:
    """Curly/full-width quotes, full-width braces/colons/commas/digits and odd spaces as ASCII."""
    return text.translate(TYPOGRAPHIC)


@dataclass(frozen=True)
class ParseResult:
    """What was read from one model output. ``ok`` is True exactly when a label 0/1 was found."""

    label: int | None
    thought: str | None
    rule: str
    ok: bool


def _worse(a: str, b: str) -> str:
    return a if RULES.index(a) >= RULES.index(b) else b


def _coerce_label(value: Any) -> tuple[int | None, str | None]:
    """A label value -> (0/1 or None, the rule its coercion needed; None when it was a clean number)."""
    if isinstance(value, bool):
        return int(value), "label_word"
    if isinstance(value, (int, float)):
        return (int(value), None) if value in (0, 1) else (None, None)
    if not isinstance(value, str):
        return None, None
    match = _DIGIT_STRING.fullmatch(value.strip().strip("\"'"))
    if match:
        return int(match.group(1)), "label_string"
    word = re.sub(r"\(\s*[01]\s*\)", "", value.lower())
    word = re.sub(r"[_\-]+", " ", word).strip(" \t\n.!\"'()*")
    word = re.sub(r"\s+", " ", word)
    if word in _WORD_LABELS:
        return _WORD_LABELS[word], "label_word"
    return None, None


def _find_key(obj: dict, keys: tuple[str, ...]) -> tuple[bool, Any]:
    lowered = {str(k).lower().strip(): v for k, v in obj.items()}
    for key in keys:
        if key in lowered:
            return True, lowered[key]
    return False, None


def _thought_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):  # some models write the steps as a list
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


@dataclass
class _Partial:
    label: int | None
    thought: str | None
    rule: str


def _from_dict(obj: dict, rule: str) -> _Partial | None:
    has_label, raw_label = _find_key(obj, LABEL_KEYS)
    _, raw_thought = _find_key(obj, THOUGHT_KEYS)
    thought = _thought_text(raw_thought)
    if not has_label and thought is None:
        return None
    label, value_rule = _coerce_label(raw_label) if has_label else (None, None)
    return _Partial(label, thought, _worse(rule, value_rule) if value_rule else rule)


def _unescape(text: str, quote: str) -> str:
    if quote == '"':
        try:
            return json.loads(f'"{text}"', strict=False)
        except json.JSONDecodeError:
            pass
    return text.replace("\\" + quote, quote).replace("\\n", "\n")


def _loose_fields(span: str, rule: str) -> _Partial | None:
    """Read the label and thought fields by pattern, for objects no decoder accepts."""
    label_match = _LABEL_FIELD.search(span)
    label, value_rule = (None, None)
    if label_match:
        raw = label_match.group("v").strip()
        label, value_rule = _coerce_label(raw)
        if raw in ("0", "1"):  # an unquoted digit is a clean number, only the object around it was broken
            value_rule = None
    thought = None
    thought_match = _THOUGHT_FIELD.search(span)
    if thought_match:
        quote, start = thought_match.group("q"), thought_match.end()
        if label_match and label_match.start() > start:
            body = span[start : label_match.start()]
        else:
            # The thought runs to the last quote before the closing brace, or to the end when truncated.
            close = re.search(re.escape(quote) + r"\s*,?\s*}\s*$", span[start:])
            body = span[start : start + close.start()] if close else span[start:]
        body = re.sub(r"\s*,?\s*$", "", body.rstrip())
        if body.endswith(quote):
            body = body[:-1]
        thought = _unescape(body, quote).strip()
    if not label_match and thought is None:
        return None
    return _Partial(label, thought, _worse(rule, value_rule) if value_rule else rule)


def _object_spans(text: str) -> tuple[list[tuple[int, int]], int | None]:
    """Balanced top-level ``{...}`` spans (string-aware), and the start of an unclosed one, if any."""
    spans: list[tuple[int, int]] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    unclosed = start if depth > 0 else None
    if unclosed is not None:
        # Unescaped inner quotes can fool the string tracking; a later '}' still closes the object.
        last = text.rfind("}")
        if last > unclosed:
            spans.append((unclosed, last + 1))
            unclosed = None
    return spans, unclosed


def _parse_object(span: str, rule: str) -> _Partial | None:
    try:
        obj = json.loads(span, strict=False)
        if isinstance(obj, dict):
            return _from_dict(obj, rule)
    except json.JSONDecodeError:
        pass
    single = _SINGLE_QUOTED_KEY.search(span)
    rule = _worse(rule, "single_quotes" if single else "loose_json")
    try:
        obj = ast.literal_eval(span)  # Python dict syntax: single quotes, trailing commas, True/False
        if isinstance(obj, dict):
            return _from_dict(obj, rule)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    return _loose_fields(span, rule)


def _structured(text: str) -> list[_Partial]:
    """Every object-like reading of ``text``, most certain first."""
    found: list[_Partial] = []
    stripped = text.strip()
    try:
        whole = json.loads(stripped, strict=False)
        if isinstance(whole, dict):
            part = _from_dict(whole, "json")
            if part:
                found.append(part)
        elif isinstance(whole, str) and whole.strip().startswith("{"):
            found += [
                _Partial(p.label, p.thought, _worse(p.rule, "double_encoded")) for p in _structured(whole)
            ]
    except json.JSONDecodeError:
        pass
    if "```" in stripped:
        for block in _FENCE.findall(stripped):
            if "{" in block:
                found += [
                    _Partial(p.label, p.thought, _worse(p.rule, "code_fence")) for p in _structured(block)
                ]
    spans, unclosed = _object_spans(stripped)
    for begin, end in spans:
        rule = "json"
        if stripped[:begin].strip():
            rule = "json_embedded"
        elif stripped[end:].strip():
            rule = "json_trailing_text"
        part = _parse_object(stripped[begin:end], rule)
        if part:
            found.append(part)
    if unclosed is not None:
        part = _loose_fields(stripped[unclosed:], "truncated")
        if part:
            found.append(_Partial(part.label, part.thought, _worse(part.rule, "truncated")))
    return found


def _conclusion(text: str) -> int | None:
    for sentence in reversed(_SENTENCE_SPLIT.split(text)):
        hits = [(m.start(), 0) for m in _NEG.finditer(sentence)] + [
            (m.start(), 1) for m in _POS.finditer(sentence)
        ]
        if hits:
            return max(hits)[1]
    return None


def _clean(text: str) -> str:
    text = text.strip()
    for token in _SPECIAL_TOKENS:
        text = text.replace(token, "")
    text = text.strip()
    # Only a decode that starts with the prompt has one to drop; a marker after the answer is degenerate
    # continuation (a model repeating itself) and must not swallow the answer.
    for opener, closer in _PROMPT_MARKERS:
        if text.startswith(opener):
            cut = text.find(closer)
            if cut >= 0:
                text = text[cut + len(closer) :]
    return text.strip()


def parse_output(text: str) -> ParseResult:
    """Read the label and thought from one raw model output; see the module docstring for the rules.

    The thought is valid UTF-8 text (``utf8_safe``): a ``\\ud800`` escape inside the answer's JSON string reads as
    an unpaired surrogate, which no JSON response or record file can carry; it becomes U+FFFD.
    """
    result = _read_output(text)
    if result.thought is None:
        return result
    return ParseResult(result.label, utf8_safe(result.thought), result.rule, result.ok)


def _read_output(text: str) -> ParseResult:
    if not isinstance(text, str):
        return ParseResult(None, None, "unparseable", False)
    first = _parse(text)
    if first.rule == STRICT_RULE:
        return first  # clean JSON: typographic characters inside its strings are content
    normalised = normalise_typography(text)
    if normalised == text:
        return first
    second = _parse(normalised)
    better = second.ok and (not first.ok or RULES.index(second.rule) < RULES.index(first.rule))
    if better or (not first.ok and not second.ok and second.thought and not first.thought):
        return ParseResult(second.label, second.thought, _worse(second.rule, "typographic"), second.ok)
    return first


def _parse(text: str) -> ParseResult:
    """parse_output without the typographic second reading."""
    cleaned = _clean(text)
    partials = _structured(cleaned) if "{" in cleaned else []
    for part in partials:
        if part.label is not None:
            return ParseResult(part.label, part.thought, part.rule, True)
    thought = next((p.thought for p in partials if p.thought), None)

    line_matches = list(_LABEL_LINE.finditer(cleaned))
    if line_matches:
        label, _ = _coerce_label(line_matches[-1].group("v"))
        if label is not None:
            free_thought = thought or cleaned[: line_matches[-1].start()].strip() or None
            return ParseResult(label, free_thought, "label_line", True)
    if not partials:
        label, _ = _coerce_label(cleaned)
        if label is not None:
            return ParseResult(label, None, "bare_label", True)
    label = _conclusion(thought if thought else cleaned)
    if label is not None:
        return ParseResult(label, thought or cleaned, "conclusion_sentence", True)
    return ParseResult(None, thought, "unparseable", False)
