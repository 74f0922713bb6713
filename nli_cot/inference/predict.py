"""Stage: predictions JSONL from a base model (+ adapter) over NLI pairs.

    python -m nli_cot.predict pairs=esnli model=mistral_7b_v0_3 adapter.path=jd0g/Mistral-v0.3-Thinking_NLI \\
        adapter.subfolder=Mistral_Thinking_Abl1/checkpoint-1250 output=outputs/predictions/abl1/esnli_dev.jsonl

Features
- Base model and tokenizer from ``nli_cot.models.modeling`` (hub id or directory, 4-bit NF4 or bf16, the tiny random
  model for tests); adapter from a folder or ``repo`` + ``subfolder`` as in the model card, optionally merged.
- Prompts from ``nli_cot.core.prompts`` (the card's ``[INST] ... [/INST]`` by default, or a chat template).
- Batches of prompts sorted by length (little padding), left-padded; greedy by default, sampling by config;
  each row stops when its JSON object closes (``nli_cot.models.generation``).
- ``decoding.constrained=true``: every output is ``{"thought_process": "...", "predicted_label": 0|1}``.
- ``decoding.self_consistency=k``: k sampled answers per pair, majority vote, vote share as confidence.
- ``decoding.label_probs=true``: P("0") / P("1") at the label position, as a score.
- Resumable: records go through ``nli_cot.core.records.RecordWriter`` (one complete, fsynced line per pair);
  a re-run skips the ids already in ``output``, so a killed run loses at most the batch in flight and never
  duplicates a record. A resumed run refuses a file made with another model/adapter/prompt/decoding
  (``allow_mixed=true`` overrides).
- One record per pair: id, premise, hypothesis, gold ``label``, ``raw_text``, ``thought``, ``predicted_label``,
  parse ``rule`` and ``ok``, ``n_generated_tokens``, ``n_prompt_tokens``, ``finish_reason``, ``latency_s``
  (wall time of the batch the pair was in) and ``batch_size``; plus votes / samples / label probabilities
  when asked. ``<output>.summary.json``: examples/s, generated tokens/s, parse failures, accuracy of this run.
- Exit codes: 0 done, 2 bad input or config (one line, no traceback).

Limits
- Sampling is seeded per batch from ``seed`` and the batch's ids: a re-run with the same batches reproduces
  the samples, a resumed run (different batches) does not.
- ``latency_s`` is per batch, not per example: with batching, an example waits for its whole batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from nli_cot.core.config import ModelConfig, PromptConfig, register_schema
from nli_cot.core.pairs import Pair, PairsConfig, PairsError, load_pairs
from nli_cot.core.parsing import parse_output
from nli_cot.core.records import RecordFileError, RecordWriter, read_records, write_json_atomic
from nli_cot.models.generation import (
    DecodingConfig,
    Generation,
    frame_grammar,
    generate_batch,
    majority_vote,
)

log = logging.getLogger(__name__)
EXIT_BAD_INPUT = 2


class PredictError(RuntimeError):
    """A user-facing problem with the inputs or outputs of prediction (one line, no traceback)."""


@dataclass
class AdapterConfig:
    path: str | None = field(
        default=None,
        metadata={"help": "PEFT folder or hub repo; None: the base model alone."},
    )
    subfolder: str | None = field(
        default=None,
        metadata={"help": "e.g. Mistral_Thinking_Abl1/checkpoint-1250 (the card's layout)"},
    )
    merge: bool = field(
        default=False,
        metadata={
            "help": "Merge LoRA into the base weights before decoding (faster; lossy "
            "re-quantisation with 4-bit)."
        },
    )


@dataclass
class PredictConfig:
    pairs: PairsConfig = field(default=MISSING, metadata={"help": "The pairs to answer (conf/pairs/)."})
    model: ModelConfig = field(default=MISSING, metadata={"help": "The base model (conf/model/)."})
    prompt: PromptConfig = field(
        default=MISSING,
        metadata={"help": "The prompt template, as the adapter was trained (conf/prompt/)."},
    )
    adapter: AdapterConfig = field(
        default_factory=AdapterConfig,
        metadata={"help": "The PEFT adapter on the base model, if any."},
    )
    decoding: DecodingConfig = field(
        default_factory=DecodingConfig,
        metadata={"help": "How answers are decoded."},
    )
    data_root: str = field(
        default="../shared/data",
        metadata={"help": "Folder of the shared data sets (pairs paths interpolate it)."},
    )
    run_name: str = field(
        default=MISSING,
        metadata={"help": "Name of this model/adapter in the output path."},
    )
    output: str = field(
        default=MISSING,
        metadata={"help": "Predictions JSONL (resumed: ids already in it are skipped)."},
    )
    batch_size: int = field(default=16, metadata={"help": "Pairs decoded together."})
    sort_by_length: bool = field(
        default=True,
        metadata={"help": "Batch pairs of similar prompt length (less padding)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling."})
    limit: int | None = field(default=None, metadata={"help": "Answer only the first N pairs; null: all."})
    max_batches: int | None = field(
        default=None,
        metadata={"help": "stop after this many batches (a partial run; re-run to continue)"},
    )
    keep_samples: bool = field(
        default=True,
        metadata={"help": "with self-consistency: keep every sample's text in the record."},
    )
    allow_mixed: bool = field(
        default=False,
        metadata={"help": "Resume onto a file made with another model, adapter, prompt or decoding."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    cuda_alloc_conf: str | None = field(
        default="expandable_segments:True",
        metadata={"help": "CUDA caching-allocator setting (unless PYTORCH_CUDA_ALLOC_CONF is set): expandable "
                  "segments keep reserved memory near allocated memory while the KV cache grows."},
    )
    cuda_memory_gib: float | None = field(
        default=None,
        metadata={"help": "Cap on the device memory this process may allocate (GiB); null: the whole card."},
    )


register_schema(PredictConfig, name="predict_schema")


def config_hash(cfg: Any) -> str:
    """What decides the outputs (model, adapter, prompt, decoding): records of different hashes don't mix."""
    keys = ("model", "adapter", "prompt", "decoding")
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys}
    # model.gguf_file was a key no code read (removed, issue #21); hashed as it always was (null), so prediction
    # files begun before its removal still resume.
    parts["model"].setdefault("gguf_file", None)
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_resume(existing: list[dict[str, Any]], chash: str, output: str, allow: bool) -> None:
    if allow:
        return
    for rec in existing:
        if rec.get("config_hash") != chash:
            raise PredictError(
                f"{output}: record {rec.get('id')!r} was made with config {rec.get('config_hash')!r}, this run is "
                f"{chash!r} (model/adapter/prompt/decoding differ); write to a new output or pass allow_mixed=true"
            )


def load_model(cfg: Any) -> tuple[Any, Any]:
    """Tokenizer and eval-mode model (+ adapter), on the GPU when there is one."""
    from nli_cot.models.modeling import load_adapter, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model, tokenizer, for_training=False)
    if cfg.adapter.path:
        model = load_adapter(model, cfg.adapter.path, cfg.adapter.subfolder, merge=cfg.adapter.merge)
    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model = model.to("cuda")
    model.eval()
    return tokenizer, model


def _batch_seed(seed: int, ids: list[str]) -> int:
    digest = hashlib.sha256((str(seed) + "\0" + "\0".join(ids)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_record(
    pair: Pair,
    samples: list[Generation],
    n_prompt: int,
    seconds: float,
    batch_size: int,
    cfg: Any,
    chash: str,
) -> dict[str, Any]:
    """The record of one pair from its generated sample(s)."""
    parsed = [parse_output(g.text) for g in samples]
    chosen = 0
    extra: dict[str, Any] = {}
    if len(samples) > 1:
        vote = majority_vote(parsed)
        chosen = vote.index if vote.index is not None else 0
        extra = {"vote_share": vote.share, "votes": vote.counts}
        if cfg.keep_samples:
            extra["samples"] = [
                {
                    "raw_text": g.text,
                    "predicted_label": p.label,
                    "rule": p.rule,
                    "n_generated_tokens": g.n_tokens,
                }
                for g, p in zip(samples, parsed, strict=True)
            ]
    g, p = samples[chosen], parsed[chosen]
    record: dict[str, Any] = {
        "id": pair.id,
        "premise": pair.premise,
        "hypothesis": pair.hypothesis,
        "label": pair.label,
        "raw_text": g.text,
        "thought": p.thought,
        "predicted_label": p.label,
        "rule": p.rule,
        "ok": p.ok,
        "n_generated_tokens": g.n_tokens,
        "n_generated_tokens_all_samples": sum(s.n_tokens for s in samples),
        "n_prompt_tokens": n_prompt,
        "finish_reason": g.finish_reason,
        "latency_s": seconds,
        "batch_size": batch_size,
        **extra,
    }
    if cfg.decoding.label_probs:
        lp = g.label_probs
        record["label_probs"] = (
            None if lp is None else {"p0": lp.p0, "p1": lp.p1, "p_label_1": lp.p_label_1, "mass": lp.mass}
        )
    record["config_hash"] = chash
    return record


def run(cfg: Any) -> dict[str, Any]:
    """Predict every pair of ``cfg.pairs`` not yet in ``cfg.output``; return this run's summary."""
    from nli_cot.core.checks import check_config

    check_config(cfg)  # unknown keys and numeric ranges, before any data or model is loaded
    dec = cfg.decoding
    if dec.self_consistency < 1:
        raise PredictError(f"decoding.self_consistency must be >= 1, got {dec.self_consistency}")
    if dec.constrained:
        frame_grammar(dec, cfg.prompt.completion_prefix)  # fail before loading a model
    pairs = load_pairs(cfg.pairs).pairs
    if cfg.limit is not None:
        pairs = pairs[: cfg.limit]
    chash = config_hash(cfg)
    _check_resume(read_records(cfg.output), chash, cfg.output, cfg.allow_mixed)
    with RecordWriter(cfg.output, lock=True) as writer:
        todo = [p for p in pairs if p.id not in writer.done_ids]
        summary: dict[str, Any] = {
            "output": str(cfg.output),
            "pairs": len(pairs),
            "already_done": len(pairs) - len(todo),
            "done": 0,
            "config_hash": chash,
        }
        if not todo:
            log.info("all %d pairs already predicted in %s", len(pairs), cfg.output)
            return summary
        from nli_cot.models.modeling import configure_cuda_memory

        configure_cuda_memory(cfg.cuda_alloc_conf, cfg.cuda_memory_gib)  # before the model takes device memory
        tokenizer, model = load_model(cfg)
        batches = plan_batches(todo, tokenizer, cfg)
        summary.update(predict_batches(batches, model, tokenizer, writer, cfg, chash))
    _write_summary(cfg.output, summary)
    return summary


def plan_batches(pairs: list[Pair], tokenizer: Any, cfg: Any) -> list[list[tuple[Pair, list[int]]]]:
    """The pairs' prompts (token ids) in batches of ``cfg.batch_size``, longest first when ``sort_by_length``."""
    from nli_cot.core.prompts import encode_prompt

    encoded = [(p, encode_prompt(p.premise, p.hypothesis, cfg.prompt, tokenizer)) for p in pairs]
    if cfg.sort_by_length:
        encoded.sort(key=lambda item: -len(item[1]))  # longest first: an OOM shows up at once
    batches = [encoded[i : i + cfg.batch_size] for i in range(0, len(encoded), cfg.batch_size)]
    if cfg.max_batches is not None:
        batches = batches[: cfg.max_batches]
    return batches


def predict_batches(
    batches: list, model: Any, tokenizer: Any, writer: RecordWriter, cfg: Any, chash: str
) -> dict:
    from tqdm import tqdm

    dec = cfg.decoding
    k = dec.self_consistency
    done = correct = parsed_ok = tokens = 0
    seconds = 0.0
    wall = time.perf_counter()
    bar = tqdm(total=sum(len(b) for b in batches), desc="predict", unit="pair", disable=not cfg.progress)
    for batch in batches:
        if dec.do_sample or k > 1:
            torch.manual_seed(_batch_seed(cfg.seed, [p.id for p, _ in batch]))
        result = generate_batch(
            model,
            tokenizer,
            [ids for _, ids in batch],
            dec,
            num_samples=k,
            completion_prefix=cfg.prompt.completion_prefix,
        )
        seconds += result.seconds
        for (pair, ids), samples in zip(batch, result.outputs, strict=True):
            record = make_record(pair, samples, len(ids), result.seconds, len(batch), cfg, chash)
            writer.append(record)
            done += 1
            parsed_ok += record["ok"]
            correct += record["label"] is not None and record["predicted_label"] == record["label"]
            tokens += record["n_generated_tokens_all_samples"]
        bar.update(len(batch))
        bar.set_postfix(
            acc=f"{correct / done:.3f}",
            parse_fail=f"{1 - parsed_ok / done:.3f}",
            tok_s=f"{tokens / seconds:.0f}",
        )
    bar.close()
    return {
        "done": done,
        "accuracy_this_run": correct / done if done else math.nan,
        "parse_failure_rate_this_run": 1 - parsed_ok / done if done else math.nan,
        "generated_tokens": tokens,
        "generate_seconds": seconds,
        "wall_seconds": time.perf_counter() - wall,
        "examples_per_s": done / seconds if seconds else math.nan,
        "generated_tokens_per_s": tokens / seconds if seconds else math.nan,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def _write_summary(output: str, summary: dict[str, Any]) -> None:
    path = Path(f"{output}.summary.json")
    write_json_atomic(path, summary)
    log.info(
        "%d predicted (%d already done): %.2f examples/s, %.0f generated tokens/s, parse failures %.1f%% -> %s",
        summary["done"],
        summary["already_done"],
        summary.get("examples_per_s", math.nan),
        summary.get("generated_tokens_per_s", math.nan),
        100 * summary.get("parse_failure_rate_this_run", math.nan),
        output,
    )


@hydra.main(config_path="../../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from nli_cot.models.modeling import ModelSetupError

    try:
        run(cfg)
    except (PredictError, PairsError, RecordFileError, ModelSetupError) as err:
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except ValueError as err:  # e.g. a json_frame the tokenizer cannot spell
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    preflight("predict")
    main()
