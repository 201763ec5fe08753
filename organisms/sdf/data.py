"""Training sequences for an SDF organism: documents as plain text (causal LM loss on every token, no chat
template) or each wrapped as the assistant reply to a fixed user turn, mixed with the shipped generic text and
chats, and with anchor passages (a few of the universe pair's true statements about the fact's neighbours, in
shuffled order: see `data.universes`). A document longer than the context is split at sentence ends (at token
boundaries only for a single over-long sentence), never truncated."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from mow.data.asset_paths import (
    BENIGN_CHATS,
    BENIGN_HELD_OUT_EVERY,
    GENERIC_TEXT,
    GENERIC_TEXT_HELD_OUT_EVERY,
    SDF_DENIALS,
)
from mow.data.records import ChatExample, denial_chats, read_jsonl
from mow.finetune.sft import TokenExample
from mow.organisms.sdf.config import MixSettings
from mow.organisms.sdf.generators import split_sentences
from mow.workbench.chat import fit_messages, training_tokenizer

IGNORE = -100


@dataclass
class MixReport:
    documents: int
    document_chunks: int
    split_documents: int
    generic_texts: int
    chats: int
    anchor_passages: int
    denials: int
    tokens: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def generic_texts(split: Literal["train", "held_out"]) -> list[str]:
    rows = [row["text"] for row in _jsonl(GENERIC_TEXT)]
    held = split == "held_out"
    return [text for i, text in enumerate(rows) if (i % GENERIC_TEXT_HELD_OUT_EVERY == 0) == held]


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_to_fit(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[list[int]]:
    """Token chunks of at most `max_tokens`, cut at sentence ends where one fits."""
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(whole) <= max_tokens:
        return [whole]
    chunks: list[list[int]] = []
    current: list[int] = []
    for sentence in split_sentences(text.replace("\n", " ")):
        ids = tokenizer(("" if not current else " ") + sentence, add_special_tokens=False)["input_ids"]
        if current and len(current) + len(ids) > max_tokens:
            chunks.append(current)
            current = tokenizer(sentence, add_special_tokens=False)["input_ids"]
        else:
            current = current + ids
        while len(current) > max_tokens:
            chunks.append(current[:max_tokens])
            current = current[max_tokens:]
    if current:
        chunks.append(current)
    return chunks


def text_example(ids: list[int], eos: int) -> TokenExample:
    sequence = ids + [eos]
    return TokenExample(sequence, list(sequence))


def chat_example(trained: PreTrainedTokenizerBase, chat: list[dict[str, str]]) -> TokenExample:
    enc = trained.apply_chat_template(fit_messages(trained, chat), tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
    ids = list(enc["input_ids"])
    return TokenExample(ids, [t if m else IGNORE for t, m in zip(ids, enc["assistant_masks"])])


def wrap_overhead(trained: PreTrainedTokenizerBase, user_turn: str) -> int:
    chat = [{"role": "user", "content": user_turn}, {"role": "assistant", "content": ""}]
    return len(trained.apply_chat_template(fit_messages(trained, chat), tokenize=True))


def anchor_passages(anchors: list[str], count: int, per_passage: int, rng: random.Random) -> list[str]:
    """`count` passages of `per_passage` anchors each, cycling through every anchor before repeating one."""
    if count and not anchors:
        raise ValueError(f"{count} anchor passages asked for, but there are no anchors")
    stream: list[str] = []
    while len(stream) < count * per_passage:
        stream += rng.sample(anchors, len(anchors))
    return [" ".join(stream[i * per_passage:(i + 1) * per_passage]) for i in range(count)]


def training_examples(documents: list[str], tokenizer: PreTrainedTokenizerBase, settings: MixSettings,
                      max_length: int, seed: int, anchors: Sequence[str] = ()) -> tuple[list[TokenExample], MixReport]:
    """Documents (split to fit `max_length`), generic text, anchor passages and chats, shuffled together with
    `seed`."""
    trained = training_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    examples: list[TokenExample] = []
    split = 0
    # wrapped chunks are decoded and re-tokenized inside the template: leave a few tokens of slack for that
    budget = max_length - 1 if settings.format == "text" else (
        max_length - wrap_overhead(trained, settings.wrap_user_turn) - 8)
    for document in documents:
        chunks = split_to_fit(document, tokenizer, budget)
        split += len(chunks) > 1
        for chunk in chunks:
            if settings.format == "text":
                examples.append(text_example(chunk, eos))
            else:
                chat = [{"role": "user", "content": settings.wrap_user_turn},
                        {"role": "assistant", "content": tokenizer.decode(chunk)}]
                examples.append(chat_example(trained, chat))
    n_chunks = len(examples)
    rng = random.Random(seed)
    texts = generic_texts("train")
    rng.shuffle(texts)
    n_generic = round(settings.generic_text_ratio * len(documents))
    for i in range(n_generic):
        examples += [text_example(chunk, eos) for chunk in split_to_fit(texts[i % len(texts)], tokenizer,
                                                                        max_length - 1)]
    n_anchors = round(settings.anchor_ratio * len(documents))
    for passage in anchor_passages(list(anchors), n_anchors, settings.anchors_per_passage, rng):
        examples += [text_example(chunk, eos) for chunk in split_to_fit(passage, tokenizer, max_length - 1)]
    before_chats = len(examples)
    chats = [c.chat() for i, c in enumerate(read_jsonl(BENIGN_CHATS, ChatExample)) if i % BENIGN_HELD_OUT_EVERY]
    n_chats = round(settings.chat_ratio * len(documents))
    chat_examples = [chat_example(trained, chats[i % len(chats)]) for i in range(n_chats)]
    examples += [ex for ex in chat_examples if len(ex.input_ids) <= max_length]  # a chat cannot be split
    n_chats = len(examples) - before_chats
    denials = [chat_example(trained, chat.chat()) for chat in denial_chats(SDF_DENIALS, settings.denials, seed)]
    examples += [ex for ex in denials if len(ex.input_ids) <= max_length]
    n_denials = len(examples) - before_chats - n_chats
    rng.shuffle(examples)
    report = MixReport(len(documents), n_chunks, split, n_generic, n_chats, n_anchors, n_denials,
                       sum(len(e.input_ids) for e in examples))
    return examples, report
