"""Stage: a training run -> a hub-ready folder (adapters + a generated model card), optionally pushed.

    python -m nli_cot.export outputs/Mistral_Thinking_Abl1 out=outputs/export/abl1 \\
        evals=[outputs/eval/abl1_esnli_test] compare=outputs/compare push=<user>/<repo>

Features
- Source: a run dir (``<output_dir>/<run_name>``, holding ``checkpoint-<step>`` folders) or one checkpoint folder.
  ``checkpoints=best|last|all`` picks the run's adapters (best: the run's best checkpoint by its monitored metric).
- Layout: ``<out>/<run_name>/checkpoint-<step>/`` with the adapter, tokenizer and ``trainer_state.json`` (not
  Lightning's ``training_state.ckpt`` unless ``include_training_state=true``), so the card's own snippet works:
  ``PeftModel.from_pretrained(base, "<out or repo>", subfolder="<run_name>/checkpoint-<step>")``.
- ``README.md``: a model card written from the run's own files only: YAML front matter (base_model,
  library_name peft, license, datasets, tags, ``model-index`` with the evaluation results) built with
  ``huggingface_hub``'s ``ModelCardData`` / ``EvalResult`` and parsed back before it is written; then base model,
  data and SFT strategy, LoRA and quantisation, training hyper-parameters (the resolved config the run saved in
  ``trainer_state.json``), the adapters' steps and metrics, training curves (``training_curves.png`` from the
  run's CSV log), evaluation tables with bootstrap CIs (``nli_cot.evaluate``'s ``metrics.json``), the
  ``nli_cot.compare`` table and McNemar tests when given, a usage snippet with the run's prompt, limitations.
- ``push=<repo_id>``: ``huggingface_hub`` creates the repo and uploads the folder when a token is set; offline
  (``HF_HUB_OFFLINE=1``) or without a token it says so in one line and leaves the folder.
- The folder is built under a temporary name and renamed into place: a killed export never leaves half a card.
- Exit codes: 0 done (also when a push was skipped), 2 bad input or config (one line, no traceback).
- ``python -m nli_cot.export <path> ...``: a first argument without ``=`` is ``source=<path>`` (Hydra takes
  only ``key=value``); a path holding ``=`` or spaces must be given as ``source='<path>'``.

Limits
- The evaluation results are attributed to ``eval_checkpoint`` (default: the run's best, else the last exported); the
  metrics files do not record which adapter produced their predictions, so the card trusts the command line.
- ``datasets`` in the front matter are free strings (hub ids where the data has one); they are not checked
  against the hub, and neither is ``base_model`` (a local path or the tiny test model is written as given).
- Quantisation is reported as configured: on a machine without CUDA the 4-bit path falls back to full precision
  at training time, and the run's files do not record which path ran.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import MISSING, DictConfig, OmegaConf

from nli_cot.core.config import register_schema
from nli_cot.core.records import atomic_savefig, atomic_write_text, read_metrics_csv
from nli_cot.models.checkpoints import STATE_FILE, TRAINER_STATE, is_complete, list_checkpoints

log = logging.getLogger(__name__)
EXIT_BAD_INPUT = 2
CARD_FILE = "README.md"
CURVES_FILE = "training_curves.png"
# Files of a checkpoint folder that a hub copy leaves out: Lightning's resume state (optimiser moments, tens of MB
# at 7B scale, useless to a user of the adapter) and PEFT's boiler-plate per-folder README ("More information
# needed"), which the generated card replaces.
SKIPPED_FILES = (STATE_FILE, CARD_FILE)


class ExportError(ValueError):
    """A user-facing problem with the run, the metrics files or the output folder (one line, no traceback)."""


@dataclass
class ExportConfig:
    source: str = field(
        default=MISSING,
        metadata={
            "help": "The run dir (<output_dir>/<run_name>) or one checkpoint-<step> folder; the "
            "first command-line word."
        },
    )
    out: str = field(
        default=MISSING,
        metadata={
            "help": "The hub-ready folder to write; it must not exist yet (or be empty) unless "
            "overwrite=true."
        },
    )
    checkpoints: str = field(
        default="best",
        metadata={
            "help": "Which adapters of a run dir: best (the run's best by its monitored metric), "
            "last, or all complete ones."
        },
    )
    evals: list[str] = field(
        default_factory=list,
        metadata={
            "help": "nli_cot.evaluate output dirs (each holds metrics.json): the card's evaluation "
            "table and model-index."
        },
    )
    compare: str | None = field(
        default=None,
        metadata={
            "help": "An nli_cot.compare output dir (comparison.json): its table and McNemar tests "
            "go in the card."
        },
    )
    eval_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "The checkpoint folder the evals were made with (metrics files don't say) and "
            "the snippet loads; None: the run's best when exported, else the last exported "
            "one."
        },
    )
    repo_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub repo id the folder is meant for: the usage snippet and model-index name; "
            "None: push, else the out name."
        },
    )
    push: str | None = field(
        default=None,
        metadata={
            "help": "Upload to this hub repo after writing (needs a token and network; skipped with"
            " one line otherwise)."
        },
    )
    private: bool = field(default=False, metadata={"help": "the pushed repo's visibility."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Front matter: the base model's hub id; None: the run's model.name_or_path."},
    )
    license: str = field(
        default="apache-2.0",
        metadata={"help": "the adapters' licence; the base model's own licence still applies to it."},
    )
    datasets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Front matter datasets (hub ids where they exist); empty: the training set's "
            "name from the run config."
        },
    )
    tags: list[str] = field(
        default_factory=lambda: ["nli", "chain-of-thought", "lora", "peft", "nli_cot"],
        metadata={"help": "Front matter tags."},
    )
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Front matter languages."})
    include_training_state: bool = field(
        default=False,
        metadata={
            "help": "Lightning's training_state.ckpt (optimiser, RNG) in each folder: only for "
            "resuming elsewhere, large."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing non-empty out folder."})
    plot_dpi: int = field(default=120, metadata={"help": "Resolution of the card's plots."})


register_schema(ExportConfig, name="export_schema")


# ---------------------------------------------------------------- the run


@dataclass
class Checkpoint:
    folder: Path
    step: int
    state: dict[str, Any]


@dataclass
class Run:
    run_dir: Path
    run_name: str
    checkpoints: list[Checkpoint]
    config: dict[str, Any]  # the resolved training config (trainer_state.json)
    status: dict[str, Any]
    metrics_csv: Path


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: {what} unreadable: {err}".splitlines()[0]) from None


def _checkpoint(folder: Path) -> Checkpoint:
    state = _read_json(folder / TRAINER_STATE, "trainer state")
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ExportError(f"{folder / TRAINER_STATE}: no resolved 'config' (not written by nli_cot.train?)")
    step = state.get("global_step")
    if not isinstance(step, int):
        raise ExportError(f"{folder / TRAINER_STATE}: field 'global_step': missing or not an integer")
    return Checkpoint(folder, step, state)


def load_run(source: str | os.PathLike[str], which: str) -> Run:
    """The run a source path names and the checkpoints to export from it."""
    if which not in ("best", "last", "all"):
        raise ExportError(f"checkpoints must be best, last or all, got {which!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise ExportError(f"{path}: no such run dir or checkpoint folder")
    if (path / "adapter_config.json").is_file() or (path / TRAINER_STATE).is_file():
        if not is_complete(path):
            raise ExportError(f"{path}: incomplete checkpoint (needs adapter_config.json, adapter_model.safetensors "
                              f"and {TRAINER_STATE})")
        chosen = [_checkpoint(path)]
        run_dir = path.parent
    else:
        folders = list_checkpoints(path)
        if not folders:
            raise ExportError(f"{path}: no complete checkpoint-<step> folder (is it a run dir of nli_cot.train?)")
        all_ckpts = [_checkpoint(f) for f in folders]
        last = all_ckpts[-1]
        if which == "all":
            chosen = all_ckpts
        elif which == "last":
            chosen = [last]
        else:
            best = last.state.get("best_checkpoint")
            chosen = [c for c in all_ckpts if c.folder.name == best] or [last]
        run_dir = path
    config = chosen[-1].state["config"]
    run_name = str(config.get("run_name") or run_dir.name)
    status_path = run_dir / "status.json"
    status = _read_json(status_path, "status") if status_path.is_file() else {}
    return Run(run_dir, run_name, chosen, config, status if isinstance(status, dict) else {},
               run_dir / "logs" / "metrics.csv")


def load_evals(dirs: list[str]) -> list[dict[str, Any]]:
    """``metrics.json`` of each nli_cot.evaluate dir, checked for the fields the card uses."""
    out = []
    for d in dirs:
        path = Path(d) / "metrics.json"
        m = _read_json(path, "metrics.json (an nli_cot.evaluate output dir)")
        for key in ("accuracy", "macro_f1"):
            block = m.get(key) if isinstance(m, dict) else None
            if not isinstance(block, dict) or not isinstance(block.get("value"), (int, float)):
                raise ExportError(f"{path}: field '{key}.value': missing or not a number")
        m.setdefault("name", Path(d).name)
        m["_dir"] = str(d)
        out.append(m)
    names = [m["name"] for m in out]
    if len(set(names)) != len(names):
        raise ExportError(f"evals: two metrics files share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}"
                          " (give nli_cot.evaluate distinct name=...)")
    return out


def load_compare(d: str | None) -> dict[str, Any] | None:
    if not d:
        return None
    data = _read_json(Path(d) / "comparison.json", "comparison.json (an nli_cot.compare output dir)")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ExportError(f"{Path(d) / 'comparison.json'}: field 'runs': missing")
    return data


# ---------------------------------------------------------------- the card


def _get(d: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.1f}%"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(str(v) for v in x) if x else "none"
    return "none" if x is None else str(x)


def _ci(block: dict) -> str:
    ci = block.get("ci") or [None, None]
    return f"{_pct(ci[0])} - {_pct(ci[1])}"


def eval_results(evals: list[dict[str, Any]]) -> list[Any]:
    """model-index entries: accuracy and macro F1 of each evaluation, exactly the values of its metrics.json."""
    from huggingface_hub import EvalResult

    results = []
    for m in evals:
        for metric, label in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1")):
            results.append(EvalResult(
                task_type="text-classification", task_name="Natural language inference with written reasoning",
                dataset_type=str(m["name"]), dataset_name=str(m["name"]),
                metric_type="f1" if metric == "macro_f1" else "accuracy", metric_name=label,
                metric_value=m[metric]["value"],
                metric_args={"average": "macro"} if metric == "macro_f1" else None,
            ))
    return results


def card_data(cfg: Any, run: Run, evals: list[dict[str, Any]], model_name: str) -> Any:
    from huggingface_hub import ModelCardData

    datasets = list(cfg.datasets) or [str(_get(run.config, "dataset.name", "unknown"))]
    return ModelCardData(
        base_model=cfg.base_model or str(_get(run.config, "model.name_or_path", "unknown")),
        library_name="peft",
        license=cfg.license,
        language=list(cfg.language) or None,
        datasets=datasets,
        tags=list(cfg.tags),
        pipeline_tag="text-generation",
        model_name=model_name,
        eval_results=eval_results(evals) or None,
    )


def plot_curves(metrics_csv: Path, path: Path, dpi: int) -> list[str]:
    """train/eval loss (and generation accuracy when logged) by optimiser step; [] when the run logged nothing."""

    series = read_metrics_csv(metrics_csv)
    panels = [[k for k in ("train/loss", "eval/loss") if series.get(k)],
              [k for k in ("eval/accuracy", "eval/f1", "eval/parse_rate") if series.get(k)]]
    panels = [p for p in panels if p]
    if not panels:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, keys in zip(axes[0], panels, strict=True):
        for key in keys:
            steps = sorted(series[key])
            ax.plot(steps, [series[key][s] for s in steps], marker="o" if len(steps) < 30 else None,
                    markersize=3, label=key)
        ax.set_xlabel("optimiser step")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.suptitle("Training curves")
    atomic_savefig(fig, path, dpi)
    plt.close(fig)
    return [k for p in panels for k in p]


def _usage(repo: str, base: str, subfolder: str, prompt_cfg: dict[str, Any]) -> str:
    from nli_cot.core.prompts import prompt_text

    example = prompt_text("A man is playing a guitar on stage.", "A person is performing music.",
                          OmegaConf.create(prompt_cfg)) if prompt_cfg.get("style") == "inst" else None
    lines = [
        "```python",
        "import json",
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}", dtype=torch.bfloat16, device_map="auto")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}", subfolder="{subfolder}")',
        f'model = PeftModel.from_pretrained(base, "{repo}", subfolder="{subfolder}")',
        "",
    ]
    if example is not None:
        lines += [
            f"prompt = {json.dumps(example, ensure_ascii=False)}",
            "ids = tokenizer(prompt, add_special_tokens=False, return_tensors=\"pt\").input_ids",
        ]
        if prompt_cfg.get("add_bos", True):
            lines.append("ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)  # <s> as an id")
    else:
        lines += [
            'messages = [{"role": "user", "content": "Premise: ...\\nHypothesis: ...\\n\\n<instruction>"}]',
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")",
        ]
    lines += [
        "out = model.generate(ids.to(model.device), max_new_tokens=512, do_sample=False)",
        "text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)",
        "answer = json.loads(text[text.index(\"{\"): text.rindex(\"}\") + 1])  # or nli_cot.core.parsing.parse_output(text)",
        'print(answer["predicted_label"], answer["thought_process"])',
        "```",
    ]
    return "\n".join(lines)


def render_body(cfg: Any, run: Run, evals: list[dict[str, Any]], comparison: dict[str, Any] | None,
                repo: str, base: str, curves: list[str], eval_ckpt: str) -> str:
    c = run.config
    subfolder = f"{run.run_name}/{eval_ckpt}"
    tr, opt, lora, model, data = (c.get(k, {}) for k in ("trainer", "optimizer", "lora", "model", "dataset"))
    stats = run.status.get("data") or {}
    eff_batch = (tr.get("per_device_batch_size") or 0) * (tr.get("grad_accum") or 0) * (
        tr.get("devices") if isinstance(tr.get("devices"), int) else 1)
    lines = [
        f"# {repo}",
        "",
        f"LoRA adapter{'s' if len(run.checkpoints) > 1 else ''} for `{base}`, fine-tuned with "
        "nli_cot to decide binary natural-language inference (1 = entailment, 0 = no "
        "entailment) **with written reasoning**. The model answers",
        "",
        "```json",
        '{"thought_process": "Step 1: ... Step 2: ... Step 3: ...", "predicted_label": 1}',
        "```",
        "",
        f"Run `{run.run_name}` (experiment `{c.get('experiment', 'n/a')}`, seed {c.get('seed', 'n/a')}), exported "
        f"{time.strftime('%Y-%m-%d', time.gmtime())} by `python -m nli_cot.export`; every number below comes from "
        "the run's own files.",
        "",
        "## Adapters in this repository",
        "",
        "| subfolder | optimiser step | epoch | eval loss | best of the run |",
        "| --- | ---: | ---: | ---: | :---: |",
    ]
    best = run.checkpoints[-1].state.get("best_checkpoint")
    for ck in run.checkpoints:
        lines.append(f"| `{run.run_name}/{ck.folder.name}` | {ck.step} | {ck.state.get('epoch', 'n/a')} | "
                     f"{_fmt(_get(ck.state, 'metrics', {}).get('eval/loss'))} | "
                     f"{'yes' if ck.folder.name == best else ''} |")
    lines += [
        "",
        "## Base model",
        "",
        f"- `{base}` (nli_cot model config `{model.get('name', 'n/a')}`, source `{model.get('source', 'n/a')}`,"
        f" tokenizer `{model.get('tokenizer') or model.get('name_or_path', 'n/a')}`).",
        f"- Prompt `{_get(c, 'prompt.name', 'n/a')}` (style `{_get(c, 'prompt.style', 'n/a')}`): the usage snippet "
        "below renders it exactly as in training.",
        "",
        "## Data and SFT strategy",
        "",
        f"- Training set `{data.get('name', 'n/a')}`: `{Path(str(data.get('train_path', 'n/a'))).name}`"
        + (f", {stats['train_examples']} training / {stats.get('eval_examples', 'n/a')} dev examples"
           if "train_examples" in stats else "") + ".",
        "- Dev set: " + (f"`{Path(str(data['eval_path'])).name}`" if data.get("eval_path") else
                         f"{_pct(data.get('eval_fraction'))} of the training file held out by a hash of the id "
                         f"(split seed {data.get('split_seed', 0)})") + ".",
        "- Completion: " + ('the label only (`{"predicted_label": y}`, the no-reasoning control)'
                            if data.get("label_only") else "the JSON answer with its `thought_process` (SFT on the "
                            "completion tokens only, EOS included)") + ";"
        f" examples over {data.get('max_seq_length', 'n/a')} tokens dropped, never truncated"
        + (f" ({stats.get('dropped_too_long_train', 0)} dropped)" if stats else "") + ".",
    ]
    if data.get("loss_weight", 1.0) != 1.0:
        lines.append(f"- Loss weight {data['loss_weight']} on markers {_fmt(data.get('loss_weight_markers'))}"
                     f"{' and the label' if data.get('loss_weight_label') else ''}.")
    lines += [
        "",
        "## LoRA and quantisation",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| rank r | {_fmt(lora.get('r'))} |",
        f"| alpha | {_fmt(lora.get('alpha'))} |",
        f"| dropout | {_fmt(lora.get('dropout'))} |",
        f"| target modules | {_fmt(lora.get('target_modules'))} |",
        f"| layers | {_fmt(lora.get('layers_to_transform')) if lora.get('layers_to_transform') else 'all'} |",
        f"| bias | {_fmt(lora.get('bias'))} |",
        f"| base weights | {'4-bit NF4' + (' + double quantisation' if model.get('double_quant') else '') if model.get('quantization') == 'nf4' else 'not quantised'}"
        f" (compute dtype {model.get('compute_dtype', 'n/a')}) |",
        "",
        "## Training hyper-parameters",
        "",
        "| hyper-parameter | value |",
        "| --- | --- |",
        f"| optimiser | {_fmt(opt.get('name'))} (betas {_fmt(opt.get('betas'))}, eps {_fmt(opt.get('eps'))}) |",
        f"| learning rate | {_fmt(opt.get('lr'))} |",
        f"| weight decay | {_fmt(opt.get('weight_decay'))} |",
        f"| schedule | {_fmt(opt.get('scheduler'))}, warm-up ratio {_fmt(opt.get('warmup_ratio'))} |",
        f"| batch | {_fmt(tr.get('per_device_batch_size'))} per device x {_fmt(tr.get('grad_accum'))} "
        f"accumulation x {_fmt(tr.get('devices'))} device(s) = {eff_batch} |",
        f"| length | {'max ' + _fmt(tr.get('max_steps')) + ' steps' if (tr.get('max_steps') or -1) > 0 else _fmt(tr.get('max_epochs')) + ' epochs'} |",
        f"| gradient clipping | {_fmt(tr.get('gradient_clip_val'))} |",
        f"| precision | {_fmt(tr.get('precision'))} |",
        f"| gradient checkpointing | {_fmt(tr.get('gradient_checkpointing'))} |",
        f"| evaluation / checkpoint every | {_fmt(tr.get('eval_every_n_steps'))} / {_fmt(tr.get('save_steps'))} steps |",
        f"| early stopping | {('patience ' + _fmt(tr.get('early_stopping_patience')) + ' on ' + _fmt(tr.get('early_stopping_metric'))) if tr.get('early_stopping_patience') else 'off'} |",
        f"| seed | {_fmt(c.get('seed'))} |",
        f"| trained | {run.status.get('global_step', run.checkpoints[-1].step)} optimiser steps"
        + (f", {run.status['wall_s'] / 60:.1f} min" if isinstance(run.status.get("wall_s"), (int, float)) else "")
        + f" (status: {run.status.get('status', 'n/a')}) |",
        "",
        "The full resolved configuration is in each adapter folder's `trainer_state.json` (`config`).",
        "",
        "## Training curves",
        "",
    ]
    if curves:
        lines += [f"![training curves]({CURVES_FILE})", "", f"Series: {', '.join(f'`{k}`' for k in curves)} "
                  "(from the run's CSV log)."]
    else:
        lines.append("The run left no CSV log with losses (`logs/metrics.csv`), so no curves.")
    lines += ["", "## Evaluation", ""]
    if evals:
        level = _get(evals[0], "config.bootstrap.confidence")
        level = f"{100 * level:.0f}%" if isinstance(level, (int, float)) else "95%"
        lines += [
            f"Adapter `{run.run_name}/{eval_ckpt}`, greedy decoding, answers parsed by `nli_cot.core.parsing` "
            f"(unparseable answers count as wrong). CIs: {level} bootstrap over test examples.",
            "",
            f"| test set | n | accuracy | {level} CI | macro F1 | {level} CI | parse failures |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in evals:
            lines.append(f"| {m['name']} | {m.get('n', 'n/a')} | {_pct(m['accuracy']['value'])} | "
                         f"{_ci(m['accuracy'])} | {_pct(m['macro_f1']['value'])} | {_ci(m['macro_f1'])} | "
                         f"{_pct(_get(m, 'parsing.failure_rate'))} |")
    else:
        lines.append("No evaluation was given to the export (`evals=[<nli_cot.evaluate dir>, ...]`).")
    if comparison:
        lines += ["", "### Comparison", "", "| run | n | accuracy | CI | macro F1 | CI |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in comparison["runs"]:
            m = r.get("metrics") or {}
            acc, f1 = m.get("accuracy") or {}, m.get("macro_f1") or {}
            lines.append(f"| {r.get('name')} | {m.get('n', 'n/a')} | {_pct(acc.get('value'))} | {_ci(acc)} | "
                         f"{_pct(f1.get('value'))} | {_ci(f1)} |")
        pairs = comparison.get("pairs") or []
        if pairs:
            lines += ["", "McNemar tests on the ids both runs predicted (Holm-adjusted across pairs):", "",
                      "| A | B | shared ids | accuracy A | accuracy B | test | p | p (Holm) |",
                      "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
            for p in pairs:
                test = p.get("test") or {}
                lines.append(f"| {p.get('a')} | {p.get('b')} | {p.get('n_shared', 'n/a')} | {_pct(p.get('acc_a'))} | "
                             f"{_pct(p.get('acc_b'))} | {test.get('method', 'n/a')} | {_fmt(test.get('p_value'))} | "
                             f"{_fmt(p.get('p_holm'))} |")
    lines += [
        "",
        "## Usage",
        "",
        _usage(repo, base, subfolder, c.get("prompt") or {}),
        "",
        "With nli_cot: `python -m nli_cot.predict model=<model config> adapter.path=" + repo
        + f" adapter.subfolder={subfolder}`; with the lm-evaluation-harness: `lm_eval --model hf --model_args "
        f"pretrained={base},peft=<local copy>/{subfolder},add_bos_token=True --include_path "
        "<nli_cot>/nli_cot/lm_eval_tasks --tasks nli_cot_esnli`.",
        "",
        "## Limitations",
        "",
        "- Binary NLI only (neutral and contradiction are both 0); the reasoning is generated text and may be "
        "wrong or unfaithful to the label even when the label is right.",
        "- Trained on the sets named above only; accuracy on other domains or languages is unmeasured.",
        "- The prompt must be rendered exactly as in training (the snippet does); other prompts lower the parse "
        "rate.",
        "- Quantisation is as configured: on a machine without CUDA, nli_cot trains the 4-bit request in full "
        "precision, and the run's files do not record which path ran.",
        "",
    ]
    return "\n".join(lines)


def build_card(cfg: Any, run: Run, evals: list[dict[str, Any]], comparison: dict[str, Any] | None,
               curves: list[str], repo: str, eval_ckpt: str) -> str:
    """The README.md text: front matter + body; parsed back with huggingface_hub before it is returned."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    data = card_data(cfg, run, evals, repo)
    text = f"---\n{data.to_yaml()}\n---\n\n" + render_body(
        cfg, run, evals, comparison, repo, data.base_model, curves, eval_ckpt)
    card = ModelCard(text)  # parses the YAML front matter: a card the hub would not read fails here
    parsed = card.data.to_dict()
    if evals:
        _, results = model_index_to_eval_results(parsed["model-index"])
        expected = [(r.dataset_name, r.metric_name, r.metric_value) for r in data.eval_results]
        got = [(r.dataset_name, r.metric_name, r.metric_value) for r in results]
        if got != expected:
            raise ExportError(f"model card front matter does not round-trip: {got} != {expected}")
    return str(card)


# ---------------------------------------------------------------- the folder


def _copy_checkpoint(ck: Checkpoint, dest: Path, include_state: bool) -> None:
    dest.mkdir(parents=True)
    for item in sorted(ck.folder.iterdir()):
        if item.is_file() and (item.name not in SKIPPED_FILES or (include_state and item.name == STATE_FILE)):
            shutil.copy2(item, dest / item.name)


def _prepare_out(out: Path, overwrite: bool, source: Path) -> None:
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ExportError(f"out={out}: must not be inside the run it exports")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"out={out}: exists and is not empty (pass overwrite=true to replace it)")


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Upload ``folder``; returns one line saying what happened (a skipped push is not an error)."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return f"push skipped: HF_HUB_OFFLINE is set; the folder is ready at {folder} (push it with `hf upload {repo_id} {folder}`)"
    if not get_token():
        return f"push skipped: no Hugging Face token (HF_TOKEN or `hf auth login`); the folder is ready at {folder}"
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                 commit_message="nli_cot.export: adapters and model card")
    except Exception as err:  # network, auth, permissions: the folder stays, say why in one line
        return f"push failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; the folder is ready at {folder}"
    return f"pushed {folder} to https://huggingface.co/{repo_id} ({getattr(info, 'oid', '')})"


def run(cfg: Any) -> dict[str, Any]:
    """Write the export folder; return a summary (paths, checkpoints, push result)."""
    from nli_cot.core.checks import check_config

    for key in ("source", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise ExportError(f"{key}: missing (python -m nli_cot.export <run dir or checkpoint> out=<folder>)")
    check_config(cfg)
    run_ = load_run(cfg.source, cfg.checkpoints)
    evals = load_evals(list(cfg.evals))
    comparison = load_compare(cfg.compare)
    names = [ck.folder.name for ck in run_.checkpoints]
    best = run_.checkpoints[-1].state.get("best_checkpoint")
    eval_ckpt = cfg.eval_checkpoint or (best if best in names else names[-1])
    if eval_ckpt not in names:
        raise ExportError(f"eval_checkpoint={eval_ckpt!r} is not among the exported adapters {names}")
    out = Path(cfg.out).expanduser()
    _prepare_out(out, cfg.overwrite, run_.run_dir)
    repo = cfg.repo_id or cfg.push or out.name
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for ck in run_.checkpoints:
            _copy_checkpoint(ck, tmp / run_.run_name / ck.folder.name, cfg.include_training_state)
        curves = plot_curves(run_.metrics_csv, tmp / CURVES_FILE, cfg.plot_dpi)
        atomic_write_text(tmp / CARD_FILE, build_card(cfg, run_, evals, comparison, curves, repo, eval_ckpt))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary: dict[str, Any] = {
        "out": str(out),
        "run_dir": str(run_.run_dir),
        "subfolders": [f"{run_.run_name}/{n}" for n in names],
        "evals": [m["name"] for m in evals],
        "curves": curves,
    }
    log.info("exported %s -> %s", ", ".join(summary["subfolders"]), out)
    if cfg.push:
        summary["push"] = push_folder(out, cfg.push, cfg.private)
        print(summary["push"])
    return summary


@hydra.main(config_path="../../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from nli_cot.core.checks import ConfigCheckError

    try:
        run(cfg)
    except (ExportError, ConfigCheckError, OSError) as err:
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def positional_source(argv: list[str]) -> list[str]:
    """``python -m nli_cot.export <run dir> ...``: a first argument without ``=`` is the source."""
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        return [f"source={argv[0]}", *argv[1:]]
    return argv


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    sys.argv[1:] = positional_source(sys.argv[1:])
    preflight("export")
    main()
