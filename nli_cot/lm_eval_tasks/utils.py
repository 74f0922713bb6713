"""lm-evaluation-harness glue for nli_cot's NLI-with-reasoning format (referenced as ``!function utils.<name>``).

    lm_eval --model hf --model_args pretrained=<base>,peft=<adapter>,add_bos_token=True \\
        --include_path nli_cot/lm_eval_tasks --tasks nli_cot_esnli [--metadata '{"data_root": "../shared/data"}']

Features
- Data: the project's own pair configs (``conf/pairs/{esnli,mnli,rte}.yaml``, read by ``nli_cot.core.pairs``: the
  same validation and MNLI's label3 mapping) over our data files, with ``data_root`` from ``--metadata``, else
  ``$NLI_COT_DATA_ROOT``, else ``<repo>/../shared/data`` (the project's ``../shared/data`` default).
- Prompt: ``nli_cot.core.prompts.prompt_text`` with ``conf/prompt/<name>.yaml`` (``$NLI_COT_PROMPT``, default
  ``card``), so the harness asks exactly what training taught. ``<s>`` is not in the text: pass
  ``add_bos_token=True`` in ``--model_args`` for the card prompt (the Mistral v3 tokenizer adds no BOS itself).
- Filter ``ParseLabelFilter``: ``nli_cot.core.parsing.parse_output`` on every generation -> ``"0"``, ``"1"`` or
  ``"unparsed"``; metrics ``acc`` (unparsed = wrong), ``macro_f1`` (``nli_cot.core.metrics.macro_f1``) and
  ``parse_rate``, i.e. what ``nli_cot.evaluate`` reports for the same generations.

Limits
- Metadata ``limit`` (or lm-eval's ``--limit``) takes the first N pairs of the file, not a sample.
- Greedy decoding with lm-eval's own batching and stopping (EOS or ``max_gen_toks``): ``nli_cot.predict``
  also stops at the JSON answer's closing brace, so long loops after the answer may differ in text, not in label.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lm_eval.api.filter import Filter
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
UNPARSED = "unparsed"


def data_root(meta: dict[str, Any]) -> Path:
    root = meta.get("data_root") or os.environ.get("NLI_COT_DATA_ROOT") or str(REPO.parent / "shared" / "data")
    return Path(root).expanduser()


def _group_config(group: str, name: str, **top: Any) -> Any:
    """``conf/<group>/<name>.yaml`` merged over its schema, interpolations (``${data_root}``) resolved."""
    from nli_cot.core.config import PromptConfig
    from nli_cot.core.pairs import PairsConfig

    schema = {"pairs": PairsConfig, "prompt": PromptConfig}[group]
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"nli_cot lm-eval task: {path} not found ({group}={name!r})")
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    merged = OmegaConf.merge({**top, group: OmegaConf.structured(schema)}, {group: raw})
    return OmegaConf.to_container(merged, resolve=True)[group]


def load_pairs_dataset(pairs: str, file: str, **meta: Any) -> Any:
    """A ``DatasetDict`` with one ``test`` split: id, premise, hypothesis, label (1 = entailment)."""
    import datasets

    from nli_cot.core.pairs import load_pairs

    root = data_root(meta)
    cfg = _group_config("pairs", pairs, data_root=str(root))
    cfg["path"] = str(root / file)
    if meta.get("limit"):
        cfg["limit"] = int(meta["limit"])
    rows = load_pairs(cfg).pairs
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(
        [{"id": p.id, "premise": p.premise, "hypothesis": p.hypothesis, "label": int(p.label)} for p in rows])})


def load_esnli_test(**meta: Any) -> Any:
    return load_pairs_dataset("esnli", "esnli/test.jsonl", **meta)


def load_mnli_dev_matched(**meta: Any) -> Any:
    return load_pairs_dataset("mnli", "mnli/dev_matched.jsonl", **meta)


def load_rte_dev(**meta: Any) -> Any:
    return load_pairs_dataset("rte", "rte/dev.jsonl", **meta)


@lru_cache(maxsize=4)
def prompt_config(name: str) -> Any:
    return OmegaConf.create(_group_config("prompt", name))


def doc_to_text(doc: dict[str, Any]) -> str:
    """The prompt nli_cot trains and predicts with: ``conf/prompt/$NLI_COT_PROMPT.yaml`` (default ``card``;
    ``inst`` style only, a chat prompt needs the model's tokenizer, which lm-eval does not hand to a task)."""
    cfg = prompt_config(os.environ.get("NLI_COT_PROMPT", "card"))
    from nli_cot.core.prompts import prompt_text

    return prompt_text(doc["premise"], doc["hypothesis"], cfg)


def parse_label(text: str) -> str:
    from nli_cot.core.parsing import parse_output

    label = parse_output(text).label
    return UNPARSED if label is None else str(label)


class ParseLabelFilter(Filter):
    """Each generation -> its label as nli_cot.core.parsing reads it: "0", "1" or "unparsed"."""

    def apply(self, resps, docs):
        return [[parse_label(r) for r in inst] for inst in resps]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    pred = results[0]
    gold = int(doc["label"])
    label = None if pred == UNPARSED else int(pred)
    return {"acc": float(label == gold), "macro_f1": (gold, label), "parse_rate": float(label is not None)}


def macro_f1(items: list[tuple[int, int | None]]) -> float:
    """Macro F1 over both classes with unparsed answers wrong (nli_cot.core.metrics, as nli_cot.evaluate)."""
    from nli_cot.core.metrics import macro_f1 as f1

    gold, pred = zip(*items, strict=True) if items else ((), ())
    return f1(list(gold), list(pred))
