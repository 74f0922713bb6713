"""Shared pieces of the speed benchmarks (experiments/bench_train.py, experiments/bench_infer.py).

- ``make_model``: a randomly initialised Mistral-7B-v0.3-shaped model (hidden 4096, 32 layers, 32 heads, 8 KV heads,
  MLP 14336, vocab 32768) in bf16, N(0, 0.02) weights, saved with the v3 tokenizer (speed and memory do not depend
  on weight values). ``--tiny`` makes a 2-layer model of the same vocabulary for CPU smoke tests.
- ``make_data``: realistic NLI chain-of-thought SFT records: MNLI pairs (premises of 5-24 words) rendered with
  the card's prompt (mean 111 tokens), synthetic thoughts of 90-290 tokens (triangular, mode 100): completions
  average 179 tokens (108-305), whole examples 290 (204-426); a random batch of 16 is 23% padding. Written once here and carried to the GPU, so both stacks see the same rows.
- Recording: JSON lines with the stage, device, versions; ``env_record`` measures the bf16 GEMM ceiling used for MFU.

The method is the project's (nli_cot.core.prompts renders the text); the token ids are the same for both stacks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPM_NAME = "mistral_instruct_tokenizer_240323.model.v3"
FLOP_PER_TOKEN = 4 * 7.25e9  # LoRA on a frozen 7B base: forward 2N + input-gradients 2N (no weight gradients)

REASONING = (
    "the premise says that there is so we know because which means it follows this does not imply the "
    "hypothesis claims however nothing in suggests indicates that since therefore we cannot conclude whether "
    "is also describes states mentions a an one some they he she it person people man woman group are was "
    "were not no every both either only just even already still thus hence although while whereas given "
    "scene context detail information statement evidence entail contradict support infer assume determine"
).split()


def spm_path() -> Path:
    """The Mistral v3 sentencepiece model: $BENCH_SPM, .bench/, or the installed mistral-common package."""
    env = os.environ.get("BENCH_SPM")
    if env:
        return Path(env)
    local = REPO / ".bench" / SPM_NAME
    if local.exists():
        return local
    spec = importlib.util.find_spec("mistral_common")
    if spec and spec.submodule_search_locations:
        return Path(spec.submodule_search_locations[0]) / "data" / SPM_NAME
    raise FileNotFoundError(f"{SPM_NAME}: set BENCH_SPM or copy it to .bench/")


def save_tokenizer(out: Path) -> None:
    from transformers import LlamaTokenizer

    tmp = out / "_spm"
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(spm_path(), tmp / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(str(tmp))
    tok.save_pretrained(str(out))
    shutil.rmtree(tmp)


def mistral_config(tiny: bool = False):
    from transformers import MistralConfig

    shape = (
        dict(
            hidden_size=64,
            intermediate_size=224,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
        )
        if tiny
        else dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
        )
    )
    return MistralConfig(
        vocab_size=32768,
        max_position_embeddings=32768,
        rope_theta=1e6,
        sliding_window=None,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
        **shape,
    )


def make_model(out: Path, tiny: bool = False) -> dict:
    import torch
    from transformers import MistralForCausalLM

    if (out / "config.json").exists():
        return {"stage": "make_model", "status": "reused", "dir": str(out)}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    torch.manual_seed(0)
    cfg = mistral_config(tiny)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        model = MistralForCausalLM(cfg)
    torch.set_default_dtype(prev)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)
    model.generation_config.pad_token_id = 0
    t1 = time.time()
    model.save_pretrained(str(out))
    save_tokenizer(out)
    n = sum(p.numel() for p in model.parameters())
    return {"stage": "make_model", "status": "ok", "params": n, "init_s": t1 - t0, "save_s": time.time() - t1}


# ----------------------------------------------------------------------------------------------------- data
def _thought(rng: random.Random, words: list[str], n_tokens: int, tok_len: dict[str, int]) -> str:
    out, total = [], 0
    while total < n_tokens:
        w = rng.choice(words) if rng.random() < 0.35 and words else rng.choice(REASONING)
        out.append(w)
        total += tok_len.setdefault(w, 0) or 1
    text = " ".join(out)
    return text[0].upper() + text[1:] + "."


def make_data(pairs_file: Path, out_dir: Path, n_train: int = 2000, n_test: int = 512, seed: int = 0) -> dict:
    """SFT records (train) and test records (with the completion a trained model would write) as JSONL."""
    from transformers import LlamaTokenizer

    tmp = out_dir / "_tok"
    if not (tmp / "tokenizer_config.json").exists():
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copy(spm_path(), tmp / "tokenizer.model")
        LlamaTokenizer.from_pretrained(str(tmp)).save_pretrained(str(tmp))
    tok = LlamaTokenizer.from_pretrained(str(tmp))
    rng = random.Random(seed)
    pairs = [json.loads(line) for line in open(pairs_file)]
    rng.shuffle(pairs)
    pairs = [p for p in pairs if 5 <= len(p["premise"].split()) <= 24][: n_train + n_test]
    vocab = sorted(
        {w.strip(".,") for p in pairs for w in (p["premise"] + " " + p["hypothesis"]).lower().split()} - {""}
    )
    tok_len = {w: len(tok.encode(" " + w, add_special_tokens=False)) for w in vocab + REASONING}
    rows = []
    for i, p in enumerate(pairs):
        n_thought = int(rng.triangular(90, 290, 100))
        words = [
            w.strip(".,") for w in (p["premise"] + " " + p["hypothesis"]).lower().split() if w.strip(".,")
        ]
        rows.append(
            {
                "id": f"bench-{i}",
                "premise": p["premise"],
                "hypothesis": p["hypothesis"],
                "thought_process": _thought(rng, words, n_thought, tok_len),
                "label": int(p["label"]),
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "sft_train.jsonl", "w") as f:
        for r in rows[:n_train]:
            f.write(json.dumps(r) + "\n")
    with open(out_dir / "test.jsonl", "w") as f:
        for r in rows[n_train:]:
            f.write(json.dumps(r) + "\n")
    return {"train": n_train, "test": len(rows) - n_train}


# ------------------------------------------------------------------------------------------------ recording
def versions() -> dict:
    v = {"python": sys.version.split()[0]}
    for m in [
        "torch",
        "transformers",
        "peft",
        "trl",
        "bitsandbytes",
        "accelerate",
        "pytorch_lightning",
        "datasets",
        "hydra",
        "triton",
    ]:
        try:
            v[m] = importlib.import_module(m).__version__
        except Exception as err:  # noqa: BLE001 - record whatever broke
            v[m] = f"ERR {type(err).__name__}: {str(err)[:120]}"
    return v


def append(path: str | Path, rec: dict) -> None:
    rec = dict(rec, wall_time=time.time())
    with open(path, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")
    print("RESULT", json.dumps(rec, default=str)[:2000], flush=True)


def write_report(out: str | None, text: str, payload: dict) -> None:
    """Print a results table and, with ``out``, keep it as ``<out>.md`` + ``<out>.json``."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".md").write_text(text)
        Path(out + ".json").write_text(json.dumps(payload, indent=1, default=str))


def read(path: str | Path) -> list[dict]:
    out = []
    if not Path(path).exists():
        return out
    for line in open(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def record_failure(rec: dict, err: BaseException) -> None:
    """A failed run or mode, in its record: out-of-memory told apart from other errors, with the traceback's tail
    (one failure must not stop the runs after it)."""
    import torch

    oom = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
    rec.update(
        status="oom" if oom else "error",
        error=f"{type(err).__name__}: {str(err)[:1500]}",
        traceback_tail=traceback.format_exc()[-3000:],
    )


def fmt(x, nd: int = 0) -> str:
    """A report cell: '-' for a missing value, thousands separators for numbers."""
    return "-" if x is None else (f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x))


def status_cell(r: dict) -> str:
    """A report's status cell: 'ok', or the failure kind with the start of its error."""
    return r.get("status") if r.get("status") == "ok" else f"{r.get('status')}: {(r.get('error') or '')[:80]}"


def gpu_mem() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "max_alloc_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "max_reserved_GiB": torch.cuda.max_memory_reserved() / 2**30,
    }


def env_record() -> dict:
    import torch

    rec = {"stage": "env", "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rec.update(
            gpu=torch.cuda.get_device_name(0),
            sm_count=props.multi_processor_count,
            total_mem_GiB=props.total_memory / 2**30,
            cuda=torch.version.cuda,
        )
        try:
            rec["nvidia_smi"] = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except Exception as err:  # noqa: BLE001
            rec["nvidia_smi"] = repr(err)
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(20):
            a @ b
        e.record()
        torch.cuda.synchronize()
        rec["bf16_gemm_TFLOPs"] = 2 * 8192**3 * 20 / (s.elapsed_time(e) / 1e3) / 1e12
    else:
        rec["gpu"] = "cpu"
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--out", default="/tmp/m7b")
    m.add_argument("--tiny", action="store_true")
    m.add_argument("--results", default=None)
    d = sub.add_parser("data")
    d.add_argument("--pairs", default=str(REPO.parent / "shared" / "data" / "mnli" / "dev_matched.jsonl"))
    d.add_argument("--out", default=str(REPO / ".bench"))
    d.add_argument("--n_train", type=int, default=2000)
    d.add_argument("--n_test", type=int, default=512)
    e = sub.add_parser("env")
    e.add_argument("--results", required=True)
    a = ap.parse_args()
    if a.cmd == "model":
        rec = make_model(Path(a.out), a.tiny)
        if a.results:
            append(a.results, rec)
        else:
            print(rec)
    elif a.cmd == "data":
        print(make_data(Path(a.pairs), Path(a.out), a.n_train, a.n_test))
        spm = Path(a.out) / SPM_NAME  # the GPU machine has no mistral-common: the model stage reads it from here
        if not spm.exists():
            shutil.copy(spm_path(), spm)
    else:
        append(a.results, env_record())


if __name__ == "__main__":
    main()
