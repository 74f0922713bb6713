"""Where a decoding mode plugs in (issue #21): a bool field of DecodingConfig + a builder in DECODING_MODES."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from transformers import LogitsProcessor

from nli_cot.models import generation
from nli_cot.models.generation import DECODING_MODES, DecodingConfig, ModeContext, generate_batch


def test_every_mode_is_a_bool_field_of_the_schema_with_help():
    fields = {f.name: f for f in dataclasses.fields(DecodingConfig)}
    hints = typing.get_type_hints(DecodingConfig)
    for name in DECODING_MODES:
        assert name in fields, f"DECODING_MODES[{name!r}] has no DecodingConfig field"
        assert hints[name] is bool and fields[name].default is False, name  # off unless asked for
        assert "DECODING_MODES" in fields[name].metadata["help"]


def test_label_probs_comes_before_any_mask():
    assert list(DECODING_MODES)[0] == "label_probs"


class ForceEos(LogitsProcessor):
    """The new mode of the test: every row ends at once."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        out[:, self.eos_id] = 0.0
        return out


@dataclasses.dataclass
class DecodingWithForceEos(DecodingConfig):
    force_eos: bool = dataclasses.field(default=False, metadata={"help": "End every answer at once (a decoding "
                                                                           "mode: DECODING_MODES)."})


@pytest.fixture(scope="module")
def tiny(tiny_model_cfg, mistral_tokenizer):
    from nli_cot.models.modeling import load_base_model

    torch.manual_seed(0)
    return load_base_model(tiny_model_cfg, mistral_tokenizer).eval()


def test_a_new_mode_is_a_field_plus_a_builder(monkeypatch, tiny, mistral_tokenizer):
    built: list[ModeContext] = []

    def build(ctx: ModeContext) -> LogitsProcessor:
        built.append(ctx)
        return ForceEos(ctx.vocab.eos_ids[0])

    monkeypatch.setitem(generation.DECODING_MODES, "force_eos", build)
    prompts = [mistral_tokenizer.encode("Premise: a. Hypothesis: b.", add_special_tokens=False)] * 2
    common = {"max_new_tokens": 6, "stop_at_json_close": False}

    off = generate_batch(tiny, mistral_tokenizer, prompts, DecodingWithForceEos(**common))
    assert not built and all(g.n_tokens > 1 for p in off.outputs for g in p)  # the random model writes tokens

    on = generate_batch(tiny, mistral_tokenizer, prompts, DecodingWithForceEos(force_eos=True, **common))
    assert len(built) == 1 and built[0].rows == 2
    assert [(g.text, g.n_tokens, g.finish_reason) for p in on.outputs for g in p] == [("", 1, "eos")] * 2
