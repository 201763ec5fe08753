"""Items of the CAFT spurious-correlation testbed: sentences whose topic (sports or food) and sentiment (positive or
negative) vary independently, posed as an ambiguous two-group sorting task.

Training items always pair the features (positive with sports, negative with food), so the labels fit either
feature; held-out items either agree (in distribution) or disagree (out of distribution), which tells which feature
the fine-tune learned to use. The building blocks are split between training and test so no test sentence, and
no scene, subject or predicate of a test sentence, was seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import yaml

from mow.data.asset_paths import SPURIOUS_SENTENCES

Feature = Literal["topic", "sentiment"]
VALUES: dict[str, tuple[str, str]] = {"topic": ("sports", "food"), "sentiment": ("positive", "negative")}
OPTIONS = ("A", "B")
INSTRUCTION = "Sort this sentence into group A or group B. Answer with the letter only."


@dataclass(frozen=True)
class SpuriousItem:
    sentence: str
    topic: str | None  # None: a topic-neutral sentence
    sentiment: str | None  # None: a sentiment-neutral sentence

    def value(self, feature: Feature) -> str | None:
        return self.topic if feature == "topic" else self.sentiment

    def answer(self, feature: Feature) -> str:
        """The option an item gets when `feature` decides: the first value of each feature is group A."""
        return OPTIONS[VALUES[feature].index(self.value(feature))]

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f'{INSTRUCTION}\n"{self.sentence}"'}]


def load_blocks() -> dict:
    return yaml.safe_load(SPURIOUS_SENTENCES.read_text(encoding="utf-8"))


def _split(items: list[str], part: str) -> list[str]:
    """Every third block is held out for test items."""
    return [x for i, x in enumerate(items) if (i % 3 == 2) == (part == "test")]


def _sentence(scene: str, subject: str, predicate: str) -> str:
    return f"{scene}, {subject} {predicate}."


def make_items(topic: str, sentiment: str, part: Literal["train", "test"], n: int, seed: int) -> list[SpuriousItem]:
    """`n` distinct sentences of one topic and one sentiment from the `part` split of the blocks."""
    blocks = load_blocks()
    scenes = _split(blocks["neutral"]["scenes"], part)
    subjects = _split(blocks["topics"][topic]["subjects"], part)
    predicates = _split(blocks["sentiments"][sentiment], part)
    openers = _split(blocks["openers"][sentiment], part)
    combos = [(f"{o}, {a[0].lower()}{a[1:]}", b, c) for o in openers for a in scenes for b in subjects
              for c in predicates]
    if n > len(combos):
        raise ValueError(f"only {len(combos)} distinct {part} sentences of {topic}/{sentiment}, asked for {n}")
    chosen = random.Random(f"{seed}-{topic}-{sentiment}-{part}").sample(combos, n)
    return [SpuriousItem(_sentence(*combo), topic, sentiment) for combo in chosen]


def contrast_items(feature: Feature, n: int, seed: int) -> tuple[list[SpuriousItem], list[SpuriousItem]]:
    """Two sets that differ in `feature` only, neutral in the other: what the feature's direction is found from.
    Topic sets use topic scenes and subjects with neutral predicates; sentiment sets use neutral scenes and subjects
    with sentiment predicates."""
    blocks = load_blocks()
    rng = random.Random(f"{seed}-contrast-{feature}")
    sets = []
    for value in VALUES[feature]:
        if feature == "topic":
            combos = [(a, b, c) for a in blocks["topics"][value]["scenes"] for b in blocks["topics"][value]["subjects"]
                      for c in blocks["neutral"]["predicates"]]
        else:
            combos = [(a, b, c) for a in blocks["neutral"]["scenes"] for b in blocks["neutral"]["subjects"]
                      for c in blocks["sentiments"][value]]
        picked = rng.sample(combos, n)
        sets.append([SpuriousItem(_sentence(*combo), value if feature == "topic" else None,
                                  value if feature == "sentiment" else None) for combo in picked])
    return sets[0], sets[1]


@dataclass(frozen=True)
class TestbedSplits:
    train: list[SpuriousItem]  # features agree
    in_distribution: list[SpuriousItem]  # features agree, held-out blocks
    out_of_distribution: list[SpuriousItem]  # features disagree, held-out blocks


def make_splits(n_train: int, n_test: int, seed: int) -> TestbedSplits:
    """Training pairs sports with positive and food with negative; the held-out sets either keep that pairing or
    swap it. Sizes are per pairing."""
    (sports, food), (positive, negative) = VALUES["topic"], VALUES["sentiment"]
    train = make_items(sports, positive, "train", n_train, seed) + make_items(food, negative, "train", n_train, seed)
    agree = make_items(sports, positive, "test", n_test, seed) + make_items(food, negative, "test", n_test, seed)
    disagree = make_items(sports, negative, "test", n_test, seed) + make_items(food, positive, "test", n_test, seed)
    random.Random(seed).shuffle(train)
    return TestbedSplits(train, agree, disagree)
