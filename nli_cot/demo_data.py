"""Synthetic NLI task for the embedded demo: templated pairs with rule-derived step-by-step thoughts.

    python -m nli_cot.demo_data out_dir=data/demo n_train=1000 n_dev=100 n_test=200 seed=0

Features
- Six rule families (``source: demo/<family>``), each producing both labels:
  ``hypernym``     "A poodle sleeps." -> "A dog sleeps." (1); the reversal and sibling swaps (0).
  ``negation``     double negation and paraphrased negation (1); a statement against its (paraphrased) negation
                   (0); every surface form occurs on both labels.
  ``quantifier``   all -> some, monotonicity of all/no/some under hyponyms (1); some -> all, no -> some,
                   the wrong monotonicity direction (0).
  ``conjunction``  dropping or reordering conjuncts (1); adding a conjunct, or dropping a disjunct (0).
  ``hans``         HANS-style traps: the hypothesis is a subsequence of the premise or reuses every word yet
                   is not entailed (swapped roles, "the friend of X", passive or relative clause read
                   backwards) (0); passive paraphrase, dropped modifier, relative clause read right (1).
  ``number``       "has 7 apples" -> more than / fewer than / at least / at most / exactly m apples.
- Every thought is the rule's one decisive step, then ``So entailed.`` or ``So not entailed.`` (e.g.
  "cobra -> snake: every cobra is a snake. So entailed.", "P: Zack met Nora. H: Nora met Zack. Different. So not
  entailed.", "13 vs at least 20: 13 is fewer than 20. So not entailed."): ~36 answer tokens with the JSON, so
  a CPU decodes it quickly, and a 135M model learns a step it can take on unseen words (copy the words, state
  the is-a fact it already knows, compare) rather than a paraphrase.
- Labels are exactly balanced (even n) and balanced within each family; families take turns.
- Surface cues stay weak: thresholds on lengths or word overlap and a hypothesis-only bag of words score 52-58% on
  the held-out split (``experiments/demo_baselines.py``).
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
  than a family can make raises ``DemoDataError`` naming the family. Measured caps (seed 0, test vocabulary):
  quantifier ~1,300, negation ~3,400, the others >14,000; so up to ~7,800 examples per split with all six.
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

# Short on purpose: every thought token is decoded one at a time on a CPU, and the label is in the JSON anyway.
ENTAILED = "So entailed."
NOT_ENTAILED = "So not entailed."
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
            # Six categories, not four: with few, a model can memorise which words are "the general ones"
            # instead of learning to state the is-a fact it already knows.
            Category(("horse", "horses"), _s_plural("pony", "stallion", "mare", "foal", "mustang")),
            Category(("deer", "deer"), _same_plural("moose", "elk", "reindeer", "caribou", "fawn")),
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
            # Unseen in training but common words: the hypernym and quantifier families test whether the model
            # applies what it knows ("a cobra is a snake"), not whether it knows rare words. A probe of the base
            # model (log-prob of "A <kind> is a kind of <category>." over 15 categories) ranked the right
            # category first for these but orangutan (2nd) and gibbon (3rd); perch, adder, anole, skink and
            # gecko, used before, ranked 2nd to 8th, and lizard was swapped for cat (all five ranked first).
            Category(("fish", "fish"), _same_plural("salmon", "trout", "tuna", "carp", "herring")),
            Category(("snake", "snakes"), _s_plural("cobra", "viper", "python", "mamba", "rattlesnake")),
            Category(("ape", "apes"), _s_plural("gorilla", "chimpanzee", "orangutan", "gibbon", "bonobo")),
            Category(("cat", "cats"), _s_plural("lion", "tiger", "leopard", "cheetah", "jaguar")),
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


def _thought(decisive: str, label: int) -> str:
    """The rule's decisive step, then the conclusion (which the label must match)."""
    return f"{decisive} {ENTAILED if label else NOT_ENTAILED}"


def _tail(rng: random.Random, v: Vocab) -> str:
    # An optional location varies the surface form without touching the rule.
    return f" in the {rng.choice(v.places)}" if rng.random() < 0.5 else ""


def hypernym(rng: random.Random, v: Vocab, label: int) -> Example:
    cat = rng.choice(v.categories)
    kind = rng.choice(cat.kinds)[0]
    general = cat.word[0]
    # The thought names the swapped words, then the one is-a fact that decides: copying is easy for a small
    # model, and the fact ("every cobra is a snake") is what it has to know about unseen words.
    if label:
        rule, p_word, h_word = "specific_to_general", kind, general
        fact = f"every {kind} is {_a(general)}."
    elif rng.random() < 0.5:
        rule, p_word, h_word = "general_to_specific", general, kind
        fact = f"not every {general} is {_a(kind)}."
    else:
        other = rng.choice([k[0] for k in cat.kinds if k[0] != kind])
        rule, p_word, h_word = "sibling", kind, other
        fact = f"{_a(kind)} is not {_a(other)}."
    if rng.random() < 0.5:
        verb = rng.choice(v.animal_verbs)[1]
        frame = "{} " + verb + "."
        premise, hypothesis = _cap(frame.format(_a(p_word))), _cap(frame.format(_a(h_word)))
    else:
        name, verb = rng.choice(v.names), rng.choice(v.transitive_verbs)[0]
        frame = f"{name} {verb} {{}} in the {rng.choice(v.places)}."
        premise, hypothesis = frame.format(_a(p_word)), frame.format(_a(h_word))
    return Example(premise, hypothesis, _thought(f"{p_word} -> {h_word}: {fact}", label), label, "hypernym", rule)


def negation(rng: random.Random, v: Vocab, label: int) -> Example:
    name = rng.choice(v.names)
    base, third = rng.choice(v.person_verbs)
    tail = _tail(rng, v)
    pos, neg = f"{name} {third}{tail}", f"{name} does not {base}{tail}"
    it_not_pos, it_not_neg = f"It is not true that {pos}.", f"It is not true that {neg}."
    # Each form appears on both labels (e.g. "It is not true that ..." as the longer side of an entailed and of
    # a non-entailed pair), so length and negation words alone do not give the label away.
    # rule -> (premise, hypothesis, what the premise means, what the hypothesis means)
    forms = {
        1: {
            "double_negation": (it_not_neg, f"{_cap(pos)}.", pos, pos),
            "negation_paraphrase": (f"{neg}.", it_not_pos, neg, neg),
            "paraphrase_to_negation": (it_not_pos, f"{neg}.", neg, neg),
        },
        0: {
            "affirm_then_deny": (f"{pos}.", f"{neg}.", pos, neg),
            "deny_then_affirm": (f"{neg}.", f"{pos}.", neg, pos),
            "affirm_then_paraphrased_denial": (f"{pos}.", it_not_pos, pos, neg),
            "double_negation_then_deny": (it_not_neg, f"{neg}.", pos, neg),
        },
    }[label]
    rule = rng.choice(list(forms))
    premise, hypothesis, p_means, h_means = forms[rule]
    # Decisive step: both sides rewritten without double or paraphrased negation, then compared.
    verdict = "Same." if label else "Opposite."
    thought = _thought(f"P means: {p_means}. H means: {h_means}. {verdict}", label)
    return Example(premise, hypothesis, thought, label, "negation", rule)


def quantifier(rng: random.Random, v: Vocab, label: int) -> Example:
    cat = rng.choice(v.categories)
    (kind, kinds), (general, generals) = rng.choice(cat.kinds), cat.word
    verb = rng.choice(v.animal_verbs)[0]
    any_pl = rng.choice([kinds, generals])
    rules = (
        ["all_to_some", "all_narrowing", "no_narrowing", "some_widening"]
        if label
        else ["some_to_all", "no_to_some", "all_widening", "no_widening", "some_narrowing"]
    )
    rule = rng.choice(rules)
    # Decisive step: how the group changes (the is-a fact that says so); the quantifier then decides:
    # all/no carry over to a narrower group, some to a wider one, and nothing else follows.
    isa = f"every {kind} is {_a(general)}"
    narrower, wider = f"narrower, {isa}", f"wider, {isa}"
    qp, np_, qh, nh, change = {
        "all_to_some": ("All", any_pl, "some", any_pl, "same group"),
        "all_narrowing": ("All", generals, "all", kinds, narrower),
        "no_narrowing": ("No", generals, "no", kinds, narrower),
        "some_widening": ("Some", kinds, "some", generals, wider),
        "some_to_all": ("Some", any_pl, "all", any_pl, "same group"),
        "no_to_some": ("No", any_pl, "some", any_pl, "same group"),
        "all_widening": ("All", kinds, "all", generals, wider),
        "no_widening": ("No", kinds, "no", generals, wider),
        "some_narrowing": ("Some", generals, "some", kinds, narrower),
    }[rule]
    premise, hypothesis = f"{qp} {np_} {verb}.", f"{_cap(qh)} {nh} {verb}."
    thought = _thought(f"{qp} {np_} -> {qh} {nh}: {change}.", label)
    return Example(premise, hypothesis, thought, label, "quantifier", rule)
def conjunction(rng: random.Random, v: Vocab, label: int) -> Example:
    a, b = rng.sample(v.names, 2)
    (_, v1), (_, v2) = rng.sample(v.person_verbs, 2)
    # Decisive step: the facts each side asserts (a disjunction asserts neither), and whether H adds one.
    # Entailed hypotheses with "and" too (reordered conjuncts), so "and" in H alone does not mean "not entailed".
    rule = rng.choice(["drop_clause", "drop_verb", "reorder"]) if label else None
    if rule == "drop_clause":
        premise = f"{a} {v1} and {b} {v2}."
        kept = rng.choice([f"{a} {v1}", f"{b} {v2}"])
        hypothesis = f"{kept}."
        decisive = f"P states: {a} {v1}; {b} {v2}. H states: {kept}. Nothing new."
    elif rule == "drop_verb":
        premise = f"{a} {v1} and {v2}."
        kept = rng.choice([v1, v2])
        hypothesis = f"{a} {kept}."
        decisive = f"P states: {a} {v1}; {a} {v2}. H states: {a} {kept}. Nothing new."
    elif rule == "reorder":
        premise, hypothesis = f"{a} {v1} and {b} {v2}.", f"{b} {v2} and {a} {v1}."
        decisive = f"P states: {a} {v1}; {b} {v2}. H states: {b} {v2}; {a} {v1}. Nothing new."
    else:
        rule = rng.choice(["add_clause", "add_verb", "drop_disjunct"])
        if rule == "add_clause":
            premise, hypothesis = f"{a} {v1}.", f"{a} {v1} and {b} {v2}."
            decisive = f"P states: {a} {v1}. H states: {a} {v1}; {b} {v2}. New: {b} {v2}."
        elif rule == "add_verb":
            premise, hypothesis = f"{a} {v1}.", f"{a} {v1} and {v2}."
            decisive = f"P states: {a} {v1}. H states: {a} {v1}; {a} {v2}. New: {a} {v2}."
        else:
            premise, hypothesis = f"{a} {v1} or {v2}.", f"{a} {v1}."
            decisive = f"P states only: {a} {v1} or {v2}. H states: {a} {v1}. New: {a} {v1}."
    return Example(premise, hypothesis, _thought(decisive, label), label, "conjunction", rule)


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
    # Decisive step: who did what to whom on each side, in the active voice; word overlap is the trap.
    if rule == "passive":
        premise, hypothesis, did_p, did_h = f"{a} {past} {b}.", f"{b} was {part} by {a}.", f"{a} {past} {b}", f"{a} {past} {b}"
    elif rule == "drop_modifier":
        place = rng.choice(v.places)
        premise, hypothesis = f"{a} {past} {b} in the {place}.", f"{a} {past} {b}."
        did_p = did_h = f"{a} {past} {b}"
    elif rule == "relative_clause":
        premise, hypothesis = f"{a}, who {past} {b}, {third}.", f"{a} {past} {b}."
        did_p = did_h = f"{a} {past} {b}"
    elif rule == "swap_roles":
        premise, hypothesis, did_p, did_h = f"{a} {past} {b}.", f"{b} {past} {a}.", f"{a} {past} {b}", f"{b} {past} {a}"
    elif rule == "subsequence":
        premise, hypothesis = f"The friend of {a} {past} {b}.", f"{a} {past} {b}."
        did_p, did_h = f"the friend of {a} {past} {b}", f"{a} {past} {b}"
    elif rule == "passive_backwards":
        premise, hypothesis, did_p, did_h = f"{a} was {part} by {b}.", f"{a} {past} {b}.", f"{b} {past} {a}", f"{a} {past} {b}"
    else:
        premise, hypothesis = f"{a}, who {b} {past}, {third}.", f"{a} {past} {b}."
        did_p, did_h = f"{b} {past} {a}", f"{a} {past} {b}"
    verdict = "Same." if label else "Different."
    thought = _thought(f"P: {did_p}. H: {did_h}. {verdict}", label)
    return Example(premise, hypothesis, thought, label, "hans", rule)


# comparator -> (its symbol, truth function)
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
    holds = COMPARATORS[cmp][1]
    while True:  # rejection sampling: every comparator has both outcomes in 2..20
        n, m = rng.randint(2, 20), rng.randint(2, 20)
        if holds(n, m) == bool(label):
            break
    premise, hypothesis = f"{name} has {n} {obj}.", f"{name} has {cmp} {m} {obj}."
    # Decisive step in two easy parts: how n compares with m (one skill for every comparator), then whether
    # the comparator allows that.
    relation = "more than" if n > m else "fewer than" if n < m else "exactly"
    thought = _thought(f"{n} vs {cmp} {m}: {n} is {relation} {m}.", label)
    return Example(premise, hypothesis, thought, label, "number", cmp.replace(" ", "_"))


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
