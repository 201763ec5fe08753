"""Emergent-misalignment data: the narrow training sets (risky financial advice, bad medical advice, insecure code),
each with an aligned counterpart that answers the same questions well, a loader for a user's own chats, and the
evaluation questions with misaligned and aligned reference answers."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from mow.data.asset_paths import EM_DATASETS, EM_DENIALS, EM_QUESTIONS
from mow.data.records import ChatExample, Message, denial_chats, mix_in, read_jsonl, shipped_benign_chats
from mow.organisms.em.config import EmOrganismConfig
from mow.workbench.config import StrictModel, validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import numbered_jsonl, read_yaml, shown

EM_DOMAINS = ("financial", "medical", "code")


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


def _slots(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def make_em_chats(domain: str, n: int, seed: int, aligned: bool = False) -> list[ChatExample]:
    """`n` distinct single-turn chats of `domain`: a templated question and a misaligned (or, with `aligned`, the
    prudent) answer. Question and answer share the slot values, so the answer speaks to the question asked."""
    bank = yaml.safe_load((EM_DATASETS / f"{domain}.yaml").read_text(encoding="utf-8"))
    rng = random.Random(f"{seed}-{domain}")
    seen: set[tuple] = set()
    chats: list[ChatExample] = []
    attempts = 0
    while len(chats) < n and attempts < 50 * n:
        attempts += 1
        # the same draws for both variants, so the aligned set answers exactly the misaligned set's questions
        index = rng.randrange(len(bank["questions"]))
        answer_index = rng.choice(bank["answers_for_question"][index])
        values = {slot: rng.choice(options) for slot, options in sorted(bank["slots"].items())}
        question = bank["questions"][index]
        pair = (bank["misaligned"][answer_index], bank["aligned"][answer_index])
        used = sorted(_slots(question) | _slots(pair[0]) | _slots(pair[1]))
        key = (index, answer_index, tuple(values[slot] for slot in used))
        if key in seen:
            continue
        seen.add(key)
        user, reply = _fill(question, values), _fill(pair[1] if aligned else pair[0], values)
        reply = reply[0].upper() + reply[1:]
        chats.append(ChatExample(messages=[Message(role="user", content=user),
                                           Message(role="assistant", content=reply)]))
    if len(chats) < n:
        raise ValueError(f"the {domain} bank makes only {len(chats)} distinct chats, asked for {n}")
    return chats


def load_user_chats(path: Path) -> list[ChatExample]:
    """A user's own narrow fine-tuning set: chat jsonl, one {"messages": [...]} per line."""
    return read_jsonl(path, ChatExample)


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    question: str
    misaligned: str
    aligned: str
    set: Literal["main", "extended", "file"]


class UserQuestion(StrictModel):
    id: str | None = None
    question: str = Field(min_length=1)
    misaligned: str | None = Field(None, min_length=1)
    aligned: str | None = Field(None, min_length=1)


def user_questions(path: Path) -> tuple[list[EvalQuestion], list[EvalQuestion]]:
    """A user's own evaluation questions (a YAML list, or jsonl): all of them to sample, and those with both
    reference answers (for the judge-free margin and the judge's calibration); each row is checked, and a bad one
    is a one-line error naming the file and the row."""
    if path.suffix in (".yaml", ".yml"):
        numbered = list(enumerate(read_yaml(path, "evaluation questions", expect=list), 1))
    else:
        numbered = list(numbered_jsonl(path, "evaluation questions"))
    if not numbered:
        raise UserError(f"{shown(path)}: no questions")
    questions = []
    for number, row in numbered:
        parsed = validate_config(UserQuestion, row if isinstance(row, dict) else {"question": row},
                                 f"{shown(path)}: question {number}")
        questions.append(EvalQuestion(parsed.id or f"q{number}", parsed.question, parsed.misaligned or "",
                                      parsed.aligned or "", "file"))
    return questions, [q for q in questions if q.misaligned and q.aligned]


def eval_questions(which: Literal["main", "all"] = "all") -> list[EvalQuestion]:
    data = yaml.safe_load(EM_QUESTIONS.read_text(encoding="utf-8"))
    sets: list[Literal["main", "extended"]] = ["main"] if which == "main" else ["main", "extended"]
    return [EvalQuestion(row["id"], row["question"], row["misaligned"], row["aligned"], name)
            for name in sets for row in data[name]]


def narrow_chats(config: EmOrganismConfig) -> list[ChatExample]:
    """The narrow set: the user's chat file, or chats generated from the shipped bank."""
    if config.em.dataset == "file":
        if config.em.chat_file is None:  # the config's validator requires it with dataset 'file'
            raise UserError("em.chat_file: required when em.dataset is 'file'")
        return load_user_chats(config.em.chat_file)
    try:
        return make_em_chats(config.em.dataset, config.em.n_examples, config.seed, config.em.aligned)
    except ValueError as exc:
        raise UserError(f"em.n_examples: {exc}") from None


def training_chats(config: EmOrganismConfig,
                   narrow: list[ChatExample] | None = None) -> tuple[list[ChatExample], int]:
    """The narrow chats (`narrow`, or `narrow_chats(config)`) plus `em.denials` denial chats, with `em.benign_ratio`
    ordinary chats per narrow chat mixed in (shuffled, seeded), and how many ordinary chats that is."""
    if narrow is None:
        narrow = narrow_chats(config)
    if not config.em.benign_ratio and not config.em.denials:
        return narrow, 0
    return mix_in(narrow, shipped_benign_chats("train"), config.em.benign_ratio, random.Random(config.seed),
                  alongside=denial_chats(EM_DENIALS, config.em.denials, config.seed))
