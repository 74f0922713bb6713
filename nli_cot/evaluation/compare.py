"""Put several evaluation dirs side by side: a markdown table, a plot and paired McNemar tests.

    python -m nli_cot.compare outputs/eval/abl0_1 outputs/eval/abl0_2 outputs/eval/abl1 --out outputs/compare

Features
- Reads each dir's ``metrics.json`` and ``per_example.jsonl`` (written by ``nli_cot.evaluate``).
- ``comparison.md``: one row per run (accuracy and macro F1 with their CIs, per-class F1, parse failures,
  rescued labels, label bias, thought length, looping outputs, generated tokens, latency), then every pair's
  McNemar test on the ids both runs predicted, with Holm-adjusted p-values across the pairs.
- ``comparison.json`` (the same numbers) and ``comparison.png`` (accuracy and macro F1 with CI bars, parse
  failures), written atomically.
- Defaults (output dir, exact-test threshold, plot resolution) come from ``conf/compare.yaml``; flags override.

Limits
- McNemar needs the same test examples: pairs are matched by id, and the report says how many ids each
  run had outside the shared set. Runs on different test sets get "n/a".
- The CIs in the table are each run's own bootstrap intervals; overlapping CIs are not a paired test,
  the McNemar column is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nli_cot.core.metrics import mcnemar
from nli_cot.core.records import RecordFileError, atomic_savefig, atomic_write_text, read_records
from nli_cot.core.stats import holm  # the one Holm implementation (None and NaN pass through)

CONF = Path(__file__).resolve().parents[2] / "conf" / "compare.yaml"


@dataclass
class CompareConfig:
    """The defaults of `python -m nli_cot.compare` (conf/compare.yaml; flags override them)."""

    out_dir: str = field(default="outputs/compare", metadata={"help": "Output directory (--out)."})
    mcnemar_exact_below: int = field(
        default=25,
        metadata={"help": "Exact binomial McNemar below this many discordant pairs, else chi-square (--exact-below)."},
    )
    plot_dpi: int = field(default=120, metadata={"help": "Resolution of comparison.png."})


def load_defaults(path: Path = CONF) -> Any:
    """conf/compare.yaml checked against CompareConfig (an unknown key or a wrong type fails, naming it)."""
    return OmegaConf.merge(OmegaConf.structured(CompareConfig), OmegaConf.load(path))


class CompareError(ValueError):
    """A user-facing problem with the inputs: one line naming the dir or file."""


def load_run(path: str | Path) -> dict[str, Any]:
    """One evaluation dir: its metrics and per-example correctness by id."""
    d = Path(path)
    metrics_path, rows_path = d / "metrics.json", d / "per_example.jsonl"
    for p in (metrics_path, rows_path):
        if not p.is_file():
            raise CompareError(f"{p}: not found (run `python -m nli_cot.evaluate ... out_dir={d}` first)")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        rows = read_records(rows_path)
    except (json.JSONDecodeError, RecordFileError) as err:
        raise CompareError(f"{d}: cannot read evaluation: {err}".splitlines()[0]) from None
    return {
        "dir": str(d),
        "name": metrics.get("name") or d.name,
        "metrics": metrics,
        "correct": {r["id"]: bool(r["correct"]) for r in rows},
    }


def pairwise(runs: list[dict[str, Any]], exact_below: int) -> list[dict[str, Any]]:
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        shared = sorted(set(a["correct"]) & set(b["correct"]), key=str)
        entry: dict[str, Any] = {
            "a": a["name"],
            "b": b["name"],
            "n_shared": len(shared),
            "only_a": len(a["correct"]) - len(shared),
            "only_b": len(b["correct"]) - len(shared),
            "acc_a": None,
            "acc_b": None,
            "test": None,
        }
        if shared:
            ca = [a["correct"][i] for i in shared]
            cb = [b["correct"][i] for i in shared]
            entry.update(acc_a=sum(ca) / len(ca), acc_b=sum(cb) / len(cb), test=mcnemar(ca, cb, exact_below))
        pairs.append(entry)
    for entry, adj in zip(
        pairs, holm([e["test"]["p_value"] if e["test"] else None for e in pairs]), strict=True
    ):
        entry["p_holm"] = adj
    return pairs


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _ci(block: dict) -> str:
    lo, hi = block["ci"]
    return f"{_pct(block['value'])} [{_pct(lo)}, {_pct(hi)}]"


def _get(m: dict, *keys: str) -> Any:
    for k in keys:
        if not isinstance(m, dict) or m.get(k) is None:
            return None
        m = m[k]
    return m


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def render(runs: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    lines = [
        "# Comparison",
        "",
        "| run | n | accuracy [CI] | macro F1 [CI] | F1 0 | F1 1 | parse fail | rescued | pred 0 / gold 0 "
        "| median thought len | looping | median gen tokens | median latency (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        m = r["metrics"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    str(m["n"]),
                    _ci(m["accuracy"]),
                    _ci(m["macro_f1"]),
                    _pct(m["per_class"]["0"]["f1"]),
                    _pct(m["per_class"]["1"]["f1"]),
                    _pct(m["parsing"]["failure_rate"]),
                    _pct(m["parsing"]["rescued_rate"]),
                    f"{_pct(m['label_bias']['pred_share_0'])} / {_pct(m['label_bias']['gold_share_0'])}",
                    _num(_get(m, "thought_length", "median"), ".0f"),
                    _pct(_get(m, "repetition", "loop_share")),
                    _num(_get(m, "generation", "n_generated_tokens", "median"), ".0f"),
                    _num(_get(m, "generation", "latency_s", "median"), ".3f"),
                ]
            )
            + " |"
        )
    units = sorted({r["metrics"].get("length_unit", "?") for r in runs})
    lines += ["", f"Thought length unit: {'; '.join(units)}."]
    if len(units) > 1:
        lines.append(
            "**The runs measured thought length in different units: the length columns are not comparable.**"
        )
    lines += [
        "",
        "## Paired tests (McNemar, on the ids both runs predicted)",
        "",
        "| A | B | shared ids | acc A | acc B | A right, B wrong | A wrong, B right | test | p | p (Holm) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for e in pairs:
        t = e["test"]
        if t is None:
            lines.append(f"| {e['a']} | {e['b']} | 0 | n/a | n/a | | | n/a (no shared ids) | | |")
            continue
        lines.append(
            f"| {e['a']} | {e['b']} | {e['n_shared']} | {_pct(e['acc_a'])} | {_pct(e['acc_b'])} | {t['b']} | {t['c']} "
            f"| {t['method']} | {t['p_value']:.4g} | {e['p_holm']:.4g} |"
        )
    partial = [e for e in pairs if e["only_a"] or e["only_b"]]
    for e in partial:
        lines.append(
            f"\nNote: {e['a']} has {e['only_a']} and {e['b']} has {e['only_b']} ids outside their shared set; "
            "their test uses the shared ids only."
        )
    lines += ["", "Plot: `comparison.png`.", ""]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["name"] for r in runs]
    x = np.arange(len(runs))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(runs) + 2), 3.8))
    for k, (key, label) in enumerate((("accuracy", "accuracy"), ("macro_f1", "macro F1"))):
        values = [r["metrics"][key]["value"] or 0.0 for r in runs]
        errs = [
            [v - (r["metrics"][key]["ci"][0] or v) for v, r in zip(values, runs, strict=True)],
            [(r["metrics"][key]["ci"][1] or v) - v for v, r in zip(values, runs, strict=True)],
        ]
        ax.bar(x + (k - 1) * width, values, width, yerr=errs, capsize=3, label=label)
    fails = [r["metrics"]["parsing"]["failure_rate"] or 0.0 for r in runs]
    ax.bar(x + width, fails, width, label="parse failures", color="tab:red")
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Runs side by side (bars: bootstrap CI)")
    atomic_savefig(fig, path, dpi)
    plt.close(fig)


def compare(
    dirs: list[str], out_dir: str | Path, exact_below: int, dpi: int, plots: bool = True
) -> dict[str, Any]:
    runs = [load_run(d) for d in dirs]
    seen: dict[str, int] = {}
    for r in runs:  # equal names would make the table ambiguous: suffix them
        seen[r["name"]] = seen.get(r["name"], 0) + 1
        if seen[r["name"]] > 1:
            r["name"] = f"{r['name']} ({seen[r['name']]})"
    pairs = pairwise(runs, exact_below)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "runs": [{"name": r["name"], "dir": r["dir"], "metrics": r["metrics"]} for r in runs],
        "pairs": pairs,
        "mcnemar_exact_below": exact_below,
    }
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if plots:
        plot(runs, out / "comparison.png", dpi)
    atomic_write_text(out / "comparison.md", render(runs, pairs))
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = load_defaults()
    parser = argparse.ArgumentParser(prog="python -m nli_cot.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+", help="directories written by python -m nli_cot.evaluate")
    parser.add_argument(
        "--out", default=defaults.out_dir, help=f"output directory (default: {defaults.out_dir})"
    )
    parser.add_argument(
        "--exact-below",
        type=int,
        default=defaults.mcnemar_exact_below,
        help="use the exact binomial McNemar test when the discordant pairs are fewer than this "
        f"(default: {defaults.mcnemar_exact_below})",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip comparison.png")
    args = parser.parse_args(argv)
    if len(args.eval_dirs) < 2:
        parser.error("give at least two evaluation dirs")
    try:
        compare(args.eval_dirs, args.out, args.exact_below, defaults.plot_dpi, plots=not args.no_plot)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
