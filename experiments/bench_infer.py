"""CoT inference-speed benchmark: the model card's evaluation vs nli_cot's decoding modes, same machine and prompts.

    python experiments/bench_infer.py run --modes baseline,nli_q4 --model /tmp/m7b --results R.jsonl
    python experiments/bench_infer.py run --modes nli_bf16,nli_bf16_constrained --model /tmp/m7b --results R.jsonl
    python experiments/bench_infer.py report --results R.jsonl --out experiments/results/infer_h100

Prompts: the 512 test rows of experiments/bench_common.py (MNLI pairs, the card's prompt). A random-weight model
writes nothing a parser could read and never stops, so every mode decodes *scripted*: a logits processor (first in
the list, same on both sides) leaves only the next token of the answer a trained model would give (the row's
JSON completion, then EOS), so each row generates exactly its answer's length (108-305 tokens) at full model cost.
Only what decides speed differs between modes:
- baseline (the card): 4-bit NF4 base + LoRA adapter unmerged, HF ``generate`` in batches of 32 in file order,
  greedy, max_new_tokens 512, a batch runs until its longest answer's EOS. Timed on the first ``--baseline_n``
  prompts (default 64: 512 would take ~9 minutes); examples/s is per prompt, so it extrapolates linearly.
- nli_q4: the same 4-bit base + unmerged adapter through ``nli_cot.models.generation.generate_batch`` (the code
  ``python -m nli_cot.predict`` runs): all prompts in one length-sorted batch, each row stopped when its JSON
  object closes, grouped-query sdpa (nli_cot.training.fastpath) instead of repeat_kv over the KV cache.
- nli_bf16: bf16 base with the adapter merged, the same generate_batch call, plus a static KV cache and the
  compiled decode step (torch.compile, CUDA graphs). ``_constrained``: JsonConstraint on as well.
Reported per mode: examples/s, generated tokens/s (tokens each row needed: its answer incl. the closing brace
or EOS), per-step milliseconds, parse-valid rate (nli_cot.core.parsing), peak memory, warm-up/compile seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_common import REPO, append, fmt, gpu_mem, read, record_failure, status_cell, write_report  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Scripted:
    """LogitsProcessor: row r may only emit script[r][t] at step t (then EOS): a trained model's answer."""

    def __init__(self, scripts: list[list[int]], eos: int, device) -> None:
        width = max(len(s) for s in scripts) + 1
        table = torch.full((len(scripts), width), eos, dtype=torch.long)
        for r, s in enumerate(scripts):
            table[r, : len(s)] = torch.tensor(s)
        self.table = table.to(device)
        self.prompt_width: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        col = self.table[:, min(step, self.table.shape[1] - 1)]
        if col.shape[0] != scores.shape[0]:
            raise RuntimeError("scripted rows do not match the batch")
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, col[:, None], 0.0)


def patch_generate(model, extra: dict) -> dict:
    """Prepend the current script processor to every generate call (and add ``extra`` kwargs)."""
    from transformers import LogitsProcessorList

    state: dict = {"script": None}
    orig = model.generate

    def generate(*args, logits_processor=None, **kw):
        script = state["script"]
        script.prompt_width = kw["input_ids"].shape[1]
        procs = LogitsProcessorList([script, *(logits_processor or [])])
        return orig(*args, logits_processor=procs, **{**kw, **extra})

    model.generate = generate
    return state


def load_rows(tok, n: int):
    """Prompt ids and the answer ids (completion + EOS) of the test rows, via nli_cot's card prompt."""
    from hydra import compose, initialize_config_dir

    import nli_cot.core.config  # noqa: F401
    from nli_cot.core.prompts import completion_text, encode_example

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        prompt_cfg = compose(config_name="config", overrides=["prompt=card"]).prompt
    rows = [json.loads(line) for line in open(REPO / ".bench" / "test.jsonl")][:n]
    out = []
    for r in rows:
        ex = encode_example(
            r["premise"], r["hypothesis"], completion_text(r["thought_process"], r["label"]), prompt_cfg, tok
        )
        out.append({"id": r["id"], "prompt": ex.prompt_ids, "answer": ex.completion_ids, "label": r["label"]})
    return out, prompt_cfg


def decoding_cfg(**over):
    from omegaconf import OmegaConf

    from nli_cot.models.generation import DecodingConfig

    cfg = OmegaConf.structured(DecodingConfig)
    for k, v in over.items():
        cfg[k] = v
    return cfg


def load_model(model_dir: str, quant: bool, tok):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kw = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if torch.cuda.is_available():
        kw["device_map"] = {"": 0}
        if quant:
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
    t0 = time.time()
    base = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    torch.manual_seed(0)  # a trained-looking adapter: random A and B (B=0 would make LoRA a no-op to merge)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    model = get_peft_model(base, lora)
    model.eval()
    return model, time.time() - t0


def summarise(rec: dict, results, rows, seconds: float, steps: int | None = None) -> None:
    from nli_cot.core.parsing import parse_output

    n_tok = [g.n_tokens for out in results for g in out]
    parsed = [parse_output(g.text) for out in results for g in out]
    labels = [p.label for p in parsed]
    rec.update(
        n_prompts=len(rows),
        seconds=seconds,
        examples_per_s=len(rows) / seconds,
        gen_tokens=sum(n_tok),
        gen_tok_per_s=sum(n_tok) / seconds,
        mean_answer_tokens=sum(n_tok) / len(n_tok),
        parse_valid_rate=sum(p.ok for p in parsed) / len(parsed),
        label_match_rate=sum(lab == r["label"] for lab, r in zip(labels, rows, strict=True)) / len(rows),
        finish_reasons={
            k: sum(g.finish_reason == k for out in results for g in out) for k in ("json_closed", "eos")
        },
    )
    if steps:
        rec["decode_steps"] = steps
        rec["ms_per_step"] = 1000 * seconds / steps


def run_generate_batch(model, tok, rows, cfg, extra, batch: int, sort: bool):
    """nli_cot.models.generation.generate_batch over ``rows`` (optionally length-sorted), scripted."""
    from nli_cot.models.generation import generate_batch

    state = patch_generate(model, extra)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["prompt"])) if sort else list(range(len(rows)))
    outs: list = [None] * len(rows)
    steps = 0
    dev = next(model.parameters()).device
    sync()
    t0 = time.perf_counter()
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        state["script"] = Scripted([rows[i]["answer"] for i in idx], tok.eos_token_id, dev)
        res = generate_batch(model, tok, [rows[i]["prompt"] for i in idx], cfg, completion_prefix=" ")
        steps += max(g.n_tokens for out in res.outputs for g in out)
        for i, out in zip(idx, res.outputs, strict=True):
            outs[i] = out
    sync()
    del model.generate  # unpatch: the class method again
    return outs, time.perf_counter() - t0, steps


def mode_baseline(model, tok, rows, a, rec) -> None:
    """The card: HF generate on 4-bit + unmerged LoRA, batch 32 in file order, greedy, 512 new tokens, EOS stop."""
    cfg = decoding_cfg(max_new_tokens=512, stop_at_json_close=False, constrained=False)
    sub = rows[: a.baseline_n]
    run_generate_batch(
        model, tok, sub[:4], decoding_cfg(max_new_tokens=8, stop_at_json_close=False), {}, 4, False
    )
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    outs, secs, steps = run_generate_batch(model, tok, sub, cfg, {}, 32, False)
    summarise(rec, outs, sub, secs, steps)
    rec["note"] = f"timed on the first {len(sub)} prompts (batches of 32); examples/s extrapolates per prompt"


def mode_nli(model, tok, rows, a, rec, compiled: bool, constrained: bool) -> None:
    from transformers import CompileConfig

    from nli_cot.training import fastpath

    fastpath.set_attention(model, fastpath.GROUPED_SDPA)
    extra = {}
    if compiled:
        extra = {
            "cache_implementation": "static",
            "compile_config": CompileConfig(fullgraph=True, mode="reduce-overhead", dynamic=False),
        }
    cfg = decoding_cfg(max_new_tokens=512, stop_at_json_close=True, constrained=constrained)
    batch = a.batch or len(rows)
    if compiled:  # compile + CUDA-graph capture on the exact shapes of the timed call, outside the timing
        t0 = time.time()
        run_generate_batch(model, tok, rows, cfg, extra, batch, True)
        rec["warmup_s"] = time.time() - t0
    else:
        run_generate_batch(model, tok, rows[:4], decoding_cfg(max_new_tokens=8), {}, 4, True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    outs, secs, steps = run_generate_batch(model, tok, rows, cfg, extra, batch, True)
    summarise(rec, outs, rows, secs, steps)
    rec["batch"] = batch


def mode_nli_retrying(model, tok, rows, a, rec, compiled: bool, constrained: bool) -> None:
    """mode_nli; on out-of-memory, again with half the rows per generate call."""
    try:
        mode_nli(model, tok, rows, a, rec, compiled, constrained)
    except torch.OutOfMemoryError as err:
        rec["oom_at_batch"] = a.batch or len(rows)
        rec["oom_error"] = str(err)[:300]
        gc.collect()
        torch.cuda.empty_cache()
        a.batch = (a.batch or len(rows)) // 2
        mode_nli(model, tok, rows, a, rec, compiled, constrained)


MODES = {
    "baseline": ("card: 4-bit + LoRA unmerged, HF generate, batch 32, EOS stop", True),
    "nli_q4": ("nli_cot 4-bit + LoRA unmerged, one sorted batch, stop at }, grouped sdpa", True),
    "nli_q4_constrained": ("nli_q4 + JSON-constrained decoding", True),
    "nli_bf16": ("nli_cot bf16 merged, static cache + compiled decode, stop at }, grouped sdpa", False),
    "nli_bf16_constrained": ("nli_bf16 + JSON-constrained decoding", False),
    "nli_bf16_eager": ("nli_cot bf16 merged, no compile, stop at }, grouped sdpa", False),
}


def cmd_run(a) -> None:
    from transformers import AutoTokenizer

    from nli_cot.models.modeling import configure_cuda_memory

    budget = configure_cuda_memory(a.alloc_conf, a.cuda_memory_gib)  # as predict does, before the model loads
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token
    rows, _ = load_rows(tok, a.n)
    modes = a.modes.split(",")
    loaded: dict = {}
    for mode in modes:
        desc, quant = MODES[mode]
        rec = {"stage": "infer", "mode": mode, "description": desc, "memory_budget": budget, "batch_arg": a.batch}
        try:
            if loaded.get("quant") != quant:
                loaded.clear()
                gc.collect()
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
                model, load_s = load_model(a.model, quant, tok)
                if not quant:
                    t0 = time.time()
                    model = model.merge_and_unload()
                    rec["merge_s"] = time.time() - t0
                loaded.update(quant=quant, model=model)
                rec["load_s"] = load_s
            model = loaded["model"]
            if mode == "baseline":
                mode_baseline(model, tok, rows, a, rec)
            else:
                mode_nli_retrying(
                    model,
                    tok,
                    rows,
                    a,
                    rec,
                    compiled=mode.startswith("nli_bf16") and "eager" not in mode,
                    constrained=mode.endswith("constrained"),
                )
            rec["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - one failed mode must not stop the others
            record_failure(rec, err)
        rec["mem"] = gpu_mem()
        append(a.results, rec)




def cmd_report(a) -> None:
    recs = read(a.results)
    env = next((r for r in recs if r.get("stage") == "env"), {})
    runs = [r for r in recs if r.get("stage") == "infer"]
    base = next((r for r in runs if r["mode"] == "baseline" and r.get("status") == "ok"), None)
    lines = [
        f"# CoT inference speed: card evaluation vs nli_cot ({env.get('gpu', '?')}, {env.get('date', '?')})",
        "",
        f"Versions: {json.dumps(env.get('versions', {}))}",
        "",
        "Random-weight Mistral-7B-v0.3 shape + LoRA r16 (q,k,v,o), the card's prompt on 512 MNLI test pairs, greedy, "
        "max_new_tokens 512, scripted answers (each row writes its reference JSON answer, 108-305 tokens; see "
        "experiments/bench_infer.py).",
        "",
        "| mode | prompts | examples/s | x baseline | generated tok/s | ms/step | parse-valid | peak alloc GiB "
        "| warm-up s | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        eps = r.get("examples_per_s")
        ratio = eps / base["examples_per_s"] if (base and eps) else None
        lines.append(
            f"| {r['mode']} | {fmt(r.get('n_prompts'))} | {fmt(eps, 2)} | {fmt(ratio, 1)} | {fmt(r.get('gen_tok_per_s'))} "
            f"| {fmt(r.get('ms_per_step'), 1)} | {fmt(r.get('parse_valid_rate'), 3)} "
            f"| {fmt((r.get('mem') or {}).get('max_alloc_GiB'), 1)} | {fmt(r.get('warmup_s'), 0)} | {status_cell(r)} |"
        )
    lines += ["", "Modes:"] + [
        f"- `{r['mode']}`: {r.get('description', '')}. {r.get('note', '')}" for r in runs
    ]
    text = "\n".join(lines) + "\n"
    write_report(a.out, text, {"env": env, "runs": runs})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--modes", default="baseline,nli_q4")
    r.add_argument("--model", default="/tmp/m7b")
    r.add_argument("--results", required=True)
    r.add_argument("--n", type=int, default=512)
    r.add_argument("--baseline_n", type=int, default=64)
    r.add_argument("--batch", type=int, default=0, help="nli modes: rows per generate call (0: all at once)")
    r.add_argument("--alloc_conf", default=None, help="nli_cot's predict.cuda_alloc_conf (e.g. expandable_segments:True)")
    r.add_argument("--cuda_memory_gib", type=float, default=None, help="nli_cot's predict.cuda_memory_gib (a cap)")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.cmd == "run":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cmd_run(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
