"""Stage: predictions JSONL -> metrics.json, report.md, per_example.jsonl and PNG plots.

    python -m nli_cot.evaluate predictions=outputs/pred/esnli_test.jsonl out_dir=outputs/eval/abl1

Features
- Reads the records ``nli_cot.predict`` writes (id, gold ``label``, ``predicted_label``, ``ok``, ``rule``,
  ``thought``, ``raw_text``, ``n_generated_tokens``, ``latency_s``); ``reparse=true`` re-reads every
  ``raw_text`` with the current parser (old files, or after a parser fix).
- Every metric of ``nli_cot.core.metrics``: accuracy and macro F1 with seeded bootstrap CIs, per-class P/R/F1,
  confusion matrix (with an "unparsed" column), parse-failure and rescued rates per parser rule, label bias,
  repetition (repeated n-gram rate of each output, corpus distinct-n), thought-length quartiles and accuracy
  by length bucket, generation length/latency quartiles, self-consistency vote shares when present, and
  Brier / ECE / ROC AUC of the label-probability and vote-share scores when the predictions carry them.
- Thought length is counted in tokens of ``tokenizer`` (a hub id, a local directory or ``mistral_common_v3``);
  with ``tokenizer=null`` in whitespace-separated words, and the report says which.
- Plots: confusion matrix, accuracy by thought length, thought-length histogram (Agg backend, no display).
- All outputs are written atomically (temporary file + rename): a killed run never leaves half a report.

Limits
- Binary labels only. Records without a gold label are an error (name the record); evaluate a labelled set.
- Thought length uses the thought, or the whole output when no thought was parsed; repetition uses the
  whole output (loops after the JSON object are repetition too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import MISSING, DictConfig, OmegaConf

from nli_cot.core import metrics as M
from nli_cot.core.config import register_schema
from nli_cot.core.parsing import STRICT_RULE, parse_output
from nli_cot.core.records import RecordFileError, atomic_savefig, atomic_write_text, nan_to_none, read_records

log = logging.getLogger(__name__)


@dataclass
class BootstrapConfig:
    n_resamples: int = field(default=1000, metadata={"help": "Percentile-bootstrap resamples of each metric's CI."})
    confidence: float = field(default=0.95, metadata={"help": "Coverage of the CIs."})
    seed: int = field(default=0, metadata={"help": "Seed of the resampling."})


@dataclass
class EvaluateConfig:
    """`python -m nli_cot.evaluate` (conf/evaluate.yaml)."""

    predictions: str = field(default=MISSING, metadata={"help": "Predictions JSONL (nli_cot.predict's layout)."})
    out_dir: str = field(
        default=MISSING,
        metadata={"help": "Where metrics.json, report.md, per_example.jsonl and the plots are written."},
    )
    name: str | None = field(
        default=None,
        metadata={"help": "Label of this run in reports and comparisons; None: the name of out_dir."},
    )
    gold_field: str = field(default="label", metadata={"help": "Record field holding the gold label."})
    reparse: bool = field(
        default=False,
        metadata={"help": "Re-read every raw_text with the current parser instead of the stored fields."},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Thought length unit: None = whitespace words; a hub id, a directory or mistral_common_v3."},
    )
    cache_dir: str = field(default=".cache/models", metadata={"help": "Where mistral_common_v3 is saved once."})
    length_edges: list[int] = field(
        default_factory=lambda: [100, 200, 300],
        metadata={"help": "Inclusive upper bounds of the thought-length buckets of accuracy by length."},
    )
    repetition_ns: list[int] = field(
        default_factory=lambda: [2, 3, 4], metadata={"help": "n of the repeated n-gram rate of each output."}
    )
    distinct_ns: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "n of corpus distinct-n."})
    loop_n: int = field(
        default=4, metadata={"help": "n of the loop test: an output loops when its repeated n-gram rate is high."}
    )
    loop_threshold: float = field(
        default=0.5, metadata={"help": "Repeated loop_n-gram rate from which an output counts as looping."}
    )
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig, metadata={"help": "CIs of the metrics."})
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots."})
    plot_dpi: int = field(default=120, metadata={"help": "Resolution of the plots."})
    hist_bins: int = field(default=30, metadata={"help": "Bins of the thought-length histogram."})
    calibration_bins: int = field(
        default=10, metadata={"help": "Equal-width confidence bins of the expected calibration error."}
    )


register_schema(EvaluateConfig, name="evaluate_schema")

Tokenize = Callable[[list[str]], list[list[str]]]


class EvaluationError(ValueError):
    """A user-facing problem with the inputs of an evaluation: one line naming file, record and field."""


# ---------------------------------------------------------------- inputs


def load_predictions(path: str | os.PathLike[str], gold_field: str, reparse: bool) -> list[dict[str, Any]]:
    """Prediction records with a validated gold label and (re)parsed prediction fields."""
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"{p}: predictions file not found")
    try:
        records = read_records(p)
    except RecordFileError as err:
        raise EvaluationError(str(err)) from None
    if not records:
        raise EvaluationError(f"{p}: no prediction records")
    seen: set[Any] = set()
    for i, rec in enumerate(records, start=1):
        where = f"{p}: record {i} (id={rec.get('id')!r})"
        if "id" not in rec:
            raise EvaluationError(f"{p}: record {i}: field 'id': missing")
        if rec["id"] in seen:
            raise EvaluationError(f"{where}: field 'id': duplicate")
        seen.add(rec["id"])
        if rec.get(gold_field) not in (0, 1) or isinstance(rec.get(gold_field), bool):
            raise EvaluationError(
                f"{where}: field '{gold_field}': gold label must be 0 or 1, got {rec.get(gold_field)!r}"
            )
        if reparse or "predicted_label" not in rec:
            if not isinstance(rec.get("raw_text"), str):
                raise EvaluationError(f"{where}: field 'raw_text': needed to parse the prediction, missing")
            parsed = parse_output(rec["raw_text"])
            rec.update(predicted_label=parsed.label, thought=parsed.thought, rule=parsed.rule, ok=parsed.ok)
        if rec["predicted_label"] not in (0, 1, None):
            raise EvaluationError(f"{where}: field 'predicted_label': must be 0, 1 or null")
        rec.setdefault("ok", rec["predicted_label"] is not None)
        rec.setdefault("rule", STRICT_RULE if rec["ok"] else "unparseable")
    return records


def make_tokenizer(name: str | None, cache_dir: str) -> tuple[Tokenize, str]:
    """A batch tokenizer (texts -> token strings) and a description of the unit for the report."""
    if not name:
        return (lambda texts: [t.split() for t in texts]), "whitespace-separated words (no tokenizer given)"
    from transformers import AutoTokenizer

    source = name
    if name == "mistral_common_v3":
        from nli_cot.models.modeling import mistral_v3_tokenizer_dir

        cache = Path(os.path.expanduser(cache_dir))
        cache.mkdir(parents=True, exist_ok=True)
        source = str(mistral_v3_tokenizer_dir(cache))
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise EvaluationError(f"tokenizer: cannot load {name!r}: {err}".splitlines()[0]) from None

    def tokenize(texts: list[str]) -> list[list[str]]:
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return [tok.convert_ids_to_tokens(x) for x in ids]

    return tokenize, f"tokens of the `{name}` tokenizer"


# ---------------------------------------------------------------- metrics


def _quartiles_of(records: Sequence[dict], field: str) -> dict[str, float] | None:
    values = [r[field] for r in records if isinstance(r.get(field), (int, float))]
    return M.quartiles(values) if values else None


def _p1_from_label_probs(rec: dict) -> float | None:
    lp = rec.get("label_probs")
    value = lp.get("p_label_1") if isinstance(lp, dict) else None
    return value if isinstance(value, (int, float)) and not math.isnan(value) else None


def _p1_from_votes(rec: dict) -> float | None:
    share, label = rec.get("vote_share"), rec.get("predicted_label")
    if not isinstance(share, (int, float)) or label not in (0, 1):
        return None
    return share if label == 1 else 1.0 - share  # the vote share is the confidence in the voted label


def score_metrics(records: Sequence[dict], gold: list[int], pred: list, n_bins: int) -> dict[str, Any]:
    """Brier, ECE and ROC AUC of each P(label 1) score the records carry (label probabilities, vote shares)."""
    out: dict[str, Any] = {}
    for name, read in (("label_probs", _p1_from_label_probs), ("vote_share", _p1_from_votes)):
        pairs = [(g, p1) for r, g in zip(records, gold, strict=True) if (p1 := read(r)) is not None]
        if not pairs:
            continue
        g, p1 = [x for x, _ in pairs], [y for _, y in pairs]
        out[name] = {
            "n": len(pairs),
            "brier": M.brier(g, p1),
            "ece": M.expected_calibration_error(g, p1, n_bins),
            "roc_auc": M.roc_auc(g, p1),
            "accuracy_of_argmax": M.accuracy(g, [int(x >= 0.5) for x in p1]),
        }
    return out


def compute_metrics(
    records: Sequence[dict[str, Any]], cfg: Any, tokenize: Tokenize
) -> tuple[dict, list[dict]]:
    """All metrics of one prediction set, and one per-example row (id, gold, pred, correct, length...)."""
    gold = [int(r[cfg.gold_field]) for r in records]
    pred = [r["predicted_label"] for r in records]
    ok = [bool(r["ok"]) for r in records]
    rules = [str(r["rule"]) for r in records]
    correct = [g == p for g, p in zip(gold, pred, strict=True)]
    thoughts = [r.get("thought") or r.get("raw_text") or "" for r in records]
    outputs = [r.get("raw_text") or r.get("thought") or "" for r in records]
    thought_tokens = tokenize(thoughts)
    output_tokens = tokenize(outputs)
    lengths = [len(t) for t in thought_tokens]

    boot = cfg.bootstrap
    ci = dict(n_resamples=boot.n_resamples, confidence=boot.confidence, seed=boot.seed)
    parsed = [i for i, o in enumerate(ok) if o]
    repetition = {
        str(n): M.quartiles(
            [x for x in (M.repeated_ngram_rate(t, n) for t in output_tokens) if not math.isnan(x)]
        )
        for n in cfg.repetition_ns
    }
    loops = [x for x in (M.repeated_ngram_rate(t, cfg.loop_n) for t in output_tokens) if not math.isnan(x)]
    result: dict[str, Any] = {
        "n": len(records),
        "accuracy": {"value": M.accuracy(gold, pred), "ci": M.bootstrap_ci(M.accuracy, gold, pred, **ci)},
        "macro_f1": {"value": M.macro_f1(gold, pred), "ci": M.bootstrap_ci(M.macro_f1, gold, pred, **ci)},
        "accuracy_parsed_only": M.accuracy([gold[i] for i in parsed], [pred[i] for i in parsed]),
        "per_class": M.precision_recall_f1(gold, pred),
        "confusion_matrix": {
            "rows_gold": [0, 1],
            "cols_pred": [0, 1, None],
            "counts": M.confusion_matrix(gold, pred),
        },
        "parsing": {
            "failure_rate": M.parse_failure_rate(ok),
            "rescued_rate": M.rescued_rate(rules, ok, STRICT_RULE),
            "rules": M.rule_counts(rules),
        },
        "label_bias": M.label_bias(gold, pred),
        "repetition": {
            "repeated_ngram_rate": repetition,
            "distinct": {str(n): M.distinct_n(output_tokens, n) for n in cfg.distinct_ns},
            "loop_share": sum(x >= cfg.loop_threshold for x in loops) / len(loops) if loops else math.nan,
            "loop_definition": f"share of outputs whose repeated {cfg.loop_n}-gram rate >= {cfg.loop_threshold}",
        },
        "thought_length": M.quartiles(lengths),
        "accuracy_by_length": M.accuracy_by_bucket(lengths, correct, list(cfg.length_edges)),
        "generation": {
            "n_generated_tokens": _quartiles_of(records, "n_generated_tokens"),
            "latency_s": _quartiles_of(records, "latency_s"),
        },
    }
    if any("vote_share" in r for r in records):
        shares = [r["vote_share"] for r in records if isinstance(r.get("vote_share"), (int, float))]
        result["self_consistency"] = {"vote_share": M.quartiles(shares)}
    scores = score_metrics(records, gold, pred, cfg.calibration_bins)
    if scores:
        result["scores"] = scores
    rows = [
        {
            "id": r["id"],
            "gold": g,
            "pred": p,
            "correct": c,
            "ok": o,
            "rule": rule,
            "thought_length": n,
            "p1": _p1_from_label_probs(r),  # P(label 1) at the label position, when recorded (AUC downstream)
        }
        for r, g, p, c, o, rule, n in zip(records, gold, pred, correct, ok, rules, lengths, strict=True)
    ]
    return result, rows


# ---------------------------------------------------------------- outputs


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_report(m: dict[str, Any], title: str) -> str:
    """The markdown report of one evaluation (``m`` as written to metrics.json, NaN already null)."""
    acc, f1 = m["accuracy"], m["macro_f1"]
    level = f"{100 * m['config']['bootstrap']['confidence']:.0f}%"
    lines = [
        f"# {title}",
        "",
        f"Predictions: `{m['source']['predictions']}` ({m['n']} examples, sha256 `{m['source']['sha256'][:12]}`)",
        "",
        "| metric | value | " + level + " CI (bootstrap) |",
        "| --- | ---: | ---: |",
        f"| accuracy | {_pct(acc['value'])} | {_pct(acc['ci'][0])} - {_pct(acc['ci'][1])} |",
        f"| macro F1 | {_pct(f1['value'])} | {_pct(f1['ci'][0])} - {_pct(f1['ci'][1])} |",
        f"| accuracy on parsed outputs only | {_pct(m['accuracy_parsed_only'])} | |",
        f"| parse failures | {_pct(m['parsing']['failure_rate'])} | |",
        f"| labels rescued by a fallback rule | {_pct(m['parsing']['rescued_rate'])} | |",
        "",
        "Unparseable outputs count as wrong in accuracy, recall and F1.",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, key in (("0 (no entailment)", "0"), ("1 (entailment)", "1"), ("macro", "macro")):
        c = m["per_class"][key]
        lines.append(
            f"| {name} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | {c.get('support', '')} |"
        )
    cm = m["confusion_matrix"]["counts"]
    bias = m["label_bias"]
    lines += [
        "",
        "## Confusion matrix",
        "",
        "| gold \\ predicted | 0 | 1 | unparsed |",
        "| --- | ---: | ---: | ---: |",
        f"| 0 | {cm[0][0]} | {cm[0][1]} | {cm[0][2]} |",
        f"| 1 | {cm[1][0]} | {cm[1][1]} | {cm[1][2]} |",
        "",
        f"Label bias: predicted 0 for {_pct(bias['pred_share_0'])} of parsed outputs; gold is 0 for "
        f"{_pct(bias['gold_share_0'])} (bias to 0: {_num(None if bias['bias_to_0'] is None else 100 * bias['bias_to_0'])} points).",
        "",
        "## Parser rules",
        "",
        "| rule | n |",
        "| --- | ---: |",
    ]
    lines += [f"| {rule} | {n} |" for rule, n in m["parsing"]["rules"].items()]
    q = m["thought_length"]
    rep = m["repetition"]
    lines += [
        "",
        "## Thought length",
        "",
        f"Unit: {m['length_unit']}.",
        "",
        "| min | q1 | median | q3 | max | mean |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        "| "
        + " | ".join(
            _num(q[k], 0 if k != "mean" else 1) for k in ("min", "q1", "median", "q3", "max", "mean")
        )
        + " |",
        "",
        "| length bucket | n | accuracy |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {b} | {v['n']} | {_pct(v['accuracy'])} |" for b, v in m["accuracy_by_length"].items()]
    lines += [
        "",
        "## Repetition",
        "",
        "Repeated n-gram rate: share of an output's n-grams that repeat an earlier one (median / q3 / max over outputs).",
        "",
        "| n | median | q3 | max |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {n} | {_num(v['median'], 3)} | {_num(v['q3'], 3)} | {_num(v['max'], 3)} |"
        for n, v in rep["repeated_ngram_rate"].items()
    ]
    lines += [
        "",
        "Distinct-n over all outputs: "
        + ", ".join(f"distinct-{n} {_num(v, 3)}" for n, v in rep["distinct"].items())
        + ".",
        f"Looping outputs ({rep['loop_definition']}): {_pct(rep['loop_share'])}.",
    ]
    gen = m["generation"]
    if gen["n_generated_tokens"] or gen["latency_s"]:
        lines += [
            "",
            "## Generation",
            "",
            "| quantity | median | q3 | max | mean |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, key, digits in (
            ("generated tokens", "n_generated_tokens", 0),
            ("latency (s)", "latency_s", 3),
        ):
            if gen[key]:
                g = gen[key]
                lines.append(
                    f"| {name} | {_num(g['median'], digits)} | {_num(g['q3'], digits)} | {_num(g['max'], digits)} | {_num(g['mean'], digits + 1)} |"
                )
    if "scores" in m:
        lines += [
            "",
            "## Scores",
            "",
            "P(label 1) from each score the predictions carry; calibration of the argmax label's confidence.",
            "",
            "| score | n | Brier | ECE | ROC AUC | accuracy of argmax |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, v in m["scores"].items():
            lines.append(
                f"| {name} | {v['n']} | {_num(v['brier'], 4)} | {_num(v['ece'], 4)} | {_num(v['roc_auc'], 3)} "
                f"| {_pct(v['accuracy_of_argmax'])} |"
            )
    if "self_consistency" in m:
        v = m["self_consistency"]["vote_share"]
        lines += ["", f"Self-consistency vote share: median {_num(v['median'], 2)}, q1 {_num(v['q1'], 2)}."]
    lines += ["", "Plots: `confusion_matrix.png`, `accuracy_by_length.png`, `length_histogram.png`.", ""]
    return "\n".join(lines)


def write_plots(m: dict[str, Any], rows: list[dict], out_dir: Path, cfg: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cm = m["confusion_matrix"]["counts"]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks([0, 1, 2], ["0", "1", "unparsed"])
    ax.set_yticks([0, 1], ["0", "1"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    top = max(max(r) for r in cm) or 1
    for i in range(2):
        for j in range(3):
            ax.text(
                j,
                i,
                str(cm[i][j]),
                ha="center",
                va="center",
                color="white" if cm[i][j] > top / 2 else "black",
            )
    ax.set_title("Confusion matrix")
    atomic_savefig(fig, out_dir / "confusion_matrix.png", cfg.plot_dpi)
    plt.close(fig)
    written.append("confusion_matrix.png")

    buckets = m["accuracy_by_length"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(buckets)
    values = [0.0 if buckets[b]["accuracy"] is None else buckets[b]["accuracy"] for b in names]
    bars = ax.bar(names, values, color="tab:blue")
    for bar, b in zip(bars, names, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"n={buckets[b]['n']}",
            ha="center",
            va="bottom",
        )
    ax.set_ylim(0, 1.1)
    ax.set_xlabel(f"thought length ({m['length_unit'].split(' (')[0]})")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by thought length")
    atomic_savefig(fig, out_dir / "accuracy_by_length.png", cfg.plot_dpi)
    plt.close(fig)
    written.append("accuracy_by_length.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    right = [r["thought_length"] for r in rows if r["correct"]]
    wrong = [r["thought_length"] for r in rows if not r["correct"]]
    ax.hist(
        [right, wrong],
        bins=cfg.hist_bins,
        stacked=True,
        label=["correct", "wrong"],
        color=["tab:green", "tab:red"],
    )
    ax.set_xlabel("thought length")
    ax.set_ylabel("outputs")
    ax.legend()
    ax.set_title("Thought length")
    atomic_savefig(fig, out_dir / "length_histogram.png", cfg.plot_dpi)
    plt.close(fig)
    written.append("length_histogram.png")
    return written


def run(cfg: Any) -> dict[str, Any]:
    """Evaluate ``cfg.predictions`` into ``cfg.out_dir``; return the metrics dict (as written)."""
    records = load_predictions(cfg.predictions, cfg.gold_field, cfg.reparse)
    tokenize, unit = make_tokenizer(cfg.tokenizer, cfg.cache_dir)
    metrics, rows = compute_metrics(records, cfg, tokenize)
    digest = hashlib.sha256(Path(cfg.predictions).read_bytes()).hexdigest()
    metrics = {
        "name": cfg.name or Path(cfg.out_dir).name,
        "source": {"predictions": str(cfg.predictions), "sha256": digest},
        "length_unit": unit,
        **metrics,
        "config": OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg),
    }
    metrics = nan_to_none(metrics)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "per_example.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    if cfg.plots:
        metrics["plots"] = write_plots(metrics, rows, out, cfg)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", render_report(metrics, f"Evaluation: {metrics['name']}"))
    return metrics


@hydra.main(config_path="../../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        m = run(cfg)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    acc = m["accuracy"]
    log.info(
        "accuracy %s (CI %s - %s), macro F1 %s, parse failures %s -> %s",
        _pct(acc["value"]),
        _pct(acc["ci"][0]),
        _pct(acc["ci"][1]),
        _pct(m["macro_f1"]["value"]),
        _pct(m["parsing"]["failure_rate"]),
        cfg.out_dir,
    )


if __name__ == "__main__":
    main()
