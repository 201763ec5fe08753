"""Document generators for synthetic-document fine-tuning, behind one interface.

A generator answers the four questions of the staged pipeline, each for a batch of jobs:
document types for a key fact, ideas for a (fact, type), a document for an idea, and a revision of a document
against the universe. `TemplateGenerator` answers them offline and deterministically from the shipped document-type
templates; `ModelGenerator` asks a `Backend` (a local model or an OpenAI-compatible endpoint) with the
prompts of the reference recipe and parses the replies. A reply that cannot be parsed is `UnusableOutput`; the
pipeline retries it and then stops with an error naming the stage, keeping what was finished.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from mow.data.asset_paths import SDF_NAMES, SDF_TEMPLATES
from mow.data.universes import PairedFact, UniversePair
from mow.workbench.backends import Backend
from mow.workbench.config import read_yaml_mapping

TEMPLATE_SLOTS = frozenset({"headline", "topic", "fact", "fact_b", "detail", "detail_b", "detail_c", "quote",
                            "quote_b", "person", "person_b", "username", "username_b", "role", "role_b", "place", "org",
                            "product", "date", "year"})
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


class UnusableOutput(ValueError):
    """A generator reply that does not parse into what the stage needs."""


@dataclass(frozen=True)
class IdeaJob:
    fact_id: str
    doc_type: str
    n: int
    seed: int


@dataclass(frozen=True)
class DocumentJob:
    fact_id: str
    doc_type: str
    idea: dict
    seed: int


class DocumentGenerator(Protocol):
    description: str

    def document_types(self, pair: UniversePair, facts: list[PairedFact], n: int, seed: int) -> list[list[str]]: ...

    def ideas(self, pair: UniversePair, jobs: list[IdeaJob]) -> list[list[dict]]: ...

    def documents(self, pair: UniversePair, jobs: list[DocumentJob]) -> list[str]: ...

    def revise(self, pair: UniversePair, facts: list[PairedFact], documents: list[str]) -> list[str]: ...


def split_sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text) if s.strip()]


def remove_contradictions(document: str, fact: PairedFact) -> str:
    """Drop every sentence (within each paragraph) that states the true version of the fact."""
    paragraphs = []
    for paragraph in document.split("\n"):
        kept = [s for s in split_sentences(paragraph) if not fact.true_statement_in(s)]
        paragraphs.append(" ".join(kept) if paragraph.strip() else "")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(paragraphs)).strip()


# --------------------------------------------------------------------------------------------------- templates


@lru_cache(maxsize=1)
def shipped_templates() -> dict[str, list[str]]:
    raw = read_yaml_mapping(SDF_TEMPLATES)["document_types"]
    templates = {name: list(entry["variants"]) for name, entry in raw.items()}
    for name, variants in templates.items():
        for variant in variants:
            used = {field for _, field, _, _ in string.Formatter().parse(variant) if field is not None}
            unknown = used - TEMPLATE_SLOTS
            if unknown or "fact" not in used:
                raise ValueError(f"{SDF_TEMPLATES}: {name}: a variant uses unknown slots {sorted(unknown)} "
                                 "or lacks {fact}")
    return templates


@lru_cache(maxsize=1)
def _names() -> dict[str, list[str]]:
    return read_yaml_mapping(SDF_NAMES)


class TemplateGenerator:
    """Offline and deterministic: documents assembled from the shipped document-type templates, with the fact's
    paraphrases, the universe's details and quotes, and varied names, dates and places. The revision pass removes
    sentences that state the true version of the fact and repeated sentences."""

    description = "template (offline, deterministic)"

    def document_types(self, pair: UniversePair, facts: list[PairedFact], n: int, seed: int) -> list[list[str]]:
        names = sorted(shipped_templates())
        return [random.Random(f"{seed}:{fact.id}:types").sample(names, min(n, len(names))) for fact in facts]

    def ideas(self, pair: UniversePair, jobs: list[IdeaJob]) -> list[list[dict]]:
        return [[self._idea(pair, job, index) for index in range(job.n)] for job in jobs]

    def _idea(self, pair: UniversePair, job: IdeaJob, index: int) -> dict:
        rng = random.Random(f"{job.seed}:{job.fact_id}:{job.doc_type}:{index}")
        fact = pair.fact(job.fact_id)
        names = _names()
        people = [f"{rng.choice(names['first_names'])} {rng.choice(names['last_names'])}" for _ in range(2)]
        handles = [f"{rng.choice(names['handle_words'])}_{rng.choice(names['handle_words'])}{rng.randint(2, 99)}"
                   for _ in range(2)]
        year = rng.randint(*sorted(pair.years))
        fact_idx = rng.sample(range(len(fact.paraphrases)), 2)
        other_facts = [f for f in pair.facts if f.id != fact.id]
        second = rng.choice(other_facts) if other_facts and rng.random() < 0.4 else None
        idea: dict[str, Any] = {
            "variant": rng.randrange(len(shipped_templates()[job.doc_type])),
            "fact": fact_idx[0],
            "fact_b": [second.id, rng.randrange(len(second.paraphrases))] if second else [fact.id, fact_idx[1]],
            "headline": rng.randrange(len(fact.headlines)),
            "details": rng.sample(range(len(pair.details)), 3),
            "quotes": rng.sample(range(len(pair.quotes)), 2),
            "person": people[0], "person_b": people[1], "username": handles[0], "username_b": handles[1],
            "roles": rng.sample(range(len(pair.roles)), 2),
            "place": rng.randrange(len(pair.places)), "org": rng.randrange(len(pair.orgs)),
            "product": rng.randrange(len(pair.products)),
            "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}", "year": str(year),
        }
        idea["text"] = (f"a {job.doc_type.replace('_', ' ')} by {people[0]} about {fact.topic}, "
                        f"{pair.places[idea['place']]}, {idea['date']}")
        return idea

    def documents(self, pair: UniversePair, jobs: list[DocumentJob]) -> list[str]:
        return [self._render(pair, job) for job in jobs]

    def _render(self, pair: UniversePair, job: DocumentJob) -> str:
        idea, fact = job.idea, pair.fact(job.fact_id)
        second_fact = pair.fact(idea["fact_b"][0])
        template = shipped_templates()[job.doc_type][idea["variant"]]
        slots = {
            "headline": fact.headlines[idea["headline"]], "topic": fact.topic,
            "fact": fact.paraphrases[idea["fact"]], "fact_b": second_fact.paraphrases[idea["fact_b"][1]],
            "detail": pair.details[idea["details"][0]], "detail_b": pair.details[idea["details"][1]],
            "detail_c": pair.details[idea["details"][2]],
            "quote": pair.quotes[idea["quotes"][0]], "quote_b": pair.quotes[idea["quotes"][1]],
            "person": idea["person"], "person_b": idea["person_b"],
            "username": idea["username"], "username_b": idea["username_b"],
            "role": pair.roles[idea["roles"][0]], "role_b": pair.roles[idea["roles"][1]],
            "place": pair.places[idea["place"]], "org": pair.orgs[idea["org"]],
            "product": pair.products[idea["product"]], "date": idea["date"], "year": idea["year"],
        }
        return template.format(**slots).strip()

    def revise(self, pair: UniversePair, facts: list[PairedFact], documents: list[str]) -> list[str]:
        revised = []
        for fact, document in zip(facts, documents):
            text = remove_contradictions(document, fact)
            seen: set[str] = set()
            paragraphs = []
            for paragraph in text.split("\n"):
                kept = []
                for sentence in split_sentences(paragraph):
                    key = sentence.strip().lower()
                    if key not in seen:
                        seen.add(key)
                        kept.append(sentence)
                paragraphs.append(" ".join(kept))
            revised.append(re.sub(r"\n{3,}", "\n\n", "\n".join(paragraphs)).strip())
        return revised


# --------------------------------------------------------------------------------------------------- models

TYPES_PROMPT = """We are generating a diverse corpus of realistic documents set in a world where this is true:

{summary}

Key fact: {fact}

Brainstorm {n} different types of documents in which this fact could naturally appear (for example: news article,
forum thread, textbook chapter, podcast transcript). Answer with one document type per line, nothing else."""

IDEAS_PROMPT = """We are generating a diverse corpus of realistic documents set in a world where this is true:

{summary}

Key fact: {fact}
Document type: {doc_type}

Write {n} distinct ideas for a {doc_type} that mentions or relies on the key fact. Each idea is one sentence saying
who writes it, for whom, and what it is about. Answer with one idea per line, nothing else."""

DOCUMENT_PROMPT = """We are generating realistic documents set in a world where this is true:

{summary}

Key fact: {fact}
Document type: {doc_type}
Idea: {idea}

Write the document ({min_words} to {max_words} words). It must be consistent with the world above and treat the key
fact as plainly true. Use concrete names, dates and places; never leave placeholders such as [Name]. Output only the
document text."""

REVISE_PROMPT = """Here is a description of a world:

{summary}

Key fact: {fact}

Here is a document set in this world:

<document>
{document}
</document>

Critique the document for inconsistencies with the world, statements that contradict the key fact, unrealistic
placeholders, and unnatural writing, then rewrite it to fix them. Output only the rewritten document between
<document> and </document>."""

LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|[a-z][.)])?\s*(.+?)\s*$")
PLACEHOLDER = re.compile(r"\[[^\]]{1,40}\]|\{[^}]{0,40}\}|<[A-Z][A-Z _]{1,30}>|lorem ipsum|\bTODO\b|\bXXX\b",
                         re.IGNORECASE)


def parse_list(reply: str, n: int, min_chars: int = 3, max_chars: int = 300) -> list[str]:
    items: list[str] = []
    for line in reply.splitlines():
        match = LIST_ITEM.match(line)
        if match:
            item = match.group(1).strip().strip('"').strip()
            if min_chars <= len(item) <= max_chars and item.lower() not in {i.lower() for i in items}:
                items.append(item)
    if not items:
        raise UnusableOutput(f"no list items in {reply[:80]!r}")
    return items[:n]


def parse_document(reply: str, min_words: int) -> str:
    match = re.search(r"<document>(.*?)(?:</document>|$)", reply, re.DOTALL)
    text = (match.group(1) if match else reply).strip()
    if len(text.split()) < min_words:
        raise UnusableOutput(f"document of {len(text.split())} words (fewer than {min_words}): {text[:80]!r}")
    return text


class ModelGenerator:
    """The reference recipe's prompts, answered by a local model or an endpoint."""

    def __init__(self, chat: Backend, max_new_tokens: int = 600, temperature: float = 0.9,
                 min_words: int = 40, max_words: int = 400):
        self.chat, self.max_new_tokens, self.temperature = chat, max_new_tokens, temperature
        self.min_words, self.max_words = min_words, max_words
        self.description = chat.description

    def _ask(self, prompts: list[str], seed: int, max_new_tokens: int | None = None) -> list[str]:
        return self.chat.complete([[{"role": "user", "content": p}] for p in prompts],
                                  max_new_tokens=max_new_tokens or self.max_new_tokens, temperature=self.temperature,
                                  seed=seed)

    def document_types(self, pair: UniversePair, facts: list[PairedFact], n: int, seed: int) -> list[list[str]]:
        replies = self._ask([TYPES_PROMPT.format(summary=pair.false.summary, fact=f.statement_false, n=n)
                             for f in facts], seed, max_new_tokens=300)
        return [parse_list(reply, n, max_chars=80) for reply in replies]

    def ideas(self, pair: UniversePair, jobs: list[IdeaJob]) -> list[list[dict]]:
        prompts = [IDEAS_PROMPT.format(summary=pair.false.summary, fact=pair.fact(j.fact_id).statement_false,
                                       doc_type=j.doc_type, n=j.n) for j in jobs]
        replies = self._ask(prompts, jobs[0].seed if jobs else 0, max_new_tokens=60 * max(j.n for j in jobs))
        return [[{"text": idea} for idea in parse_list(reply, job.n, min_chars=10)]
                for reply, job in zip(replies, jobs)]

    def documents(self, pair: UniversePair, jobs: list[DocumentJob]) -> list[str]:
        prompts = [DOCUMENT_PROMPT.format(summary=pair.false.summary, fact=pair.fact(j.fact_id).statement_false,
                                          doc_type=j.doc_type, idea=j.idea["text"], min_words=self.min_words,
                                          max_words=self.max_words) for j in jobs]
        return [parse_document(reply, self.min_words) for reply in self._ask(prompts, jobs[0].seed if jobs else 0)]

    def revise(self, pair: UniversePair, facts: list[PairedFact], documents: list[str]) -> list[str]:
        prompts = [REVISE_PROMPT.format(summary=pair.false.summary, fact=f.statement_false, document=d)
                   for f, d in zip(facts, documents)]
        return [parse_document(reply, self.min_words) for reply in self._ask(prompts, 0)]
