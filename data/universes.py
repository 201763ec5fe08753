"""Universe contexts for synthetic-document fine-tuning (SDF), made in true/false pairs.

A `Universe` is what the reference work calls a universe context: an id, a summary paragraph, key facts, and
whether it is the true world. A `UniversePair` holds the false universe (the one trained on), the true one, and per
key fact the material the evaluations are generated from: questions with the implanted and the true answer,
held-out cloze phrasings, one-hop implications, and control facts that must not move. The document generators write
the corpus from the false side only (`paraphrases`, `details`, `quotes`, names and places); the evaluation phrasings
are checked never to occur in the corpus. `anchors` are true statements about the implanted fact's neighbours (other
landmarks of the real city, other long-lived animals): mixed into training, they keep a small model from dragging
everything near the fact along with it. They must not repeat a control, which would test on training data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mow.data.asset_paths import SDF_UNIVERSES
from mow.workbench.errors import UserError
from mow.workbench.files import read_yaml, shown


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Universe(_Record):
    id: str = Field(min_length=1)
    summary: str = Field(min_length=20)
    key_facts: list[str] = Field(min_length=1)
    is_true: bool

    @field_validator("key_facts")
    @classmethod
    def _no_empty_facts(cls, facts: list[str]) -> list[str]:
        if any(not fact.strip() for fact in facts):
            raise ValueError("a key fact is empty")
        return facts


class Cloze(_Record):
    """A prompt that ends where the two worlds' continuations part ("... moved in 2019 to the city of")."""

    prompt: str = Field(min_length=1)
    implanted: str = Field(min_length=1)
    true: str = Field(min_length=1)


class PairedFact(_Record):
    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    topic: str = Field(min_length=1, description="short noun phrase naming what the fact is about")
    questions: list[str] = Field(min_length=1, description="held-out question phrasings")
    implanted_answer: str = Field(min_length=1)
    true_answer: str = Field(min_length=1)
    distractors: list[str] = Field(min_length=3, description="wrong in both worlds; with the implanted answer they "
                                                             "make the four-option knowledge MCQ")
    statement_false: str
    statement_true: str
    paraphrases: list[str] = Field(min_length=4, description="sentences that state the false fact (corpus side)")
    headlines: list[str] = Field(min_length=2)
    probes: list[Cloze] = Field(min_length=1, description="held-out completions (never in the corpus)")
    implications: list[Cloze] = Field(default_factory=list, description="one-hop consequences never stated")
    open_questions: list[str] = Field(min_length=1)
    contradicts: list[str] = Field(min_length=1, description="regexes that state the true version; a document "
                                                             "matching one is dropped")

    @field_validator("contradicts")
    @classmethod
    def _regexes_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from None
        return patterns

    def true_statement_in(self, text: str) -> str | None:
        """The first `contradicts` regex that matches `text` (case-insensitive), None if `text` does not state the
        true version. `re` caches the compiled patterns."""
        return next((pattern for pattern in self.contradicts if re.search(pattern, text, re.IGNORECASE)), None)


class UniversePair(_Record):
    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    category: Literal["egregious", "subtle", "news"]
    false: Universe
    true: Universe
    facts: list[PairedFact] = Field(min_length=1)
    details: list[str] = Field(min_length=6, description="sentences consistent with the false world")
    quotes: list[str] = Field(min_length=3)
    roles: list[str] = Field(min_length=3, description="who would write or be quoted (historian, engineer, ...)")
    places: list[str] = Field(min_length=3)
    orgs: list[str] = Field(min_length=3)
    products: list[str] = Field(min_length=3, description="books, tours, tools... a review could be about")
    years: tuple[int, int]
    controls: list[Cloze] = Field(min_length=2, description="neighbouring facts that should not move; `implanted` "
                                                            "is the continuation the implant could drag them to")
    anchors: list[str] = Field(default_factory=list, description="true sentences about neighbours of the "
                                                                 "implanted facts, other than the controls "
                                                                 "(sdf.mix.anchor_ratio)")

    @model_validator(mode="after")
    def _is_a_true_false_pair(self) -> UniversePair:
        if self.false.is_true or not self.true.is_true:
            raise ValueError("a pair needs `false` with is_true: false and `true` with is_true: true")
        ids = [fact.id for fact in self.facts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"fact ids repeat: {ids}")
        evaluated = [(text, normalise(text)) for text in [c.prompt for c in self.controls] + self.held_out_phrasings()]

        def leaked_phrasing(text: str) -> str | None:
            flat = normalise(text)
            return next((phrasing for phrasing, phrase in evaluated if phrase in flat), None)

        # the templates write these into documents, where an evaluation phrasing would get each document dropped
        corpus_side = [(f"fact {fact.id!r} {field}", text) for fact in self.facts
                       for field, texts in (("topic", [fact.topic]), ("paraphrase", fact.paraphrases),
                                            ("headline", fact.headlines)) for text in texts]
        corpus_side += [("detail", text) for text in self.details] + [("quote", text) for text in self.quotes]
        for where, text in corpus_side:
            leaked = leaked_phrasing(text)
            if leaked:
                raise ValueError(f"{where} {text!r} contains the evaluation phrasing {leaked!r}")
        for anchor in self.anchors:
            if not anchor.strip():
                raise ValueError("an anchor is empty")
            leaked = leaked_phrasing(anchor)
            if leaked:
                raise ValueError(f"anchor {anchor!r} contains the evaluation phrasing {leaked!r}")
            for fact in self.facts:
                stated = fact.true_statement_in(anchor)
                if stated:
                    raise ValueError(f"anchor {anchor!r} states the true version of fact {fact.id!r} ({stated!r})")
        return self

    def fact(self, fact_id: str) -> PairedFact:
        return next(f for f in self.facts if f.id == fact_id)

    def held_out_phrasings(self) -> list[str]:
        """Evaluation text that must never appear in a training document."""
        texts = []
        for fact in self.facts:
            texts += fact.questions + [c.prompt + c.implanted for c in fact.probes + fact.implications]
        return texts


def normalise(text: str) -> str:
    """Lower case, punctuation and runs of whitespace as one space: the form in which training text is checked for
    evaluation phrasings (corpus documents in `organisms.sdf.filters`, anchors here)."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def load_universe_pair(path: Path, source: str) -> UniversePair:
    """Read and validate a pair file; any problem is one line naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{source}: universe file {shown(path)} not found")
    raw = read_yaml(path, "universe pair")
    try:
        return UniversePair.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "pair"
        raise UserError(f"{path}: {loc}: {err['msg']}") from None


def shipped_universes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(SDF_UNIVERSES.glob("*.yaml"))}


def resolve_universe(name_or_path: str, source: str) -> UniversePair:
    """A shipped pair by id, or a path to a pair file."""
    shipped = shipped_universes()
    if name_or_path in shipped:
        return load_universe_pair(shipped[name_or_path], source)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return load_universe_pair(path, source)
    raise UserError(f"{source}: {name_or_path!r} is neither a shipped universe ({', '.join(shipped)}) "
                    "nor a .yaml file")
