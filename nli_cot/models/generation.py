"""Batched decoding for NLI answers: stop at the closing brace, constrained JSON, self-consistency, label probs.

Features
- ``generate_batch``: left-padded batch generation with ``model.generate`` (greedy by default, sampling by
  config), one or ``k`` samples per prompt, per-row generated-token counts and finish reasons.
- ``JsonCloseStopping``: a StoppingCriteria that stops each row as soon as its first JSON object closes
  (brace depth tracked outside strings, escapes honoured), so no tokens are burnt up to max_new_tokens.
- ``JsonConstraint``: a LogitsProcessor that only allows tokens keeping the output a prefix of
  ``<completion_prefix>{"thought_process": "<JSON string>", "predicted_label": 0|1}`` followed by EOS.
  It works on the text of every vocabulary token (``VocabIndex``; sentencepiece ``▁`` and byte-fallback
  tokens, byte-level BPE ``Ġ`` tokens alike), lets tokens straddle the end of a literal and the start of the
  thought (the model keeps its own tokenisation, e.g. ``.",``), and forces the string to close when the
  remaining ``max_new_tokens`` budget is just enough to finish the object, so every output parses.
- ``LabelProbReadout``: at the step where the label digit is generated (text ends in ``"predicted_label":``),
  reads P("0") and P("1") from the raw next-token distribution (summing tokens such as ``0``, ``▁0``, ``0}``);
  ``p_label_1`` = P(1) / (P(0) + P(1)), ``mass`` = P(0) + P(1).
- ``majority_vote``: self-consistency over k parsed samples, with the vote share as a confidence.

Limits
- num_beams must be 1 (the trackers follow rows, and beam search reorders them).
- The constraint fixes the exact spelling of the training completions (json.dumps separators); a model
  trained on pretty-printed JSON would be pushed off its format. Raw control characters in the thought are
  disallowed (JSON forbids them), so a model that wants a newline must write ``\\n``.
- Label readout needs the text ``"predicted_label":`` to appear; without it ``label_probs`` is None.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from nli_cot.core.parsing import ParseResult
from nli_cot.core.records import utf8_safe

# --------------------------------------------------------------------------------------------- vocabulary


# The decoding settings every decoder reads (predict, serve, gen_eval): one schema, the `decoding` node of
# predict.yaml and serve.yaml.
@dataclass
class JsonFrameConfig:
    open: str = field(
        default='{"thought_process": "',
        metadata={"help": "Text of the JSON answer before the thought."},
    )
    middle: str = field(
        default='", "predicted_label": ',
        metadata={"help": "Text between the thought and the label."},
    )
    close: str = field(default="}", metadata={"help": "Text after the label."})


@dataclass
class DecodingConfig:
    max_new_tokens: int = field(default=512, metadata={"help": "Decoding budget per answer."})
    do_sample: bool = field(default=False, metadata={"help": "Sample (true) or decode greedily (false)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (sampling only)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (sampling only; 1.0: off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (sampling only; 0: off)."})
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "transformers' repetition penalty (1.0: off)."},
    )
    stop_at_json_close: bool = field(
        default=True,
        metadata={"help": "Stop a row once its JSON answer closes (nothing after it is parsed)."},
    )
    constrained: bool = field(
        default=False,
        metadata={
            "help": "Constrained decoding: the answer is always the NLI JSON frame with a 0/1 label (a decoding"
            " mode: DECODING_MODES)."
        },
    )
    label_probs: bool = field(
        default=False,
        metadata={"help": "Record P(\"0\") and P(\"1\") at the label position (a decoding mode: DECODING_MODES)."},
    )
    self_consistency: int = field(
        default=1,
        metadata={"help": "k > 1: k sampled answers per pair and a majority vote."},
    )
    json_frame: JsonFrameConfig = field(
        default_factory=JsonFrameConfig,
        metadata={
            "help": "The exact text of a training completion around the thought and label "
            "(prompts.completion_text)."
        },
    )


class VocabIndex:
    """The text every token id contributes to a decoded string, and indexes over it (built once per tokenizer).

    Text of token t = decode([a, t]) - decode([a]) for a plain token a, so sentencepiece's leading-space marker
    and byte tokens come out as the characters they add mid-sequence. Special/added tokens have text None.
    """

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        n = max(len(tokenizer), vocab_size or 0)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        anchor = tokenizer.convert_ids_to_tokens(tokenizer.encode("a", add_special_tokens=False))
        base = tokenizer.convert_tokens_to_string(anchor)
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.texts: list[str | None] = [None] * n
        for i, piece in enumerate(pieces):
            if i in special or piece is None:
                continue
            full = tokenizer.convert_tokens_to_string(anchor + [piece])
            self.texts[i] = full[len(base) :] if full.startswith(base) else None
        self.size = n
        eos = tokenizer.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        self.first_char: dict[str, list[int]] = {}
        for i, text in enumerate(self.texts):
            if text:
                self.first_char.setdefault(text[0], []).append(i)
        self.single_char = {t: i for i, t in enumerate(self.texts) if t is not None and len(t) == 1}

    def text(self, token_id: int) -> str:
        return (self.texts[token_id] or "") if 0 <= token_id < self.size else ""


_VOCAB_CACHE: dict[int, tuple[Any, VocabIndex]] = {}


def vocab_index(tokenizer: Any, vocab_size: int | None = None) -> VocabIndex:
    """A cached VocabIndex for this tokenizer object (the cache keeps the tokenizer alive, so ids stay unique)."""
    key = id(tokenizer)
    if key not in _VOCAB_CACHE or _VOCAB_CACHE[key][1].size < (vocab_size or 0):
        _VOCAB_CACHE[key] = (tokenizer, VocabIndex(tokenizer, vocab_size))
    return _VOCAB_CACHE[key][1]


class _Rows:
    """Follows the tokens each row has generated since the prompt (``prompt_len`` columns), one call at a time."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len
        self.seen = 0

    def new_tokens(self, input_ids: torch.Tensor) -> list[int] | None:
        """The newest generated token of every row, or None when nothing new was generated."""
        generated = input_ids.shape[1] - self.prompt_len
        if generated <= self.seen:
            return None
        if generated != self.seen + 1:
            raise RuntimeError("generation trackers must see every step (one generate call per tracker)")
        self.seen = generated
        return input_ids[:, -1].tolist()


# --------------------------------------------------------------------------------------------- stop at "}"


@dataclass
class _Brace:
    started: bool = False
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    closed_at: int | None = None  # generated tokens when the object closed

    def feed(self, text: str, step: int) -> None:
        for ch in text:
            if self.closed_at is not None:
                return
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == "{":
                self.started = True
                self.depth += 1
            elif not self.started:
                continue
            elif ch == '"':
                self.in_string = True
            elif ch == "}":
                self.depth -= 1
                if self.depth == 0:
                    self.closed_at = step


class JsonCloseStopping(StoppingCriteria):
    """Stops each row when its first top-level JSON object closes (strings and escapes respected)."""

    def __init__(self, vocab: VocabIndex, batch_rows: int, prompt_len: int) -> None:
        self.vocab = vocab
        self.rows = _Rows(prompt_len)
        self.state = [_Brace() for _ in range(batch_rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        tokens = self.rows.new_tokens(input_ids)
        if tokens is not None:
            for state, tok in zip(self.state, tokens, strict=True):
                if state.closed_at is None:
                    state.feed(self.vocab.text(tok), self.rows.seen)
        done = [s.closed_at is not None for s in self.state]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


# --------------------------------------------------------------------------------------------- constraint


_ESCAPES = set('"\\/bfnrt')
_HEX = set("0123456789abcdefABCDEF")
_NORMAL, _BACKSLASH = 0, 1  # string sub-states; 10 + k = k hex digits of a \uXXXX escape still to come
_LIT, _STR, _CHOICE, _END = "lit", "str", "choice", "end"

State = tuple[int, int]  # (segment index, offset in a literal / string sub-state)


class JsonGrammar:
    """The character automaton of ``<prefix>{"thought_process": "<string>", "predicted_label": 0|1}``."""

    def __init__(
        self, prefix: str, open_text: str, middle: str, close: str, labels: Sequence[str] = ("0", "1")
    ):
        if not open_text.endswith('"') or not middle.startswith('"'):
            raise ValueError(
                "json_frame: 'open' must end with the thought's opening quote and 'middle' start with its closing one"
            )
        # The string segment consumes the closing quote itself, so the literal after it starts one char later.
        self.segments: list[tuple[str, str]] = [(_LIT, prefix + open_text), (_STR, ""), (_LIT, middle[1:])]
        self.segments += [(_CHOICE, "".join(labels)), (_LIT, close), (_END, "")]
        self.labels = set(labels)
        # Shortest completion (in characters) after each segment is finished, EOS counted as one.
        self._after = [0] * len(self.segments)
        rest = 1
        for i in range(len(self.segments) - 1, -1, -1):
            self._after[i] = rest
            kind, value = self.segments[i]
            rest += {_LIT: len(value), _STR: 1, _CHOICE: 1, _END: 0}[kind]
        self.start: State = self._enter(0)

    def _enter(self, seg: int) -> State:
        while self.segments[seg][0] == _LIT and not self.segments[seg][1]:
            seg += 1  # an empty literal (no completion prefix) is skipped
        return (seg, 0)

    def kind(self, state: State) -> str:
        return self.segments[state[0]][0]

    def advance(self, state: State, text: str) -> State | None:
        """The state after ``text``, or None if the text leaves the grammar."""
        seg, sub = state
        for ch in text:
            kind, value = self.segments[seg]
            if kind == _LIT:
                if ch != value[sub]:
                    return None
                sub += 1
                if sub == len(value):
                    seg, sub = self._enter(seg + 1)
            elif kind == _STR:
                if sub == _NORMAL:
                    if ch == '"':
                        seg, sub = self._enter(seg + 1)
                    elif ch == "\\":
                        sub = _BACKSLASH
                    elif ord(ch) < 0x20:
                        return None
                elif sub == _BACKSLASH:
                    if ch == "u":
                        sub = 14
                    elif ch in _ESCAPES:
                        sub = _NORMAL
                    else:
                        return None
                else:
                    if ch not in _HEX:
                        return None
                    sub = _NORMAL if sub == 11 else sub - 1
            elif kind == _CHOICE:
                if ch not in self.labels:
                    return None
                seg, sub = self._enter(seg + 1)
            else:
                return None
        return (seg, sub)

    def min_rest(self, state: State) -> int:
        """Characters (each a single-character token) still needed to finish, EOS counted as one."""
        seg, sub = state
        kind, value = self.segments[seg]
        if kind == _LIT:
            return len(value) - sub + self._after[seg]
        if kind == _STR:
            own = 1 if sub == _NORMAL else 2 if sub == _BACKSLASH else (sub - 10) + 1
            return own + self._after[seg]
        if kind == _CHOICE:
            return 1 + self._after[seg]
        return 1

    def needed_chars(self) -> set[str]:
        chars = {'"', *self.labels}
        for kind, value in self.segments:
            if kind == _LIT:
                chars |= set(value)
        return chars


def frame_grammar(cfg: Any, completion_prefix: str) -> JsonGrammar:
    """The grammar of decoding config ``cfg``; raises ValueError if max_new_tokens cannot fit the frame."""
    frame = cfg.json_frame
    grammar = JsonGrammar(completion_prefix, frame.open, frame.middle, frame.close)
    if cfg.max_new_tokens < grammar.min_rest(grammar.start):
        raise ValueError(
            f"decoding.max_new_tokens={cfg.max_new_tokens} is too small for constrained decoding: "
            f"the JSON frame alone needs {grammar.min_rest(grammar.start)} tokens"
        )
    return grammar


class JsonConstraint(LogitsProcessor):
    """Masks every token that would take a row out of the JSON answer grammar (see the module docstring).

    For each grammar state it computes once, over the whole vocabulary, the characters still needed after
    each token (``_rest``; "never" for tokens that leave the grammar). A step's mask is then one comparison,
    ``rest <= tokens left - 1``, which also enforces the budget that closes the thought in time.
    """

    _NEVER = 1 << 30

    def __init__(
        self, vocab: VocabIndex, grammar: JsonGrammar, batch_rows: int, prompt_len: int, max_new_tokens: int
    ) -> None:
        missing = [c for c in sorted(grammar.needed_chars()) if c not in vocab.single_char]
        if missing:
            raise ValueError(
                f"constrained decoding: the tokenizer has no single-character token for {missing}"
            )
        if max_new_tokens < grammar.min_rest(grammar.start):
            raise ValueError(
                f"constrained decoding needs max_new_tokens >= {grammar.min_rest(grammar.start)} for the JSON frame"
            )
        self.vocab, self.grammar, self.max_new = vocab, grammar, max_new_tokens
        self.rows = _Rows(prompt_len)
        self.states: list[State | None] = [grammar.start] * batch_rows  # None: finished (EOS taken)
        self._rest: dict[tuple[State, torch.device], torch.Tensor] = {}
        texts = vocab.texts
        self._plain = torch.tensor(
            [bool(t) and all(c not in '"\\' and ord(c) >= 0x20 for c in t) for t in texts], dtype=torch.bool
        )
        self._quoted = [i for i, t in enumerate(texts) if t and ('"' in t or "\\" in t)]

    def _candidates(self, state: State) -> list[int]:
        kind = self.grammar.kind(state)
        if kind == _STR and state[1] == _NORMAL:
            return self._quoted  # plain tokens are handled in bulk
        if kind == _LIT:
            firsts = [self.grammar.segments[state[0]][1][state[1]]]
        elif kind == _CHOICE:
            firsts = sorted(self.grammar.labels)
        elif state[1] == _BACKSLASH:
            firsts = sorted(_ESCAPES | {"u"})
        else:
            firsts = sorted(_HEX)
        return [i for c in firsts for i in self.vocab.first_char.get(c, [])]

    def rest_after(self, state: State, device: torch.device) -> torch.Tensor:
        """Per token: characters still needed after taking it in ``state`` (``_NEVER`` if not allowed)."""
        key = (state, device)
        if key not in self._rest:
            g = self.grammar
            rest = torch.full((self.vocab.size,), self._NEVER, dtype=torch.int32)
            if g.kind(state) == _END:
                rest[self.vocab.eos_ids] = 0
            else:
                if g.kind(state) == _STR and state[1] == _NORMAL:
                    rest[self._plain] = g.min_rest(state)  # stays in the string, same state
                for i in self._candidates(state):
                    nxt = g.advance(state, self.vocab.texts[i])  # type: ignore[arg-type]
                    if nxt is not None:
                        rest[i] = g.min_rest(nxt)
            self._rest[key] = rest.to(device)
        return self._rest[key]

    def allowed(self, state: State, left: int) -> list[int]:
        """Token ids allowed in ``state`` with ``left`` tokens of budget (this one included)."""
        return torch.nonzero(self.rest_after(state, torch.device("cpu")) <= left - 1).flatten().tolist()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = self.rows.new_tokens(input_ids)
        if tokens is not None:
            for r, tok in enumerate(tokens):
                state = self.states[r]
                if state is None:
                    continue
                if self.grammar.kind(state) == _END and tok in self.vocab.eos_ids:
                    self.states[r] = None
                else:
                    # None only for a token this processor did not choose (a row another criterion stopped
                    # and generate pads): stop following that row.
                    self.states[r] = self.grammar.advance(state, self.vocab.text(tok))
        left = self.max_new - self.rows.seen
        # One (distinct states x vocab) table of "characters still needed"; each row picks its state's line.
        # A finished row (None) gets zeros: anything goes, generate pads it anyway.
        distinct = list(dict.fromkeys(self.states))
        device = scores.device
        finished = torch.zeros(self.vocab.size, dtype=torch.int32, device=device)
        table = torch.stack([finished if st is None else self.rest_after(st, device) for st in distinct])
        where = {st: k for k, st in enumerate(distinct)}
        pick = torch.tensor([where[st] for st in self.states], device=device)
        mask = table[pick] <= left - 1
        extra = scores.shape[1] - mask.shape[1]
        if extra > 0:  # the model's output layer may be padded beyond the tokenizer: never those ids
            mask = torch.cat(
                [mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool, device=device)], dim=1
            )
        mask = mask[:, : scores.shape[1]]
        return scores.masked_fill(~mask, float("-inf"))


# --------------------------------------------------------------------------------------------- label readout


_LABEL_KEY_END = re.compile(r'"predicted_label"\s*:\s*$')
_DIGIT_TOKEN = re.compile(r"\s*([01])(?![0-9.])")


@dataclass
class LabelProbs:
    p0: float
    p1: float

    @property
    def mass(self) -> float:
        return self.p0 + self.p1

    @property
    def p_label_1(self) -> float:
        return self.p1 / self.mass if self.mass > 0 else float("nan")


class LabelProbReadout(LogitsProcessor):
    """Records P("0") and P("1") of the next token whenever a row's text ends with ``"predicted_label":``."""

    def __init__(self, vocab: VocabIndex, batch_rows: int, prompt_len: int, tail_chars: int = 64) -> None:
        self.vocab, self.tail_chars = vocab, tail_chars
        self.rows = _Rows(prompt_len)
        self.tails = [""] * batch_rows
        ids = {"0": [], "1": []}
        for i, text in enumerate(vocab.texts):
            m = _DIGIT_TOKEN.match(text or "")
            if m:
                ids[m.group(1)].append(i)
        self.ids0, self.ids1 = torch.tensor(ids["0"]), torch.tensor(ids["1"])
        self.readings: list[LabelProbs | None] = [None] * batch_rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = self.rows.new_tokens(input_ids)
        if tokens is not None:
            for r, tok in enumerate(tokens):
                self.tails[r] = (self.tails[r] + self.vocab.text(tok))[-self.tail_chars :]
        hits = [r for r, tail in enumerate(self.tails) if _LABEL_KEY_END.search(tail)]
        if hits:
            probs = torch.softmax(scores[hits].float(), dim=-1).cpu()
            p0 = probs[:, self.ids0].sum(dim=-1).tolist()
            p1 = probs[:, self.ids1].sum(dim=-1).tolist()
            for k, r in enumerate(hits):
                self.readings[r] = LabelProbs(p0[k], p1[k])  # the last reading before the digit wins
        return scores


# --------------------------------------------------------------------------------------------- batch generation


@dataclass
class Generation:
    """One generated answer (one sample of one prompt)."""

    text: str
    n_tokens: int
    finish_reason: str  # json_closed | eos | max_new_tokens
    label_probs: LabelProbs | None = None
    token_ids: list[int] = field(
        default_factory=list
    )  # the generated ids (EOS included when it was generated)


@dataclass
class BatchResult:
    outputs: list[list[Generation]]  # per prompt, k samples
    seconds: float
    prompt_tokens: list[int] = field(default_factory=list)


def _generation_config(cfg: Any, tokenizer: Any, num_samples: int) -> GenerationConfig:
    sampling = bool(cfg.do_sample) or num_samples > 1
    kwargs: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": sampling,
        "num_beams": 1,
        "num_return_sequences": num_samples,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "repetition_penalty": cfg.repetition_penalty,
    }
    if sampling:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    return GenerationConfig(**kwargs)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if p:
            ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[r, width - len(p) :] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------- decoding modes


@dataclass
class ModeContext:
    """What a decoding mode's builder gets: the config, the vocabulary and the batch's shape."""

    cfg: Any  # a DecodingConfig (or a DictConfig with its fields)
    vocab: VocabIndex
    rows: int  # prompts x samples
    prompt_len: int  # the left-padded prompt width: generated tokens start here
    completion_prefix: str
    readout: LabelProbReadout | None = None  # set by the label_probs mode; each Generation carries its reading


def _label_probs_mode(ctx: ModeContext) -> LogitsProcessor:
    ctx.readout = LabelProbReadout(ctx.vocab, ctx.rows, ctx.prompt_len)
    return ctx.readout


def _constrained_mode(ctx: ModeContext) -> LogitsProcessor:
    grammar = frame_grammar(ctx.cfg, ctx.completion_prefix)
    return JsonConstraint(ctx.vocab, grammar, ctx.rows, ctx.prompt_len, ctx.cfg.max_new_tokens)


# A decoding mode is a bool field of DecodingConfig (help text, default, the YAML `decoding` node of predict and
# serve) plus a builder here: when the field is true, generate_batch adds the builder's logits processor. In this
# order: label_probs first, so it reads the model's own distribution before any mask. Adding a mode = that field +
# one entry (tests/test_decoding_modes.py plugs one in).
DECODING_MODES: dict[str, Callable[[ModeContext], LogitsProcessor]] = {
    "label_probs": _label_probs_mode,
    "constrained": _constrained_mode,
}


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated ids -> the answer's text, valid UTF-8 (``utf8_safe``: a token that decodes to half of a character,
    an unpaired surrogate, would make the JSON response or record of this text fail): batch decoding and serve's
    stream both decode through here."""
    return utf8_safe(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    cfg: Any,
    *,
    num_samples: int = 1,
    completion_prefix: str = "",
    streamer: Any = None,
) -> BatchResult:
    """Generate ``num_samples`` answers for each prompt (token ids) under decoding config ``cfg``.

    ``cfg`` fields: max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
    stop_at_json_close, constrained, label_probs, and ``json_frame`` (open, middle, close) for the constraint.
    ``streamer``: a transformers streamer handed to ``model.generate`` (one prompt, one sample; nli_cot.serve).
    """
    vocab = vocab_index(tokenizer, getattr(model.config, "vocab_size", None))
    rows = len(prompts) * num_samples
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    width = input_ids.shape[1]
    ctx = ModeContext(cfg, vocab, rows, width, completion_prefix)
    processors = LogitsProcessorList(
        build(ctx) for name, build in DECODING_MODES.items() if getattr(cfg, name, False)
    )
    readout = ctx.readout
    stop = JsonCloseStopping(vocab, rows, width) if cfg.stop_at_json_close else None
    criteria = StoppingCriteriaList([stop] if stop else [])
    gen_cfg = _generation_config(cfg, tokenizer, num_samples)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=gen_cfg,
            logits_processor=processors,
            stopping_criteria=criteria,
            streamer=streamer,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    generated = out[:, input_ids.shape[1] :].tolist()
    eos = set(vocab.eos_ids)
    results: list[Generation] = []
    for r, ids in enumerate(generated):
        n, reason = len(ids), "max_new_tokens"
        first_eos = next((k for k, t in enumerate(ids) if t in eos), None)
        closed = stop.state[r].closed_at if stop else None
        if closed is not None and (first_eos is None or closed <= first_eos):
            n, reason = closed, "json_closed"
        elif first_eos is not None:
            n, reason = first_eos + 1, "eos"
        text_ids = ids[:n]
        if reason == "eos":
            text_ids = text_ids[:-1]
        text = decode_text(tokenizer, text_ids)
        results.append(Generation(text, n, reason, readout.readings[r] if readout else None, ids[:n]))
    per_prompt = [results[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
    return BatchResult(per_prompt, seconds, [len(p) for p in prompts])


# --------------------------------------------------------------------------------------------- self-consistency


@dataclass(frozen=True)
class Vote:
    label: int | None
    share: float  # votes for the winner / all samples (unparsed samples count against it)
    counts: dict[str, int]  # "0", "1", "none"
    index: int | None  # the first sample that voted for the winner


def majority_vote(parsed: Sequence[ParseResult]) -> Vote:
    """Majority label of k parsed samples; a tie goes to the label of the earliest sample among the tied."""
    labels = [p.label for p in parsed]
    counts = Counter(label for label in labels if label is not None)
    tally = {"0": counts.get(0, 0), "1": counts.get(1, 0), "none": sum(label is None for label in labels)}
    if not counts:
        return Vote(None, 0.0, tally, None)
    top = max(counts.values())
    winner = next(label for label in labels if label is not None and counts[label] == top)
    return Vote(winner, top / len(labels), tally, labels.index(winner))
