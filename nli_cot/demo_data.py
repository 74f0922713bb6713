"""Synthetic NLI task for the embedded demo: templated pairs with rule-derived step-by-step thoughts.

    python -m nli_cot.demo_data out_dir=data/demo n_train=1000 n_dev=100 n_test=200 seed=0

Features
- Six rule families (``source: demo/<family>``), each producing both labels:
  ``hypernym``     "A poodle sleeps." -> "A dog sleeps." (1); the reversal and sibling swaps (0).
  ``negation``     double negation and paraphrased negation (1); a statement against its negation (0).
  ``quantifier``   all -> some, monotonicity of all/no/some under hyponyms (1); some -> all, no -> some,
                   the wrong monotonicity direction (0).
  ``conjunction``  dropping a conjunct (1); adding a conjunct, or dropping a disjunct (0).
  ``hans``         HANS-style traps: the hypothesis is a subsequence of the premise or reuses every word yet
                   is not entailed (swapped roles, "the friend of X", passive or relative clause read
                   backwards) (0); passive paraphrase, dropped modifier, relative clause read right (1).
  ``number``       "has 7 apples" -> more than / fewer than / at least / at most / exactly m apples.
- Every thought is "Step 1: ... Step 2: ... Step 3: <conclusion>", the conclusion being exactly ``ENTAILED`` or
  ``NOT_ENTAILED``, so a trained model's last sentence can be checked against its label.
- Labels are exactly balanced (even n) and balanced within each family; families take turns.
- Vocabulary split: names, verbs, animal categories, places and counted objects of ``test`` are disjoint from
  those of ``train``; ``dev`` uses the train vocabulary with pairs not in ``train`` (an in-distribution dev set
  for early stopping), ``test`` is the unseen-vocabulary held-out set.
- Deterministic: the same seed and sizes give byte-identical files (``random.Random`` seeded per split).
- Writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` in the SFT record schema
  ``{"id", "premise", "hypothesis", "thought_process", "label", "source"}``, each file atomically.

Limits
- Templated English, a closed vocabulary: good for watching a model learn the format and a few rules in
  minutes on a CPU, not a benchmark. Function words and frame verbs ("has", "does not", "was ... by") are
  shared between splits; only content words are split.
- Pairs are unique within a split (and dev vs train); the vocabulary caps how many exist: asking for more
  than a family can make raises ``DemoDataError`` naming the family. Measured caps per split: quantifier ~1,300,
  negation ~2,200, the others >14,000; so up to ~7,800 examples per split with all six families.
- "All X ..." is read with existential import ("all dogs" implies some dogs exist).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

log = logging.getLogger(__name__)

ENTAILED = "So the hypothesis is entailed."
NOT_ENTAILED = "So the hypothesis is not entailed."
FAMILIES = ("hypernym", "negation", "quantifier", "conjunction", "hans", "number")
SOURCE_PREFIX = "demo/"


class DemoDataError(ValueError):
    """The requested sizes or families cannot be generated."""


@dataclass(frozen=True)
class Category:
    """An animal category (hypernym) and its kinds (hyponyms), each as (singular, plural)."""

    word: tuple[str, str]
    kinds: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Vocab:
    names: tuple[str, ...]
    person_verbs: tuple[tuple[str, str], ...]  # (base, 3rd person singular), intransitive
    animal_verbs: tuple[tuple[str, str], ...]
    transitive_verbs: tuple[tuple[str, str], ...]  # (past, past participle)
    categories: tuple[Category, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]  # plural, counted in the number family

    def content_words(self) -> set[str]:
        """Every content word of this vocabulary, lower-cased (used to check the split is disjoint)."""
        words = {n.lower() for n in self.names} | set(self.places) | set(self.objects)
        for pair in (*self.person_verbs, *self.animal_verbs, *self.transitive_verbs):
            words |= set(pair)
        for cat in self.categories:
            words |= set(cat.word)
            for kind in cat.kinds:
                words |= set(kind)
        return words


def _same_plural(*words: str) -> tuple[tuple[str, str], ...]:
    return tuple((w, w) for w in words)


def _s_plural(*words: str) -> tuple[tuple[str, str], ...]:
    return tuple((w, w + "s") for w in words)


VOCAB: dict[str, Vocab] = {
    "train": Vocab(
        names=tuple("Anna Ben Clara David Emma Felix Grace Henry Iris Jack Laura Martin".split()),
        person_verbs=(
            ("sing", "sings"),
            ("dance", "dances"),
            ("laugh", "laughs"),
            ("cook", "cooks"),
            ("read", "reads"),
            ("smile", "smiles"),
            ("travel", "travels"),
            ("shout", "shouts"),
        ),
        animal_verbs=(
            ("sleep", "sleeps"),
            ("eat", "eats"),
            ("run", "runs"),
            ("hide", "hides"),
            ("hunt", "hunts"),
            ("sit", "sits"),
            ("fight", "fights"),
            ("dig", "digs"),
        ),
        transitive_verbs=(
            ("saw", "seen"),
            ("helped", "helped"),
            ("called", "called"),
            ("thanked", "thanked"),
            ("praised", "praised"),
            ("visited", "visited"),
        ),
        categories=(
            Category(("dog", "dogs"), _s_plural("poodle", "beagle", "terrier", "collie", "spaniel")),
            Category(("bird", "birds"), _s_plural("sparrow", "robin", "parrot", "pigeon", "crow")),
            Category(("insect", "insects"), _s_plural("ant", "beetle", "wasp", "moth", "cricket")),
            Category(
                ("rodent", "rodents"),
                (
                    ("mouse", "mice"),
                    ("rat", "rats"),
                    ("hamster", "hamsters"),
                    ("squirrel", "squirrels"),
                    ("beaver", "beavers"),
                ),
            ),
        ),
        places=("park", "kitchen", "library", "garden", "office"),
        objects=("apples", "books", "coins", "pencils", "marbles"),
    ),
    "test": Vocab(
        names=tuple("Nora Oscar Paula Quentin Rosa Simon Tara Victor Wendy Xavier Yara Zack".split()),
        person_verbs=(
            ("paint", "paints"),
            ("whistle", "whistles"),
            ("cry", "cries"),
            ("knit", "knits"),
            ("jog", "jogs"),
            ("pray", "prays"),
            ("sneeze", "sneezes"),
            ("yawn", "yawns"),
        ),
        animal_verbs=(
            ("rest", "rests"),
            ("play", "plays"),
            ("drink", "drinks"),
            ("wander", "wanders"),
            ("climb", "climbs"),
            ("swim", "swims"),
            ("hiss", "hisses"),
            ("roam", "roams"),
        ),
        transitive_verbs=(
            ("met", "met"),
            ("hugged", "hugged"),
            ("followed", "followed"),
            ("warned", "warned"),
            ("trusted", "trusted"),
            ("greeted", "greeted"),
        ),
        categories=(
            Category(("fish", "fish"), _same_plural("salmon", "trout", "tuna", "carp", "perch")),
            Category(("snake", "snakes"), _s_plural("cobra", "viper", "python", "mamba", "adder")),
            Category(("ape", "apes"), _s_plural("gorilla", "chimpanzee", "orangutan", "gibbon", "bonobo")),
            Category(("lizard", "lizards"), _s_plural("gecko", "iguana", "chameleon", "skink", "anole")),
        ),
        places=("station", "museum", "harbor", "market", "theater"),
        objects=("cups", "stamps", "shells", "candles", "buttons"),
    ),
}


@dataclass(frozen=True)
class Example:
    premise: str
    hypothesis: str
    thought_process: str
    label: int
    family: str
    rule: str  # which template of the family made it (kept for tests and error analysis, not written)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _thought(step1: str, step2: str, label: int) -> str:
    return f"Step 1: {step1} Step 2: {step2} Step 3: {ENTAILED if label else NOT_ENTAILED}"


def _tail(rng: random.Random, v: Vocab) -> str:
    # An optional location varies the surface form without touching the rule.
    return f" in the {rng.choice(v.places)}" if rng.random() < 0.5 else ""


def hypernym(rng: random.Random, v: Vocab, label: int) -> Example:
    cat = rng.choice(v.categories)
    kind = rng.choice(cat.kinds)[0]
    general = cat.word[0]
    if label:
        rule, p_word, h_word = "specific_to_general", kind, general
        step2 = f"Every {kind} is {_a(general)}, so the more general word is still true."
    elif rng.random() < 0.5:
        rule, p_word, h_word = "general_to_specific", general, kind
        step2 = f"Not every {general} is {_a(kind)}, so the premise does not say it is one."
    else:
        other = rng.choice([k[0] for k in cat.kinds if k[0] != kind])
        rule, p_word, h_word = "sibling", kind, other
        step2 = f"{_cap(_a(kind))} is not {_a(other)}: both are kinds of {general}, but different ones."
    if rng.random() < 0.5:
        verb = rng.choice(v.animal_verbs)[1]
        frame = "{} " + verb + "."
        premise, hypothesis = _cap(frame.format(_a(p_word))), _cap(frame.format(_a(h_word)))
    else:
        name, verb = rng.choice(v.names), rng.choice(v.transitive_verbs)[0]
        frame = f"{name} {verb} {{}} in the {rng.choice(v.places)}."
        premise, hypothesis = frame.format(_a(p_word)), frame.format(_a(h_word))
    step1 = f"The hypothesis repeats the premise with '{p_word}' replaced by '{h_word}'."
    return Example(premise, hypothesis, _thought(step1, step2, label), label, "hypernym", rule)


def negation(rng: random.Random, v: Vocab, label: int) -> Example:
    name = rng.choice(v.names)
    base, third = rng.choice(v.person_verbs)
    tail = _tail(rng, v)
    pos, neg = f"{name} {third}{tail}", f"{name} does not {base}{tail}"
    if label and rng.random() < 0.5:
        rule, premise, hypothesis = "double_negation", f"It is not true that {neg}.", f"{_cap(pos)}."
        step1 = f"The premise denies that {neg}."
        step2 = f"Two negations cancel, so {pos}, which is the hypothesis."
    elif label:
        rule, premise, hypothesis = "negation_paraphrase", f"{neg}.", f"It is not true that {pos}."
        step1 = f"The premise says that {neg}."
        step2 = f"The hypothesis says the same in other words: it is not true that {pos}."
    elif rng.random() < 0.5:
        rule, premise, hypothesis = "affirm_then_deny", f"{pos}.", f"{neg}."
        step1 = f"The premise says that {pos}."
        step2 = f"The hypothesis says the opposite, that {neg}."
    else:
        rule, premise, hypothesis = "deny_then_affirm", f"{neg}.", f"{pos}."
        step1 = f"The premise says that {neg}."
        step2 = f"The hypothesis says the opposite, that {pos}."
    return Example(premise, hypothesis, _thought(step1, step2, label), label, "negation", rule)


def quantifier(rng: random.Random, v: Vocab, label: int) -> Example:
    cat = rng.choice(v.categories)
    (kind, kinds), (general, generals) = rng.choice(cat.kinds), cat.word
    verb = rng.choice(v.animal_verbs)[0]
    any_pl = rng.choice([kinds, generals])
    isa = f"every {kind} is {_a(general)}"
    rules = (
        ["all_to_some", "all_narrowing", "no_narrowing", "some_widening"]
        if label
        else ["some_to_all", "no_to_some", "all_widening", "some_narrowing"]
    )
    rule = rng.choice(rules)
    premise, hypothesis, step1, step2 = {
        "all_to_some": (
            f"All {any_pl} {verb}.",
            f"Some {any_pl} {verb}.",
            f"The premise says all {any_pl} {verb}.",
            f"If all {any_pl} do, then some {any_pl} do.",
        ),
        "all_narrowing": (
            f"All {generals} {verb}.",
            f"All {kinds} {verb}.",
            f"The premise is about all {generals}.",
            f"Since {isa}, it holds for all {kinds} too.",
        ),
        "no_narrowing": (
            f"No {generals} {verb}.",
            f"No {kinds} {verb}.",
            f"The premise says no {generals} {verb}.",
            f"Since {isa}, no {kinds} {verb} either.",
        ),
        "some_widening": (
            f"Some {kinds} {verb}.",
            f"Some {generals} {verb}.",
            f"The premise says some {kinds} {verb}.",
            f"Since {isa}, some {generals} {verb}.",
        ),
        "some_to_all": (
            f"Some {any_pl} {verb}.",
            f"All {any_pl} {verb}.",
            f"The premise says only that some {any_pl} {verb}.",
            "Some does not mean all.",
        ),
        "no_to_some": (
            f"No {any_pl} {verb}.",
            f"Some {any_pl} {verb}.",
            f"The premise says no {any_pl} {verb}.",
            "The hypothesis claims some do, which contradicts it.",
        ),
        "all_widening": (
            f"All {kinds} {verb}.",
            f"All {generals} {verb}.",
            f"The premise is only about {kinds}.",
            f"Not every {general} is {_a(kind)}, so it says nothing about all {generals}.",
        ),
        "some_narrowing": (
            f"Some {generals} {verb}.",
            f"Some {kinds} {verb}.",
            f"The premise says some {generals} {verb}.",
            f"Those need not be {kinds}.",
        ),
    }[rule]
    return Example(premise, hypothesis, _thought(step1, step2, label), label, "quantifier", rule)


def conjunction(rng: random.Random, v: Vocab, label: int) -> Example:
    a, b = rng.sample(v.names, 2)
    (_, v1), (_, v2) = rng.sample(v.person_verbs, 2)
    if label and rng.random() < 0.5:
        rule, premise = "drop_clause", f"{a} {v1} and {b} {v2}."
        kept = rng.choice([f"{a} {v1}", f"{b} {v2}"])
        hypothesis = f"{kept}."
        step1 = f"The premise states two facts joined by 'and': {a} {v1}, and {b} {v2}."
        step2 = f"The hypothesis keeps one of them: {kept}."
    elif label:
        rule, premise = "drop_verb", f"{a} {v1} and {v2}."
        kept = rng.choice([v1, v2])
        hypothesis = f"{a} {kept}."
        step1 = f"The premise says {a} does two things: {a} {v1} and {v2}."
        step2 = f"The hypothesis keeps one of them: {a} {kept}."
    else:
        rule = rng.choice(["add_clause", "add_verb", "drop_disjunct"])
        if rule == "add_clause":
            premise, hypothesis = f"{a} {v1}.", f"{a} {v1} and {b} {v2}."
            step1 = f"The premise says only that {a} {v1}."
            step2 = f"The hypothesis adds that {b} {v2}, which the premise does not mention."
        elif rule == "add_verb":
            premise, hypothesis = f"{a} {v1}.", f"{a} {v1} and {v2}."
            step1 = f"The premise says only that {a} {v1}."
            step2 = f"The hypothesis adds that {a} {v2}, which the premise does not mention."
        else:
            premise, hypothesis = f"{a} {v1} or {v2}.", f"{a} {v1}."
            step1 = f"The premise says {a} {v1} or {v2}, without saying which."
            step2 = f"So it does not follow that {a} {v1}."
    return Example(premise, hypothesis, _thought(step1, step2, label), label, "conjunction", rule)


def hans(rng: random.Random, v: Vocab, label: int) -> Example:
    a, b = rng.sample(v.names, 2)
    past, part = rng.choice(v.transitive_verbs)
    third = rng.choice(v.person_verbs)[1]
    rules = (
        ["passive", "drop_modifier", "relative_clause"]
        if label
        else ["swap_roles", "subsequence", "passive_backwards", "relative_backwards"]
    )
    rule = rng.choice(rules)
    if rule == "passive":
        premise, hypothesis = f"{a} {past} {b}.", f"{b} was {part} by {a}."
        step1 = "The hypothesis is the passive form of the premise."
        step2 = f"In both, {a} is the one who {past} {b}."
    elif rule == "drop_modifier":
        place = rng.choice(v.places)
        premise, hypothesis = f"{a} {past} {b} in the {place}.", f"{a} {past} {b}."
        step1 = f"The hypothesis is the premise without 'in the {place}'."
        step2 = "Leaving out where it happened keeps it true."
    elif rule == "relative_clause":
        premise, hypothesis = f"{a}, who {past} {b}, {third}.", f"{a} {past} {b}."
        step1 = f"In the premise, 'who {past} {b}' describes {a}."
        step2 = f"So {a} {past} {b}."
    elif rule == "swap_roles":
        premise, hypothesis = f"{a} {past} {b}.", f"{b} {past} {a}."
        step1 = "Both sentences use exactly the same words."
        step2 = f"In the premise {a} {past} {b}; the hypothesis swaps who did it to whom."
    elif rule == "subsequence":
        premise, hypothesis = f"The friend of {a} {past} {b}.", f"{a} {past} {b}."
        step1 = "The hypothesis is a word-for-word part of the premise."
        step2 = f"But the one who {past} {b} is the friend of {a}, not {a}."
    elif rule == "passive_backwards":
        premise, hypothesis = f"{a} was {part} by {b}.", f"{a} {past} {b}."
        step1 = f"In the premise, {b} is the one who {past} {a}."
        step2 = f"The hypothesis reuses the words but says {a} {past} {b}."
    else:
        premise, hypothesis = f"{a}, who {b} {past}, {third}.", f"{a} {past} {b}."
        step1 = f"In the premise, 'who {b} {past}' means {b} {past} {a}."
        step2 = f"The hypothesis reuses the words but says {a} {past} {b}."
    return Example(premise, hypothesis, _thought(step1, step2, label), label, "hans", rule)


# comparator -> (symbol written in the thought, truth function)
COMPARATORS: dict[str, tuple[str, Callable[[int, int], bool]]] = {
    "more than": (">", lambda n, m: n > m),
    "fewer than": ("<", lambda n, m: n < m),
    "at least": (">=", lambda n, m: n >= m),
    "at most": ("<=", lambda n, m: n <= m),
    "exactly": ("=", lambda n, m: n == m),
}


def number(rng: random.Random, v: Vocab, label: int) -> Example:
    name, obj = rng.choice(v.names), rng.choice(v.objects)
    cmp = rng.choice(list(COMPARATORS))
    symbol, holds = COMPARATORS[cmp]
    while True:  # rejection sampling: every comparator has both outcomes in 2..20
        n, m = rng.randint(2, 20), rng.randint(2, 20)
        if holds(n, m) == bool(label):
            break
    premise, hypothesis = f"{name} has {n} {obj}.", f"{name} has {cmp} {m} {obj}."
    step1 = f"The premise says {name} has {n} {obj}."
    step2 = f"The hypothesis claims {cmp} {m}, and {n} {symbol} {m} is {'true' if label else 'false'}."
    return Example(premise, hypothesis, _thought(step1, step2, label), label, "number", cmp.replace(" ", "_"))


GENERATORS: dict[str, Callable[[random.Random, Vocab, int], Example]] = {
    "hypernym": hypernym,
    "negation": negation,
    "quantifier": quantifier,
    "conjunction": conjunction,
    "hans": hans,
    "number": number,
}


def generate(
    n: int,
    vocab: Vocab,
    rng: random.Random,
    families: Sequence[str] = FAMILIES,
    exclude: set[tuple[str, str]] | None = None,
    max_tries: int = 200,
) -> list[Example]:
    """``n`` unique examples, labels alternating and families taking turns, then shuffled.

    Pairs in ``exclude`` (premise, hypothesis) are never produced; ``max_tries`` draws per example before the
    family counts as exhausted.
    """
    unknown = [f for f in families if f not in GENERATORS]
    if unknown or not families:
        raise DemoDataError(f"unknown or no families {unknown or list(families)}; known: {list(GENERATORS)}")
    seen = set(exclude or ())
    out: list[Example] = []
    for i in range(n):
        # label = i % 2 and family = (i // 2) % F: exact label balance, and each family gets its labels in pairs.
        label, family = i % 2, families[(i // 2) % len(families)]
        for _ in range(max_tries):
            ex = GENERATORS[family](rng, vocab, label)
            if (ex.premise, ex.hypothesis) not in seen:
                break
        else:
            raise DemoDataError(
                f"family {family!r} ran out of unique pairs after {i} examples; ask for fewer"
            )
        seen.add((ex.premise, ex.hypothesis))
        out.append(ex)
    rng.shuffle(out)
    return out


def build_splits(
    n_train: int, n_dev: int, n_test: int, seed: int, families: Sequence[str] = FAMILIES
) -> dict[str, list[Example]]:
    """train and dev from the train vocabulary (dev pairs not in train), test from the disjoint test vocabulary."""
    # String seeds hash through SHA-512 in random.seed: stable across runs and Python versions.
    train = generate(n_train, VOCAB["train"], random.Random(f"{seed}/train"), families)
    taken = {(e.premise, e.hypothesis) for e in train}
    dev = generate(n_dev, VOCAB["train"], random.Random(f"{seed}/dev"), families, exclude=taken)
    test = generate(n_test, VOCAB["test"], random.Random(f"{seed}/test"), families)
    return {"train": train, "dev": dev, "test": test}


def to_record(ex: Example, split: str, index: int) -> dict:
    """The SFT record schema shared with ``nli_cot.sft``."""
    return {
        "id": f"demo-{split}-{index:05d}",
        "premise": ex.premise,
        "hypothesis": ex.hypothesis,
        "thought_process": ex.thought_process,
        "label": ex.label,
        "source": SOURCE_PREFIX + ex.family,
    }


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write to a temporary sibling and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_splits(splits: dict[str, list[Example]], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, examples in splits.items():
        paths[split] = out / f"{split}.jsonl"
        write_jsonl(paths[split], [to_record(ex, split, i) for i, ex in enumerate(examples)])
    return paths


_WORD = re.compile(r"[a-z]+")


def words(text: str) -> set[str]:
    """Lower-cased words of a text (for vocabulary checks)."""
    return set(_WORD.findall(text.lower()))


@dataclass
class DemoDataConfig:
    out_dir: str = MISSING
    n_train: int = 1000
    n_dev: int = 100
    n_test: int = 200
    seed: int = 0
    families: list[str] = field(default_factory=lambda: list(FAMILIES))


ConfigStore.instance().store(name="demo_data_schema", node=DemoDataConfig)


@hydra.main(config_path="../conf", config_name="demo_data", version_base="1.3")
def main(cfg: DemoDataConfig) -> None:
    splits = build_splits(cfg.n_train, cfg.n_dev, cfg.n_test, cfg.seed, list(cfg.families))
    for split, path in write_splits(splits, cfg.out_dir).items():
        log.info("wrote %d %s records to %s", len(splits[split]), split, path)


if __name__ == "__main__":
    main()
