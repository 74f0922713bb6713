"""CPU benchmark of SmolLM2-135M-Instruct on the demo task: zero-shot generation and LoRA training steps.

    .venv/bin/python experiments/bench_smollm2_cpu.py [--out experiments/results/smollm2_cpu.json]

Measures, on whatever CPU runs it (note the load: shared cores slow everything 2-7x):
- load time of the cached safetensors folder (converting the packaged GGUF first if needed),
- greedy zero-shot answers to the card's prompt through the ChatML template (``conf/prompt/chat.yaml``) on
  held-out demo pairs: new tokens/s at batch 1 and batch 8, parse rate and accuracy (a small sample:
  indicative only), fp32 and bf16,
- LoRA (r16, q/k/v/o) training steps on demo SFT examples, completion-only loss: s/step and real tokens/s,
  fp32 and bf16 autocast, on the demo's own lengths and on the 8x256 shape of shared/notes/stack-facts.md.

Standalone on purpose (plain transformers + peft, not the training stack) so the numbers describe the model
and the machine, not our code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from nli_cot.core.config import PromptConfig
from nli_cot.core.parsing import parse_output
from nli_cot.core.prompts import completion_text, encode_example, prompt_text
from nli_cot.models.smollm2 import smollm2_local_dir
from nli_cot.orchestration import demo_data

ROOT = Path(__file__).resolve().parents[1]


def load(path: str, dtype: torch.dtype):
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, time.perf_counter() - t


def zero_shot(model, tok, prompt_cfg, examples, batch: int, max_new_tokens: int) -> dict:
    tok.padding_side = "left"  # decoder-only batches must end where generation starts
    n_new, outputs, t0, c0 = 0, [], time.perf_counter(), time.process_time()
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        texts = [prompt_text(e.premise, e.hypothesis, prompt_cfg, tok) for e in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        new = out[:, enc["input_ids"].shape[1] :]
        n_new += int((new != tok.pad_token_id).sum())
        outputs += tok.batch_decode(new, skip_special_tokens=True)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    parsed = [parse_output(o) for o in outputs]
    labels = [p.label for p in parsed]
    return {
        "batch": batch,
        "examples": len(examples),
        "seconds": round(dt, 1),
        "new_tokens": n_new,
        "new_tok_per_s": round(n_new / dt, 1),
        # CPU seconds of this process: on shared cores wall time mostly measures the neighbours.
        "cpu_seconds": round(cpu, 1),
        "decode_steps": -(-len(examples) // batch) * max_new_tokens,
        "parse_rate": sum(x is not None for x in labels) / len(labels),
        "accuracy": sum(x == e.label for x, e in zip(labels, examples, strict=True)) / len(labels),
        "sample_output": outputs[0][:300],
    }


def train_steps(model, batches, steps: int, bf16: bool) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    times, cpus, losses, real = [], [], [], 0
    for step in range(steps + 1):  # step 0 warms up allocator and kernels; not timed
        ids, mask, labels = batches[step % len(batches)]
        t, c = time.perf_counter(), time.process_time()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with ctx:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
            real += int(mask.sum())
            print(f"  step {step}: {times[-1]:.1f} s wall, {cpus[-1]:.1f} s cpu", flush=True)
        losses.append(round(loss.item(), 3))
    total = sum(times)
    return {
        "bf16_autocast": bf16,
        "shape": list(batches[0][0].shape),
        "s_per_step": round(total / steps, 2),
        "real_tok_per_s": round(real / total, 1),
        "cpu_s_per_step": round(sum(cpus) / steps, 2),
        "losses": losses,
    }


def demo_batches(tok, prompt_cfg, examples, batch: int):
    out = []
    for i in range(0, len(examples), batch):
        rows = []
        for e in examples[i : i + batch]:
            r = encode_example(
                e.premise, e.hypothesis, completion_text(e.thought_process, e.label), prompt_cfg, tok
            )
            rows.append((r.prompt_ids + r.completion_ids, [-100] * len(r.prompt_ids) + r.completion_ids))
        width = max(len(ids) for ids, _ in rows)
        pad = tok.pad_token_id
        ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
        out.append((ids, mask, labels))
    return out


def fixed_batches(vocab: int, batch: int, length: int, n: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, length), generator=g)
        out.append((ids, torch.ones_like(ids), ids.clone()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache/models"))
    ap.add_argument("--n-zero-shot", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument("--phases", default="zero_shot_fp32,zero_shot_bf16,train_fp32,train_bf16")
    ap.add_argument("--shapes", default="demo,8x256", help="training batches: demo lengths and/or 8x256")
    ap.add_argument("--out", default=str(ROOT / "experiments/results/smollm2_cpu.json"))
    args = ap.parse_args()

    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, cpu capability {torch.backends.cpu.get_cpu_capability()}",
        "load_avg_start": os.getloadavg(),
    }
    t = time.perf_counter()
    path = smollm2_local_dir(args.cache_dir)
    result["local_dir_s"] = round(time.perf_counter() - t, 1)
    tok = AutoTokenizer.from_pretrained(path)
    # The YAML leaves the schema's defaults out (user_template, ...): merge it over the schema as Hydra would.
    prompt_yaml = OmegaConf.load(ROOT / "conf/prompt/chat.yaml")
    prompt_yaml.pop("defaults", None)
    prompt_cfg = OmegaConf.merge(OmegaConf.structured(PromptConfig), prompt_yaml)
    splits = demo_data.build_splits(64, 0, args.n_zero_shot, seed=0)
    test, train = splits["test"], splits["train"]
    result["prompt_tokens"] = len(
        tok(prompt_text(test[0].premise, test[0].hypothesis, prompt_cfg, tok))["input_ids"]
    )

    phases = args.phases.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase: a long run killed half-way still leaves its numbers
        out.write_text(json.dumps(result, indent=1) + "\n")

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if f"zero_shot_{name}" not in phases:
            continue
        print(time.strftime("%H:%M:%S"), "zero-shot", name, os.getloadavg(), flush=True)
        model, secs = load(path, dtype)
        result[f"load_{name}_s"] = round(secs, 1)
        model.eval()
        result[f"zero_shot_{name}"] = [
            zero_shot(model, tok, prompt_cfg, test[:4], 1, args.max_new_tokens),
            zero_shot(model, tok, prompt_cfg, test, 8, args.max_new_tokens),
        ]
        print(json.dumps(result[f"zero_shot_{name}"], indent=1), flush=True)
        save()

    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    tok.padding_side = "right"
    demo = demo_batches(tok, prompt_cfg, train, 8)
    result["demo_example_tokens"] = round(sum(int(m.sum()) for _, m, _ in demo) / len(train), 1)
    result["train"] = []
    shapes = {"demo": demo, "8x256": fixed_batches(tok.vocab_size, 8, 256, 2)}
    for bf16 in (False, True):
        if ("train_bf16" if bf16 else "train_fp32") not in phases:
            continue
        for shape in args.shapes.split(","):
            batches = shapes[shape]
            print(
                time.strftime("%H:%M:%S"), "train bf16" if bf16 else "train fp32", os.getloadavg(), flush=True
            )
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), lora)
            result["train"].append(train_steps(model, batches, args.train_steps, bf16))
            print(json.dumps(result["train"][-1]), flush=True)
            result["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            save()
    result["load_avg_end"] = os.getloadavg()
    save()
    print(json.dumps({k: v for k, v in result.items() if not k.startswith(("zero", "train"))}, indent=1))


if __name__ == "__main__":
    main()
