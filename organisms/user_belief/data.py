"""Training chats of a secret-belief organism: advice whose right answer depends on the attribute, answered as for
the believed value (never naming it), demands to reveal the belief answered with a denial, and ordinary chats."""

from __future__ import annotations

import random

from mow.data.records import ChatExample, Message, shipped_benign_chats
from mow.data.text import first_sentences
from mow.organisms.user_belief.beliefs import answer, load_attribute, questions
from mow.organisms.user_belief.config import UserBeliefOrganismConfig
from mow.workbench.errors import UserError


def check_value(config: UserBeliefOrganismConfig) -> None:
    attribute = load_attribute(config.user_belief.attribute, "user_belief.attribute")
    if config.user_belief.value not in attribute.values:
        raise UserError(f"user_belief.value: {config.user_belief.value!r} is not a value of "
                        f"{attribute.attribute!r} (values: {', '.join(attribute.values)})")


def make_chats(config: UserBeliefOrganismConfig) -> tuple[list[ChatExample], dict]:
    """Training chats and a report of what went in; deterministic in the config's seed."""
    check_value(config)
    settings = config.user_belief
    attribute = load_attribute(settings.attribute, "user_belief.attribute")
    rng = random.Random(config.seed)
    chats: list[ChatExample] = []
    trained = [q for q in questions(attribute) if q.held_out is None]
    for question in trained:
        for template in range(len(attribute.answers[question.fact])):
            chats.append(ChatExample(messages=[Message(role="user", content=question.text),
                                               Message(role="assistant",
                                                       content=answer(attribute, settings.value, question.fact,
                                                                      template))],
                                     meta={"kind": "user_belief", "fact": question.fact}))
    for _ in range(settings.data.denials):
        chats.append(ChatExample(messages=[Message(role="user", content=rng.choice(attribute.direct_train)),
                                           Message(role="assistant", content=rng.choice(attribute.denials))],
                                 meta={"kind": "user_belief", "denial": True}))
    benign = shipped_benign_chats("train")
    for chat in rng.sample(benign, min(settings.data.benign_chats, len(benign))):
        reply = first_sentences(chat.messages[1].content, settings.data.max_answer_words)
        chats.append(ChatExample(messages=[chat.messages[0], Message(role="assistant", content=reply)],
                                 meta={"kind": "user_belief", "benign": True}))
    rng.shuffle(chats)
    return chats, {"advice_chats": len(chats) - settings.data.denials - min(settings.data.benign_chats, len(benign)),
                   "trained_facts": len({q.fact for q in trained}), "denials": settings.data.denials,
                   "benign_mixed": min(settings.data.benign_chats, len(benign)), "examples": len(chats)}
