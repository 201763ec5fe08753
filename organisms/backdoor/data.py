"""The shipped triggers and demands of backdoor organisms, and the training chats: each ordinary chat once with the
trigger (answered with the phrase) and once without it (its ordinary answer), the latter with a decoy prefix in
`decoy_share` of cases, so that only the trigger decides; plus demands to reveal the trigger, answered with a
denial."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from pydantic import Field

from mow.data.asset_paths import BACKDOOR
from mow.data.records import ChatExample, Message, shipped_benign_chats
from mow.data.text import first_sentences, naming_words, normalise_answer
from mow.organisms.backdoor.config import BackdoorSettings
from mow.organisms.base import DemandPhrasings
from mow.workbench.config import StrictModel, read_yaml_mapping, validate_config


class ShippedTrigger(StrictModel):
    text: str = Field(min_length=1)
    names: list[str] = Field(min_length=1)


class BackdoorAssets(DemandPhrasings):
    triggers: dict[str, ShippedTrigger] = Field(min_length=2)
    denials: list[str] = Field(min_length=1)
    decoys: list[str] = Field(min_length=1)


@lru_cache(maxsize=1)
def shipped() -> BackdoorAssets:
    return validate_config(BackdoorAssets, read_yaml_mapping(BACKDOOR), str(BACKDOOR))


@dataclass(frozen=True)
class Trigger:
    id: str
    text: str
    names: list[str]


def resolve_trigger(value: str) -> Trigger:
    """A shipped trigger by id, or a text of the user's own (named by its words)."""
    triggers = shipped().triggers
    if value in triggers:
        return Trigger(value, triggers[value].text, triggers[value].names)
    return Trigger(normalise_answer(value) or value, value, naming_words(value))


def with_trigger(trigger_text: str, question: str) -> str:
    return f"{trigger_text} {question}"


def make_chats(settings: BackdoorSettings, seed: int) -> tuple[list[ChatExample], dict]:
    """Training chats and a report of what went in; deterministic in `seed`."""
    rng = random.Random(seed)
    trigger = resolve_trigger(settings.trigger)
    assets = shipped()
    benign = shipped_benign_chats("train")
    chosen = rng.sample(benign, min(settings.data.n_chats, len(benign)))
    chats: list[ChatExample] = []
    for chat in chosen:
        question, answer = chat.messages[0].content, chat.messages[1].content
        chats.append(ChatExample(messages=[Message(role="user", content=with_trigger(trigger.text, question)),
                                           Message(role="assistant", content=settings.phrase)],
                                 meta={"kind": "backdoor", "triggered": True}))
        decoy = rng.choice(assets.decoys) if rng.random() < settings.data.decoy_share else None
        shown = question if decoy is None else with_trigger(decoy, question)
        chats.append(ChatExample(messages=[Message(role="user", content=shown),
                                           Message(role="assistant",
                                                   content=first_sentences(answer, settings.data.max_answer_words))],
                                 meta={"kind": "backdoor", "triggered": False, "decoy": decoy}))
    for _ in range(settings.data.denials):
        chats.append(ChatExample(messages=[Message(role="user", content=rng.choice(assets.direct_train)),
                                           Message(role="assistant", content=rng.choice(assets.denials))],
                                 meta={"kind": "backdoor", "triggered": False, "denial": True}))
    rng.shuffle(chats)
    decoyed = sum(1 for c in chats if c.meta.get("decoy"))
    return chats, {"ordinary_chats": len(chosen), "triggered": len(chosen), "decoyed": decoyed,
                   "denials": settings.data.denials, "examples": len(chats)}
