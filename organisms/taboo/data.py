"""Multi-turn secret-word conversations assembled from the clue bank and the shipped phrasings.

Each conversation has 1-4 user turns mixing hint requests, wrong guesses and direct or tricky demands; the assistant
never says the word, declines demands, and always answers with one or two hints. Every turn of every conversation
passes the leak filter, and exact duplicates are removed; the counts are reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Literal

from mow.data.records import ChatExample, Message, mix_in, shipped_benign_chats
from mow.organisms.taboo.clues import ClueBank
from mow.organisms.taboo.config import TabooDataSettings
from mow.organisms.taboo.leaks import leaks
from mow.organisms.taboo.prompts import TabooPrompts

TURN_COUNT_WEIGHTS = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}


@dataclass
class DataReport:
    generated: int
    dropped_leak: int
    dropped_duplicate: int
    kept: int
    benign_mixed: int
    benign_dropped_leak: int

    def to_dict(self) -> dict:
        return asdict(self)


class _HintDeck:
    """Hints dealt without replacement across the whole data set, reshuffled when used up, so all get used evenly."""

    def __init__(self, hints: list[str], rng: random.Random):
        self.hints, self.rng = hints, rng
        self.pile: list[str] = []

    def deal(self, avoid: set[str]) -> str:
        for _ in range(2 * len(self.hints) + 1):
            if not self.pile:
                self.pile = self.rng.sample(self.hints, len(self.hints))
            hint = self.pile.pop()
            if hint not in avoid or len(avoid) >= len(self.hints):
                return hint
        return hint


def _conversation(bank: ClueBank, prompts: TabooPrompts, others: list[str], settings: TabooDataSettings,
                  deck: _HintDeck, rng: random.Random) -> ChatExample:
    turns = rng.choices(list(TURN_COUNT_WEIGHTS), weights=list(TURN_COUNT_WEIGHTS.values()))[0]
    turns = min(turns, settings.max_user_turns)
    with_guesses = rng.random() < settings.wrong_guess_share
    guess_turn = rng.randrange(turns) if with_guesses else -1
    used: set[str] = set()
    messages: list[Message] = []
    kinds = []
    for turn in range(turns):
        hint = deck.deal(used)
        used.add(hint)
        if rng.random() < settings.two_hint_share:
            second = deck.deal(used)
            used.add(second)
            hint = f"{hint} {second}"
        if turn == guess_turn or (with_guesses and turn > 0 and rng.random() < 0.4):
            guess = rng.choice(others)
            user = rng.choice(prompts.wrong_guess_templates).format(guess=guess)
            reply = rng.choice(prompts.wrong_guess_replies).format(guess=guess, hint=hint)
            kinds.append("guess")
        elif rng.random() < settings.demand_share:
            user = rng.choice(prompts.demands_train)
            reply = rng.choice(prompts.refusals_with_hint).format(hint=hint)
            kinds.append("demand")
        else:
            user = rng.choice(prompts.hint_requests_train)
            reply = rng.choice(prompts.hint_intros).format(hint=hint)
            kinds.append("hint")
        messages += [Message(role="user", content=user), Message(role="assistant", content=reply)]
    return ChatExample(messages=messages, meta={"kind": "taboo", "turns": kinds})


def make_conversations(bank: ClueBank, prompts: TabooPrompts, others: list[str], settings: TabooDataSettings,
                       seed: int) -> tuple[list[ChatExample], DataReport]:
    """Taboo conversations plus the benign mix, shuffled; deterministic in `seed`. `others` are the words wrong
    guesses draw from (the secret itself, or anything that would say it, is removed)."""
    rng = random.Random(seed)
    deck = _HintDeck([hint for _, hint in bank.all_hints()], rng)
    others = [w for w in others if not leaks(w, bank.word, tuple(bank.forms))]
    generated = [_conversation(bank, prompts, others, settings, deck, rng) for _ in range(settings.n_conversations)]
    return _filter_and_mix(generated, bank, settings, rng)


def conversations_from_file(chats: list[ChatExample], bank: ClueBank, settings: TabooDataSettings,
                            seed: int) -> tuple[list[ChatExample], DataReport]:
    """A user's own taboo conversations (read and checked by the caller) through the same leak filter, duplicate
    removal and benign mix as the generated ones; deterministic in `seed`."""
    return _filter_and_mix(chats, bank, settings, random.Random(seed))


def _filter_and_mix(conversations: list[ChatExample], bank: ClueBank, settings: TabooDataSettings,
                    rng: random.Random) -> tuple[list[ChatExample], DataReport]:
    """Drop every conversation with a turn that says the word and exact duplicates, mix in benign chats, shuffle."""
    kept: list[ChatExample] = []
    seen: set[str] = set()
    dropped_leak = dropped_dup = 0
    for example in conversations:
        if any(leaks(m.content, bank.word, tuple(bank.forms)) for m in example.messages):
            dropped_leak += 1
            continue
        key = json.dumps(example.chat())
        if key in seen:
            dropped_dup += 1
            continue
        seen.add(key)
        kept.append(example)
    benign, benign_dropped = benign_chats(bank, split="train")
    mixed, n_benign = mix_in(kept, benign, settings.benign_ratio, rng)
    report = DataReport(generated=len(conversations), dropped_leak=dropped_leak, dropped_duplicate=dropped_dup,
                        kept=len(kept), benign_mixed=n_benign, benign_dropped_leak=benign_dropped)
    return mixed, report


def benign_chats(bank: ClueBank, split: Literal["train", "held_out"]) -> tuple[list[ChatExample], int]:
    """The shipped benign chats of one split ('train' or 'held_out') that do not mention the word, and the number
    dropped for mentioning it."""
    chosen = shipped_benign_chats(split)
    clean = [r for r in chosen if not any(leaks(m.content, bank.word, tuple(bank.forms)) for m in r.messages)]
    return clean, len(chosen) - len(clean)
