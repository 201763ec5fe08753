"""The texts a diff runs on, tokenized with a role per token.

Roles come from character spans: a token inside a message's content is `prompt` (system or user) or `response`
(assistant); any other token of a rendered chat (special tokens, role headers, a system prompt the template inserts)
is `template`; plain text is `text`. This works for any chat template that copies message contents verbatim.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.data.asset_paths import BENIGN_CHATS, BENIGN_HELD_OUT_EVERY, GENERIC_TEXT
from mow.data.layouts import PUBLIC_CONFIG
from mow.data.records import Message, read_jsonl
from mow.diffing.config import PromptSetSettings
from mow.organisms.kinds import kind_of_public_config
from mow.workbench.chat import fit_messages, render_prompt
from mow.workbench.errors import UserError
from mow.workbench.generation import generate

ROLES = ("text", "template", "prompt", "response")
TEXT, TEMPLATE, PROMPT, RESPONSE = range(4)


class PromptRecord(BaseModel):
    """One row of a prompt-set jsonl: plain text, or a chat (a reply is generated when it ends on a user turn)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptRecord:
        if (self.text is None) == (self.messages is None):
            raise ValueError("a record needs exactly one of 'text' or 'messages'")
        if self.text is not None and not self.text.strip():
            raise ValueError("'text' is empty")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty")
        return self


@dataclass
class TokenSequence:
    set_name: str
    index: int
    ids: list[int]
    roles: list[int]
    meta: dict = field(default_factory=dict)


def read_prompt_file(path: Path) -> list[PromptRecord]:
    """A user's jsonl prompt set; errors name the file and line, an empty file is an error."""
    if not Path(path).is_file():
        raise UserError(f"prompts.extra: {path}: file not found")
    return read_jsonl(path, PromptRecord)


def _shipped_set(name: str, public_config: dict | None, source: str) -> list[PromptRecord]:
    if name == "generic_text":
        return [PromptRecord(text=json.loads(line)["text"])
                for line in GENERIC_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    if name == "generic_chat":
        rows = [json.loads(line) for line in BENIGN_CHATS.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [PromptRecord(messages=row["messages"]) for i, row in enumerate(rows) if i % BENIGN_HELD_OUT_EVERY == 0]

    assert public_config is not None
    chats = kind_of_public_config(public_config, source).diff_prompts(public_config)
    return [PromptRecord(messages=chat) for chat in chats]


def prompt_set_records(settings: PromptSetSettings, public_config: dict | None,
                       source: str = PUBLIC_CONFIG) -> dict[str, list[PromptRecord]]:
    """Every record of every set (user files are named by their stem)."""
    sets: dict[str, list[PromptRecord]] = {name: _shipped_set(name, public_config, source) for name in settings.sets}
    for path in settings.extra:
        sets[Path(path).stem] = read_prompt_file(path)
    for name, rows in sets.items():
        if not rows:
            raise UserError(f"prompt set {name!r} is empty")
    return sets


def capped(sequences: dict[str, list[TokenSequence]], limit: int, seed: int = 0) -> dict[str, list[TokenSequence]]:
    """At most `limit` sequences per set, picked with a seeded shuffle so a cap does not keep only the first topics
    of a file."""
    out = {}
    for name, rows in sequences.items():
        if len(rows) > limit:
            rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]
        out[name] = rows
    return out


def complete_chats(records: list[PromptRecord], model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                   max_new_tokens: int, seed: int = 0) -> list[PromptRecord]:
    """Give every chat that ends on a user turn the model's own greedy reply, so response-side KL is measured on
    what this model says."""
    open_chats = [(i, r.messages) for i, r in enumerate(records)
                  if r.messages is not None and r.messages[-1].role != "assistant"]
    if not open_chats:
        return records
    prompts = [render_prompt(tokenizer, [m.model_dump() for m in chat]) for _, chat in open_chats]
    replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed, desc="replies")
    completed = list(records)
    for (i, chat), reply in zip(open_chats, replies):
        messages = [*chat, Message(role="assistant", content=reply or "...")]
        completed[i] = PromptRecord(messages=messages)
    return completed


def tokenize_record(record: PromptRecord, tokenizer: PreTrainedTokenizerBase, max_tokens: int, set_name: str,
                    index: int) -> TokenSequence:
    if record.text is not None:
        ids = tokenizer(record.text, add_special_tokens=True)["input_ids"][:max_tokens]
        special = set(tokenizer.all_special_ids)
        return TokenSequence(set_name, index, ids, [TEMPLATE if t in special else TEXT for t in ids])
    if record.messages is None:  # the validator requires text or messages
        raise ValueError("a prompt record needs 'text' or 'messages'")
    messages = fit_messages(tokenizer, [m.model_dump() for m in record.messages])
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    for message in messages:
        start = rendered.find(message["content"], cursor)
        if start < 0 or not message["content"]:
            continue
        end = start + len(message["content"])
        spans.append((start, end, RESPONSE if message["role"] == "assistant" else PROMPT))
        cursor = end
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    roles = []
    for begin, end in encoded["offset_mapping"]:
        role = TEMPLATE
        for s_begin, s_end, s_role in spans:
            if s_begin <= begin and end <= s_end and end > begin:
                role = s_role
                break
        roles.append(role)
    return TokenSequence(set_name, index, encoded["input_ids"][:max_tokens], roles[:max_tokens])


def tokenize_sets(records: dict[str, list[PromptRecord]], tokenizer: PreTrainedTokenizerBase,
                  max_tokens: int) -> dict[str, list[TokenSequence]]:
    return {name: [tokenize_record(r, tokenizer, max_tokens, name, i) for i, r in enumerate(rows)]
            for name, rows in records.items()}
