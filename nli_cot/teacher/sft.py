"""Stage 3, SFT sets: ``python -m nli_cot.sft sft_strategy=combined|correct_only|human|... [key=value ...]``.

Builds the training set of one strategy from the earlier stages' records and writes structured records
(``id, premise, hypothesis, thought_process, label, source``); training renders them with its ``prompt``.

Features
- Sources (``sft_strategy.sources``, any number, in order, so mixtures are lists):
  ``correct`` (thoughts whose label matched gold), ``reflected`` (reflections' improved thoughts, gold label),
  ``human`` (e-SNLI human explanations turned into a thought by ``template``), ``sft`` (an existing SFT file).
  ``format: source_project`` reads the source project's thoughts/reflections files through the importers
  (``nli_cot.teacher.stage_runner.import_source_thoughts`` / ``import_source_reflections``).
- Filters, each counted per source: unparsed/wrong, parse rules not trusted for training text
  (``reject_parse_rules``, e.g. ``truncated``), empty thoughts, reflections whose label still disagrees with
  gold (``reflected_mismatch: drop``, or ``gold`` to keep them under the gold label), ``max_examples`` caps
  (the first N by id hash, deterministic).
- De-duplication by id and by normalised (premise, hypothesis) text; the first source wins.
- Token budget: every example is rendered with ``nli_cot.core.prompts.encode_example`` (the training renderer) and
  the real tokenizer (``nli_cot.models.modeling.load_tokenizer``); longer than ``max_tokens`` -> dropped and
  counted, never truncated. Dropped examples are listed in ``dropped.jsonl`` with the reason.
- Deterministic train/dev split by a salted hash of the id (``nli_cot.core.pairs.id_hash``, as training's split).
- Writes ``train.jsonl``, ``dev.jsonl``, ``dropped.jsonl``, ``stats.json`` (counts per source and split, label
  balance, token-length quartiles) and ``lengths.png`` (token-length histogram, matplotlib Agg), each
  atomically (temp file + rename): the stage is a pure function of its inputs, so a killed run leaves the
  previous files intact and a re-run rebuilds the same bytes.

Limits
- Everything is in memory (fine for 10^5 records).
- The token count is for the full completion (thought + label); a ``label_only`` training run is shorter.
- ``human`` uses e-SNLI's pre-processed explanations (lower-cased, tokenised); only spacing before
  punctuation and sentence case are restored.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import MISSING, DictConfig, OmegaConf

from nli_cot.core.checks import ConfigCheckError, check_config
from nli_cot.core.config import DatasetConfig, ModelConfig, PromptConfig, register_schema
from nli_cot.core.pairs import PairColumns, PairsConfig, PairsError, id_hash, load_pairs
from nli_cot.core.records import (
    RecordFileError,
    atomic_savefig,
    atomic_write_text,
    read_records,
    write_jsonl_atomic,
)
from nli_cot.teacher.stage_runner import (
    StageError,
    import_source_reflections,
    import_source_thoughts,
    print_table,
)

EXIT_BAD_INPUT = 2
SOURCE_KINDS = ("correct", "reflected", "human", "sft")


@dataclass
class SftSource:
    kind: str = field(default=MISSING, metadata={"help": "correct (thoughts whose label matched gold) | reflected (improved thoughts of reflections) | human (explanations of pairs) | sft (an SFT set)."})
    path: str = field(
        default=MISSING,
        metadata={"help": "The source file (thoughts, reflections, pairs with explanations or an SFT set)."},
    )
    format: str = field(
        default="nli_cot",
        metadata={"help": "nli_cot | source_project (correct/reflected only)"},
    )
    id_prefix: str = field(
        default="original-sample-",
        metadata={"help": "source_project imports: ids become <prefix><source id>."},
    )
    max_examples: int | None = field(
        default=None,
        metadata={"help": "Take at most this many (a deterministic sample by id hash); null: all."},
    )
    tag: str | None = field(
        default=None,
        metadata={"help": "the `source` value written; default: kind (sft: the record's own source)"},
    )
    # human
    explanation_field: str = field(
        default="explanations",
        metadata={"help": "kind=human: the pairs field holding the human explanations."},
    )
    explanations: str = field(default="first", metadata={"help": "kind=human: which explanation: first | longest | all (distinct ones, joined)."})
    template: str = field(
        default="{explanation} {verdict}",
        metadata={"help": "kind=human: the thought written from an explanation ({explanation}, {verdict})."},
    )
    verdict_entailed: str = field(
        default="So the hypothesis can be inferred from the premise.",
        metadata={"help": "kind=human: the verdict sentence of an entailed pair."},
    )
    verdict_not_entailed: str = field(
        default="So the hypothesis cannot be inferred from the premise.",
        metadata={"help": "kind=human: the verdict sentence of a pair that is not entailed."},
    )


@dataclass
class SftStrategyConfig:
    name: str = field(
        default=MISSING,
        metadata={"help": "Name of the strategy: the folder the SFT set is written to."},
    )
    sources: list[SftSource] = field(
        default_factory=list,
        metadata={
            "help": "Where the examples come from, in order (a duplicated pair keeps the first "
            "source's version)."
        },
    )
    reflected_mismatch: str = field(default="drop", metadata={"help": "A reflection whose label still disagrees with gold: drop (counted) | gold (kept with the gold label)."})
    reject_parse_rules: list[str] = field(
        default_factory=lambda: ["truncated", "unparseable"],
        metadata={"help": "Teacher answers parsed by these rules (nli_cot.core.parsing) are not trained on."},
    )


register_schema(SftStrategyConfig, group="sft_strategy")


@dataclass
class SftConfig:
    sft_strategy: SftStrategyConfig = field(
        default=MISSING,
        metadata={"help": "How the SFT set is made (conf/sft_strategy/)."},
    )
    dataset: DatasetConfig = field(
        default=MISSING,
        metadata={
            "help": "The training side of the set written here (conf/dataset/sft.yaml): its max_seq_length is"
            " the token budget (max_tokens), its paths are output_dir's files."
        },
    )
    model: ModelConfig = field(default=MISSING, metadata={"help": "whose tokenizer counts the tokens."})
    prompt: PromptConfig = field(
        default=MISSING,
        metadata={"help": "the template training will render with."},
    )
    data_root: str = field(
        default="../shared/data",
        metadata={"help": "Folder of the shared data sets (strategy source paths interpolate it)."},
    )
    data_name: str = field(
        default="original_sample",
        metadata={
            "help": "Which thoughts/reflections files: <dir>/<data_name>.jsonl (the thoughts "
            "stage's pairs.name)."
        },
    )
    thoughts_dir: str = field(
        default="data/thoughts",
        metadata={"help": "Folder of the thoughts stage's outputs."},
    )
    reflections_dir: str = field(
        default="data/reflections",
        metadata={"help": "Folder of the reflect stage's outputs."},
    )
    name: str = field(default=MISSING, metadata={"help": "Name of the SFT set (stats and summary)."})
    output_dir: str = field(
        default=MISSING,
        metadata={
            "help": "Where train.jsonl, dev.jsonl, dropped.jsonl, stats.json and lengths.png are "
            "written."
        },
    )
    max_tokens: int = field(
        default="${dataset.max_seq_length}",
        metadata={
            "help": "Token budget of an example (prompt + completion): longer ones are dropped and "
            "counted. Derived from dataset.max_seq_length, the training side's budget, so the two agree."
        },
    )
    dev_fraction: float = field(
        default=0.05,
        metadata={"help": "Share of the examples in dev.jsonl, chosen by a salted hash of the id."},
    )
    split_seed: int = field(default=0, metadata={"help": "Salt of the id hash of the dev split."})
    dedupe: bool = field(
        default=True,
        metadata={"help": "Drop duplicated pairs (the first source's version is kept)."},
    )
    plot: bool = field(default=True, metadata={"help": "Write lengths.png."})


# ------------------------------------------------------------------------------------------------- sources


@dataclass
class Candidate:
    id: str
    premise: str
    hypothesis: str
    thought_process: str | None
    label: int
    source: str

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "premise": self.premise,
            "hypothesis": self.hypothesis,
            "thought_process": self.thought_process,
            "label": self.label,
            "source": self.source,
        }


@dataclass
class SourceReport:
    kind: str
    path: str
    read: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)


def _require(path: str, i: int, rec: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if rec.get(name) is None or rec.get(name) == "":
            raise StageError(f"{path}: record {i}: field '{name}': missing or empty")
    if rec.get("label") not in (0, 1):
        raise StageError(f"{path}: record {i}: field 'label': must be 0 or 1, got {rec.get('label')!r}")


def _load(src: Any, importer: str) -> list[dict[str, Any]]:
    if not Path(src.path).exists():
        raise StageError(f"{src.path}: no such file ({src.kind} source; build it with its stage first)")
    if src.format == "source_project":
        if importer == "thoughts":
            return import_source_thoughts(src.path, src.id_prefix)
        return import_source_reflections(src.path, src.id_prefix)
    if src.format != "nli_cot":
        raise StageError(
            f"sft_strategy.sources: format must be nli_cot or source_project, got {src.format!r}"
        )
    return read_records(src.path)


def _thought_ok(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def from_correct(src: Any, strategy: Any) -> tuple[list[Candidate], SourceReport]:
    rep = SourceReport("correct", src.path)
    out = []
    for i, r in enumerate(_load(src, "thoughts"), start=1):
        rep.read += 1
        _require(src.path, i, r, ("id", "premise", "hypothesis"))
        if not r.get("parse_ok"):
            rep.rejected["unparsed"] += 1
        elif not r.get("correct"):
            rep.rejected["wrong_label"] += 1
        elif r.get("parse_rule") in strategy.reject_parse_rules:
            rep.rejected[f"parse_rule_{r.get('parse_rule')}"] += 1
        elif not _thought_ok(r.get("thought_process")):
            rep.rejected["empty_thought"] += 1
        else:
            tag = src.tag or "correct"
            out.append(
                Candidate(
                    str(r["id"]), r["premise"], r["hypothesis"], r["thought_process"].strip(), r["label"], tag
                )
            )
    return out, rep


def from_reflected(src: Any, strategy: Any) -> tuple[list[Candidate], SourceReport]:
    rep = SourceReport("reflected", src.path)
    if strategy.reflected_mismatch not in ("drop", "gold"):
        raise StageError(
            f"sft_strategy.reflected_mismatch: must be drop or gold, got {strategy.reflected_mismatch!r}"
        )
    out = []
    for i, r in enumerate(_load(src, "reflections"), start=1):
        rep.read += 1
        _require(src.path, i, r, ("id", "premise", "hypothesis"))
        if not r.get("parse_ok"):
            rep.rejected["unparsed"] += 1
        elif r.get("parse_rule") in strategy.reject_parse_rules:
            rep.rejected[f"parse_rule_{r.get('parse_rule')}"] += 1
        elif not _thought_ok(r.get("improved_thought_process")):
            rep.rejected["empty_thought"] += 1
        elif not r.get("agrees") and strategy.reflected_mismatch == "drop":
            rep.rejected["label_mismatch"] += 1
        else:
            tag = src.tag or "reflected"
            thought = r["improved_thought_process"].strip()
            out.append(Candidate(str(r["id"]), r["premise"], r["hypothesis"], thought, r["label"], tag))
    return out, rep


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_CONTRACTION = re.compile(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE)
_SPACE_AFTER_OPEN = re.compile(r"([(])\s+")


def detokenize(text: str) -> str:
    """Undo e-SNLI's tokenised spacing (``packages .`` -> ``packages.``) and restore sentence case."""
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    text = _CONTRACTION.sub(r"\1", text)  # PTB splits "can't" as "ca n't", "it's" as "it 's"
    # e-SNLI's preprocessing replaced the full stops between sentences with " ; ": put them back.
    text = re.sub(r"\s*;[\s;]*", ". ", text).strip(" .")
    text = re.sub(r"\.(\s*\.)+", ".", text)
    sentences = re.split(r"(?<=[.!?])\s+", text)
    text = " ".join(s[:1].upper() + s[1:] for s in sentences if s)
    if text and text[-1] not in ".!?":
        text += "."
    return text


def human_thought(explanations: list[str], label: int, src: Any) -> str | None:
    """A thought process from human explanations: the chosen explanation(s) plus the verdict sentence."""
    texts = [detokenize(e) for e in explanations if isinstance(e, str) and e.strip()]
    if not texts:
        return None
    if src.explanations == "first":
        chosen = texts[0]
    elif src.explanations == "longest":
        chosen = max(texts, key=len)
    elif src.explanations == "all":
        chosen = " ".join(dict.fromkeys(texts))  # distinct, in annotator order
    else:
        raise StageError(
            f"sft source human: explanations must be first, longest or all, got {src.explanations!r}"
        )
    verdict = src.verdict_entailed if label == 1 else src.verdict_not_entailed
    return src.template.format(explanation=chosen, verdict=verdict).strip()


def from_human(src: Any, strategy: Any) -> tuple[list[Candidate], SourceReport]:
    rep = SourceReport("human", src.path)
    pcfg = PairsConfig(
        name="human", path=src.path, columns=PairColumns(), extra_fields=[src.explanation_field]
    )
    result = load_pairs(pcfg)
    rep.read = result.rows_read
    for s in result.skipped:
        rep.rejected[f"bad_input_{s.kind}"] += 1
    out = []
    for p in result.pairs:
        thought = human_thought(p.extra.get(src.explanation_field) or [], p.label, src)
        if thought is None:
            rep.rejected["no_explanation"] += 1
            continue
        out.append(Candidate(p.id, p.premise, p.hypothesis, thought, p.label, src.tag or "human"))
    return out, rep


def from_sft(src: Any, strategy: Any) -> tuple[list[Candidate], SourceReport]:
    rep = SourceReport("sft", src.path)
    out = []
    records = _load(src, "sft")
    if not records:
        raise StageError(f"{src.path}: no records (sft source: an empty SFT file)")
    for i, r in enumerate(records, start=1):
        rep.read += 1
        _require(src.path, i, r, ("id", "premise", "hypothesis"))
        thought = r.get("thought_process")
        out.append(
            Candidate(
                str(r["id"]),
                r["premise"],
                r["hypothesis"],
                thought,
                r["label"],
                src.tag or r.get("source") or "sft",
            )
        )
    return out, rep


_LOADERS = {"correct": from_correct, "reflected": from_reflected, "human": from_human, "sft": from_sft}


def cap(cands: list[Candidate], n: int | None, salt: int) -> list[Candidate]:
    """The first ``n`` candidates by id hash, in their original order (a deterministic sample)."""
    if n is None or len(cands) <= n:
        return cands
    keep = {c.id for c in sorted(cands, key=lambda c: id_hash(c.id, salt))[:n]}
    return [c for c in cands if c.id in keep]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def dedupe(cands: list[Candidate]) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Drop repeated ids and repeated (premise, hypothesis) pairs; the first occurrence wins."""
    seen_ids: set[str] = set()
    seen_pairs: dict[tuple[str, str], int] = {}
    kept, dropped = [], []
    for c in cands:
        key = (_norm(c.premise), _norm(c.hypothesis))
        if c.id in seen_ids:
            dropped.append((c, "duplicate_id"))
        elif key in seen_pairs:
            dropped.append(
                (c, "duplicate_pair" if seen_pairs[key] == c.label else "duplicate_pair_conflicting_label")
            )
        else:
            seen_ids.add(c.id)
            seen_pairs[key] = c.label
            kept.append(c)
    return kept, dropped


# ------------------------------------------------------------------------------------------------- outputs


def quartiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {
        "n": len(v),
        "min": v[0],
        "q1": q[0],
        "median": q[1],
        "q3": q[2],
        "max": v[-1],
        "mean": round(statistics.fmean(v), 2),
    }


def plot_lengths(path: Path, lengths: dict[str, list[int]], budget: int, title: str) -> None:
    """Histogram of token lengths per source with the budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    data = [v for v in lengths.values() if v]
    if data:
        top = max(max(v) for v in data)
        bins = range(0, max(top, budget) + 16, 16)
        ax.hist(data, bins=bins, stacked=True, label=[k for k, v in lengths.items() if v])
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no examples", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(budget, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("tokens (prompt + completion)")
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def _plain(node: Any) -> Any:
    return OmegaConf.to_object(node) if OmegaConf.is_config(node) else node


def load_tokenizer(model_cfg: Any) -> Any:
    from nli_cot.models.modeling import load_tokenizer as load

    return load(model_cfg)


def run(cfg: Any, tokenizer: Any = None) -> dict[str, Any]:
    """Build and write one SFT set; return its stats (also printed and written to stats.json)."""
    from nli_cot.core.prompts import completion_text, encode_example

    # Plain dataclasses: OmegaConf attribute access is ~0.1 ms, and these are read per example.
    check_config(cfg)  # unknown keys and numeric ranges, before any data is read
    strategy = _plain(cfg.sft_strategy)
    prompt_cfg = _plain(cfg.prompt)
    if not strategy.sources:
        raise StageError(f"sft_strategy {strategy.name}: no sources")
    candidates: list[Candidate] = []
    reports: list[SourceReport] = []
    for src in strategy.sources:
        if src.kind not in _LOADERS:
            raise StageError(
                f"sft_strategy.sources: kind must be one of {', '.join(SOURCE_KINDS)}, got {src.kind!r}"
            )
        got, rep = _LOADERS[src.kind](src, strategy)
        capped = cap(got, src.max_examples, cfg.split_seed)
        if len(capped) < len(got):
            rep.rejected["over_max_examples"] += len(got) - len(capped)
        rep.kept = len(capped)
        candidates += capped
        reports.append(rep)
    dropped: list[dict[str, Any]] = []
    if cfg.dedupe:
        candidates, dups = dedupe(candidates)
        dropped += [{**c.record(), "reason": why} for c, why in dups]
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    kept: list[tuple[Candidate, int]] = []
    for c in candidates:
        ex = encode_example(
            c.premise, c.hypothesis, completion_text(c.thought_process, c.label), prompt_cfg, tokenizer
        )
        n = len(ex.prompt_ids) + len(ex.completion_ids)
        if n > cfg.max_tokens:
            dropped.append({**c.record(), "reason": "over_token_budget", "tokens": n})
        else:
            kept.append((c, n))
    train = [(c, n) for c, n in kept if id_hash(c.id, cfg.split_seed) >= cfg.dev_fraction]
    dev = [(c, n) for c, n in kept if id_hash(c.id, cfg.split_seed) < cfg.dev_fraction]

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "train.jsonl", [c.record() for c, _ in train])
    write_jsonl_atomic(out / "dev.jsonl", [c.record() for c, _ in dev])
    write_jsonl_atomic(out / "dropped.jsonl", dropped)

    def split_stats(rows: list[tuple[Candidate, int]]) -> dict[str, Any]:
        labels = Counter(c.label for c, _ in rows)
        return {
            "count": len(rows),
            "per_source": dict(sorted(Counter(c.source for c, _ in rows).items())),
            "labels": {
                "0": labels[0],
                "1": labels[1],
                "fraction_1": round(labels[1] / len(rows), 4) if rows else None,
            },
        }

    by_source: dict[str, list[int]] = defaultdict(list)
    for c, n in kept:
        by_source[c.source].append(n)
    drop_counts = Counter(d["reason"] for d in dropped)
    stats = {
        "name": cfg.name,
        "strategy": strategy.name,
        "output_dir": str(out),
        "prompt": cfg.prompt.name,
        "tokenizer_of": cfg.model.name,
        "max_tokens": cfg.max_tokens,
        "dev_fraction": cfg.dev_fraction,
        "split_seed": cfg.split_seed,
        "reflected_mismatch": strategy.reflected_mismatch,
        "sources": [
            {
                "kind": r.kind,
                "path": r.path,
                "read": r.read,
                "kept": r.kept,
                "rejected": dict(sorted(r.rejected.items())),
            }
            for r in reports
        ],
        "dropped": dict(sorted(drop_counts.items())),
        "total": len(kept),
        "train": split_stats(train),
        "dev": split_stats(dev),
        "tokens": quartiles([n for _, n in kept]),
        "tokens_per_source": {k: quartiles(v) for k, v in sorted(by_source.items())},
        "thought_words": quartiles([len((c.thought_process or "").split()) for c, _ in kept]),
    }
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    if cfg.plot:
        plot_lengths(
            out / "lengths.png",
            dict(sorted(by_source.items())),
            cfg.max_tokens,
            f"{cfg.name}: {len(kept)} examples",
        )
    print_sft_summary(stats)
    if not kept:
        print(
            f"warning: {cfg.name}: the SFT set is empty (see stats.json for what was dropped)",
            file=sys.stderr,
        )
    return stats


def print_sft_summary(s: dict[str, Any]) -> None:
    rows = []
    for src in s["sources"]:
        rej = ", ".join(f"{k} {v}" for k, v in src["rejected"].items()) or "none"
        rows.append((f"source {src['kind']}", f"read {src['read']}, kept {src['kept']} (rejected: {rej})"))
    for reason, n in s["dropped"].items():
        rows.append((f"dropped: {reason}", str(n)))
    t = s["tokens"]
    rows += [
        ("examples", str(s["total"])),
        ("train / dev", f"{s['train']['count']} / {s['dev']['count']}"),
        ("train per source", ", ".join(f"{k} {v}" for k, v in s["train"]["per_source"].items()) or "-"),
        ("train labels 1 / 0", f"{s['train']['labels']['1']} / {s['train']['labels']['0']}"),
        (
            "tokens min/q1/median/q3/max",
            f"{t['min']}/{t['q1']}/{t['median']}/{t['q3']}/{t['max']}" if t.get("n") else "-",
        ),
    ]
    print_table(
        f"sft {s['name']} -> {s['output_dir']} (prompt {s['prompt']}, budget {s['max_tokens']})", rows
    )


register_schema(SftConfig, name="sft_schema")


@hydra.main(config_path="../../conf", config_name="sft", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (PairsError, RecordFileError, StageError, ConfigCheckError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as err:
        # modeling (and torch) is imported only when the tokenizer is needed; don't import it just to catch.
        modeling = sys.modules.get("nli_cot.models.modeling")
        if modeling is None or not isinstance(err, modeling.ModelSetupError):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    preflight("sft")
    main()
