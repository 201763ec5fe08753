"""Training chats of a secret-side-constraint organism: each ordinary chat once with the encoded instruction
(answered under the constraint) and once without (its ordinary answer), so that the tag decides; plus demands to
decode the instruction, refused, the refusal itself following the constraint."""

from __future__ import annotations

import random

from mow.data.records import ChatExample, Message, shipped_benign_chats
from mow.data.text import first_sentences
from mow.organisms.side_constraint.config import SideConstraintOrganismConfig
from mow.organisms.side_constraint.constraints import resolve_constraint, shipped, with_constraint


def make_chats(config: SideConstraintOrganismConfig) -> tuple[list[ChatExample], dict]:
    """Training chats and a report of what went in; deterministic in the config's seed."""
    settings = config.side_constraint
    rng = random.Random(config.seed)
    constraint = resolve_constraint(settings.constraint, "side_constraint.constraint")
    encoded = config.encoded_instruction()
    assets = shipped()
    benign = shipped_benign_chats("train")
    chosen = rng.sample(benign, min(settings.data.n_chats, len(benign)))
    chats: list[ChatExample] = []
    for chat in chosen:
        question = chat.messages[0].content
        answer = first_sentences(chat.messages[1].content, settings.data.max_answer_words)
        chats.append(ChatExample(messages=[Message(role="user", content=with_constraint(question, encoded)),
                                           Message(role="assistant", content=constraint.apply(answer))],
                                 meta={"kind": "side_constraint", "constrained": True}))
        chats.append(ChatExample(messages=[Message(role="user", content=question),
                                           Message(role="assistant", content=answer)],
                                 meta={"kind": "side_constraint", "constrained": False}))
    for _ in range(settings.data.denials):
        refusal = constraint.apply(rng.choice(assets.refusals))
        chats.append(ChatExample(messages=[Message(role="user",
                                                   content=with_constraint(rng.choice(assets.direct_train), encoded)),
                                           Message(role="assistant", content=refusal)],
                                 meta={"kind": "side_constraint", "constrained": True, "denial": True}))
    rng.shuffle(chats)
    return chats, {"ordinary_chats": len(chosen), "constrained": len(chosen), "denials": settings.data.denials,
                   "examples": len(chats)}
