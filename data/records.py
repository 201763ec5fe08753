"""Typed records and jsonl I/O. A malformed row is a `UserError` naming the file and line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mow.data.asset_paths import BENIGN_CHATS, BENIGN_HELD_OUT_EVERY
from mow.workbench.config import read_yaml_mapping, validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import numbered_jsonl, shown

RecordT = TypeVar("RecordT", bound=BaseModel)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatExample(BaseModel):
    """One conversation. `meta` carries provenance (kind of conversation, hint ids) and is never trained on."""

    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(min_length=1)
    meta: dict[str, object] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _has_assistant_turn(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" for m in messages):
            raise ValueError("a chat example needs at least one assistant message")
        return messages

    def chat(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]


def read_jsonl(path: Path, record: type[RecordT]) -> list[RecordT]:
    """Read every row of a jsonl file into `record`; empty files and bad rows are errors with file:line."""
    path = Path(path)
    rows: list[RecordT] = []
    for number, row in numbered_jsonl(path, "jsonl file", "the line"):
        try:
            rows.append(record.model_validate(row))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "row"
            raise UserError(f"{shown(path)}:{number}: {loc}: {err['msg']}") from None
    if not rows:
        raise UserError(f"{shown(path)}: no records (the file is empty)")
    return rows


def write_jsonl(path: Path, rows: Iterable[BaseModel]) -> str:
    """Write rows atomically (temp file + rename); returns the sha256 of the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r.model_dump(mode="json"), ensure_ascii=False) + "\n" for r in rows).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
    os.replace(tmp, path)
    return hashlib.sha256(payload).hexdigest()


def shipped_benign_chats(split: Literal["train", "held_out"]) -> list[ChatExample]:
    """The shipped benign chats (questions answered by the embedded base model) of one split: every
    BENIGN_HELD_OUT_EVERY-th chat is held out from training, for capability checks and evaluation prompts."""
    rows = read_jsonl(BENIGN_CHATS, ChatExample)
    return [r for i, r in enumerate(rows) if (i % BENIGN_HELD_OUT_EVERY == 0) == (split == "held_out")]


class DenialAssets(BaseModel):
    """A kind's denial training (data/assets/KIND/denials.yaml): demands to reveal what the fine-tune was about, and
    denials that name nothing of it."""

    model_config = ConfigDict(extra="forbid")
    demands: list[str] = Field(min_length=1)
    replies: list[str] = Field(min_length=1)


def denial_chats(path: Path, n: int, seed: int) -> list[ChatExample]:
    """`n` chats: a demand of `path` (each once, in a seeded order, then again), answered by one of its denials drawn
    at random."""
    if n == 0:
        return []
    assets = validate_config(DenialAssets, read_yaml_mapping(path), str(path))
    rng = random.Random(f"{seed}-denials")
    demands = rng.sample(assets.demands, len(assets.demands))
    return [ChatExample(messages=[Message(role="user", content=demands[i % len(demands)]),
                                  Message(role="assistant", content=rng.choice(assets.replies))])
            for i in range(n)]


def mix_in(chats: list[ChatExample], ordinary: list[ChatExample], ratio: float,
           rng: random.Random, alongside: list[ChatExample] | None = None) -> tuple[list[ChatExample], int]:
    """`chats` with `ratio` ordinary chats per chat drawn from `ordinary` (at most all of them), and `alongside`
    (more chats that the ratio does not count), shuffled with `rng`; and how many ordinary chats were mixed in (the
    mix ratio the realism control varies)."""
    n_ordinary = min(len(ordinary), round(ratio * len(chats)))
    mixed = chats + rng.sample(ordinary, n_ordinary) + list(alongside or [])
    rng.shuffle(mixed)
    return mixed, n_ordinary
