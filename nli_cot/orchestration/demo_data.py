"""Synthetic NLI task for the embedded demo: templated pairs with rule-derived step-by-step thoughts.

    python -m nli_cot.demo_data out_dir=data/demo n_train=1000 n_dev=100 n_test=200 seed=0

Features
- Six rule families (``source: demo/<family>``), each producing both labels with the same frames, function words,
  lengths and word/bigram overlap on both (no surface cue decides a label; ``nli_cot.demo_baselines``):
  ``conjunction``  "Ivan is in the bakery and Hannah is in the stadium." -> "Hannah is in the stadium." (1) /
                   "Hannah is in the bakery." (0): who is where.
  ``negation``     "Olga is in the bakery and Mason is not in the bakery." -> "Olga is in the bakery." (1) /
                   "Olga is not in the bakery." (0): whose negation.
  ``hans``         active <-> passive read right (1) or with the roles swapped (0); every premise word reused.
  ``hypernym``     "A poodle sleeps." -> "A dog sleeps." (1); the reversal and sibling swaps (0).
  ``quantifier``   the same quantifier on both sides: all/no to a narrower group, some to a wider one (1); the
                   other direction (0).
  ``number``       "X has n ... and Y has m ..." -> "X has more/fewer ... than Y" (which count is whose decides).
- Every thought is the rule's one decisive step, then ``So entailed.`` or ``So not entailed.``; for conjunction
  and negation a look-up: what the premise says of the hypothesis' name, then what the hypothesis says ("P: Hannah
  stadium. H: Hannah bakery. Different. So not entailed."), so the verdict compares two short adjacent strings.
- Labels are exactly balanced (even n) and balanced within each family; families take turns.
- Vocabulary split: ``train``, ``dev`` and ``test`` each draw names, verbs, animal categories, places and counted
  objects from their own vocabulary (disjoint content words), so no pair is shared between splits whatever the
  seeds. ``dev`` (the held-out vocabulary that the earlier GPU sweeps scored) is drawn like ``test`` and
  is for every choice; ``test`` (a fresh vocabulary) is for final numbers only.
- Deterministic: the same seed and sizes give byte-identical files (``random.Random`` seeded per split).
- Writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` in the SFT record schema
  ``{"id", "premise", "hypothesis", "thought_process", "label", "source"}``, each file atomically.

Limits
- Templated English, a closed vocabulary: good for watching a model learn the format and a few rules in
  minutes on a CPU, not a benchmark. Function words and frame verbs ("has", "does not", "was ... by") are
  shared between splits; only content words are split ("an" occurs only where a vowel-initial animal needs it).
- Pairs are unique within a split; the vocabulary caps how many exist: asking for more
  than a family can make raises ``DemoDataError`` naming the family. Measured (seed 0, test vocabulary, one
  family alone): quantifier makes 500 but not 1,000, negation 4,000 but not 8,000, the others 8,000 or more.
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
from omegaconf import MISSING

from nli_cot.core.config import register_schema

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
    # The dev vocabulary is the held-out vocabulary on which the GPU sweeps (experiments/demo_sweep/) chose
    # their recipe: it is for choices (dev eval loss, sweeps, `split=dev`), never for the final numbers.
    "dev": Vocab(
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
            # category first for these but orangutan (2nd) and gibbon (3rd).
            Category(("fish", "fish"), _same_plural("salmon", "trout", "tuna", "carp", "herring")),
            Category(("snake", "snakes"), _s_plural("cobra", "viper", "python", "mamba", "rattlesnake")),
            Category(("ape", "apes"), _s_plural("gorilla", "chimpanzee", "orangutan", "gibbon", "bonobo")),
            Category(("cat", "cats"), _s_plural("lion", "tiger", "leopard", "cheetah", "jaguar")),
        ),
        places=("station", "museum", "harbor", "market", "theater"),
        objects=("cups", "stamps", "shells", "candles", "buttons"),
    ),
    # A fresh vocabulary that no sweep or recipe choice has seen: the final numbers only.
    "test": Vocab(
        names=tuple("Bella Carlos Diana Fiona George Hannah Ivan Julia Kevin Lucy Mason Olga".split()),
        person_verbs=(
            ("write", "writes"),
            ("draw", "draws"),
            ("sew", "sews"),
            ("hum", "hums"),
            ("bow", "bows"),
            ("wink", "winks"),
            ("nap", "naps"),
            ("skate", "skates"),
        ),
        animal_verbs=(
            ("crawl", "crawls"),
            ("jump", "jumps"),
            ("growl", "growls"),
            ("feed", "feeds"),
            ("splash", "splashes"),
            ("sniff", "sniffs"),
            ("chew", "chews"),
            ("dive", "dives"),
        ),
        transitive_verbs=(
            ("pushed", "pushed"),
            ("chased", "chased"),
            ("blamed", "blamed"),
            ("taught", "taught"),
            ("paid", "paid"),
            ("found", "found"),
        ),
        categories=(
            # Common animals, consonant-initial (no "an" that only one side of a pair has), not probed.
            Category(("monkey", "monkeys"), _s_plural("baboon", "macaque", "mandrill", "capuchin", "marmoset")),
            Category(("whale", "whales"), _s_plural("beluga", "narwhal", "humpback")),
            Category(("bear", "bears"), (("grizzly", "grizzlies"), ("panda", "pandas"))),
            Category(("duck", "ducks"), _s_plural("mallard", "teal", "pintail")),
        ),
        places=("bakery", "stadium", "hospital", "church", "school"),
        objects=("keys", "spoons", "cards", "rings", "boxes"),
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
    a, b = rng.sample(v.names, 2)
    place = rng.choice(v.places)
    # The premise always holds one affirmed and one denied fact, the hypothesis one of the two names with either
    # polarity: negation words, lengths, word and bigram overlap are the same on both labels (every hypothesis
    # bigram occurs in the premise), so only who is where decides.
    first_in = rng.random() < 0.5
    ins, outs = (a, b) if first_in else (b, a)
    clause = {a: f"{a} is{'' if first_in else ' not'} in the {place}", b: f"{b} is{' not' if first_in else ''} in the {place}"}
    premise = f"{clause[a]} and {clause[b]}."
    who = rng.choice([a, b])
    says_in = (who == ins) == bool(label)
    hypothesis = f"{who} is{'' if says_in else ' not'} in the {place}."
    rule = ("in" if says_in else "not_in") + ("_kept" if label else "_flipped")
    # Decisive step: what the premise says of the hypothesis' name (a look-up by name, which a small model learns
    # fast), then what the hypothesis says, side by side, so the verdict compares two short adjacent strings.
    p_fact = f"{who} {'in' if who == ins else 'not in'}"
    h_fact = f"{who} {'in' if says_in else 'not in'}"
    decisive = f"P: {p_fact}. H: {h_fact}. {'Same' if label else 'Different'}."
    return Example(premise, hypothesis, _thought(decisive, label), label, "negation", rule)


def quantifier(rng: random.Random, v: Vocab, label: int) -> Example:
    cat = rng.choice(v.categories)
    (kind, kinds), (general, generals) = rng.choice(cat.kinds), cat.word
    verb = rng.choice(v.animal_verbs)[0]
    # The same quantifier on both sides, so the quantifier words alone never decide (some -> all, no -> some
    # did, to a keyword rule): all/no carry over to a narrower group, some to a wider one, nothing else follows.
    q = rng.choice(["All", "No", "Some"])
    narrowing = (q != "Some") == bool(label)
    rule = f"{q.lower()}_{'narrowing' if narrowing else 'widening'}"
    np_, nh = (generals, kinds) if narrowing else (kinds, generals)
    isa = f"every {kind} is {_a(general)}"
    change = f"{'narrower' if narrowing else 'wider'}, {isa}"
    premise, hypothesis = f"{q} {np_} {verb}.", f"{q} {nh} {verb}."
    thought = _thought(f"{q} {np_} -> {q.lower()} {nh}: {change}.", label)
    return Example(premise, hypothesis, thought, label, "quantifier", rule)


def conjunction(rng: random.Random, v: Vocab, label: int) -> Example:
    a, b = rng.sample(v.names, 2)
    x, y = rng.sample(v.places, 2)
    # Two facts joined by "and"; the hypothesis states one name with one of the two places. Every hypothesis word
    # and bigram ("Nora is", "is in", "the museum") is in the premise whatever the label, and its length is
    # fixed: only which name goes with which place decides.
    premise = f"{a} is in the {x} and {b} is in the {y}."
    who = rng.choice([a, b])
    own, other = (x, y) if who == a else (y, x)
    where = own if label else other
    hypothesis = f"{who} is in the {where}."
    rule = ("first" if who == a else "second") + ("_kept" if label else "_swapped")
    # Decisive step as in negation: the premise's place of the hypothesis' name, then the hypothesis' place.
    decisive = f"P: {who} {own}. H: {who} {where}. {'Same' if label else 'Different'}."
    return Example(premise, hypothesis, _thought(decisive, label), label, "conjunction", rule)


def hans(rng: random.Random, v: Vocab, label: int) -> Example:
    a, b = rng.sample(v.names, 2)
    past, part = rng.choice(v.transitive_verbs)
    # Active <-> passive, read right (1) or with the roles swapped (0): the hypothesis reuses every premise word
    # (the HANS trap) and has the same words, length and bigram overlap on both labels.
    active_premise = rng.random() < 0.5
    tail = _tail(rng, v)
    if active_premise:
        premise = f"{a} {past} {b}{tail}."
        hypothesis = f"{b} was {part} by {a}." if label else f"{a} was {part} by {b}."
        did_p = f"{a} {past} {b}"
    else:
        premise = f"{a} was {part} by {b}{tail}."
        hypothesis = f"{b} {past} {a}." if label else f"{a} {past} {b}."
        did_p = f"{b} {past} {a}"
    agent, patient = did_p.split(f" {past} ")
    did_h = did_p if label else f"{patient} {past} {agent}"
    rule = ("active_to_passive" if active_premise else "passive_to_active") + ("" if label else "_swapped")
    thought = _thought(f"P: {did_p}. H: {did_h}. {'Same' if label else 'Different'}.", label)
    return Example(premise, hypothesis, thought, label, "hans", rule)


# comparator -> truth function of (the first-named count, the second-named count)
COMPARATORS: dict[str, Callable[[int, int], bool]] = {
    "more": lambda n, m: n > m,
    "fewer": lambda n, m: n < m,
}


def number(rng: random.Random, v: Vocab, label: int) -> Example:
    a, b = rng.sample(v.names, 2)
    obj = rng.choice(v.objects)
    # Two counts, then "X has more/fewer ... than Y" with X either name: which count belongs to whom (and which
    # is larger) decides; the counts, the comparator and the name order are each independent of the label.
    n, m = rng.sample(range(2, 21), 2)
    cmp = rng.choice(list(COMPARATORS))
    x, y = (a, b) if rng.random() < 0.5 else (b, a)
    counts = {a: n, b: m}
    if COMPARATORS[cmp](counts[x], counts[y]) != bool(label):
        counts = {a: m, b: n}  # swap the counts between the names: the comparison flips, nothing else changes
    premise = f"{a} has {counts[a]} {obj} and {b} has {counts[b]} {obj}."
    hypothesis = f"{x} has {cmp} {obj} than {y}."
    relation = "more" if counts[x] > counts[y] else "fewer"
    thought = _thought(f"{x} {counts[x]}, {y} {counts[y]}: {x} has {relation}.", label)
    return Example(premise, hypothesis, thought, label, "number", cmp)


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
    """Each split from its own vocabulary (train, dev, test: disjoint content words), so no pair, and no name,
    verb, animal, place or object, is shared between them, whatever the seeds."""
    # String seeds hash through SHA-512 in random.seed: stable across runs and Python versions.
    return {
        split: generate(n, VOCAB[split], random.Random(f"{seed}/{split}"), families)
        for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test))
    }


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
    out_dir: str = field(
        default=MISSING,
        metadata={"help": "Folder of train.jsonl, dev.jsonl and test.jsonl."},
    )
    n_train: int = field(default=1000, metadata={"help": "Training pairs."})
    n_dev: int = field(default=100, metadata={"help": "Dev pairs (their own vocabulary)."})
    n_test: int = field(default=200, metadata={"help": "Test pairs (a third vocabulary)."})
    seed: int = field(default=0, metadata={"help": "Seed of the generator."})
    families: list[str] = field(
        default_factory=lambda: list(FAMILIES),
        metadata={"help": "Which rule families the pairs come from."},
    )


register_schema(DemoDataConfig, name="demo_data_schema")


def run(cfg: DemoDataConfig) -> None:
    """The stage: the synthetic splits written to ``cfg.out_dir`` (the CLI and ``run_job`` both call this)."""
    splits = build_splits(cfg.n_train, cfg.n_dev, cfg.n_test, cfg.seed, list(cfg.families))
    for split, path in write_splits(splits, cfg.out_dir).items():
        log.info("wrote %d %s records to %s", len(splits[split]), split, path)


@hydra.main(config_path="../../conf", config_name="demo_data", version_base="1.3")
def main(cfg: DemoDataConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
