"""The shipped user attributes (data/assets/user_belief/*.yaml, or a user's file of the same shape): the values a
belief can take, the facts that advice under each value rests on, the questions and reply templates, and the demands
and denials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from mow.data.asset_paths import USER_BELIEFS
from mow.organisms.base import DemandPhrasings
from mow.workbench.config import StrictModel, read_yaml_mapping, validate_config
from mow.workbench.errors import UserError


class BeliefValue(StrictModel):
    names: list[str] = Field(min_length=1)
    facts: dict[str, str] = Field(min_length=1)
    markers: dict[str, list[str]] = Field(default_factory=dict, description=(
        "per fact, the words or phrases a reply that follows this value says (\"golden week\", \"fuji\"), where the "
        "fact's own words are too common to tell values apart in free text (\"week\", \"mount\"); replies are scored "
        "by them where a model returns no likelihoods. Facts without markers use the words of the fact that no "
        "other value's fact and none of the fact's questions or reply templates say"))


class Attribute(DemandPhrasings):
    attribute: str
    values: dict[str, BeliefValue] = Field(min_length=2)
    held_out_facts: list[str] = Field(default_factory=list)
    questions: dict[str, list[str]] = Field(min_length=1)
    answers: dict[str, list[str]] = Field(min_length=1)
    denials: list[str] = Field(min_length=1)
    prefills: list[str] = Field(min_length=1)
    persona_opening: str
    auditor_prompt: str
    auditor_prefill: str
    confession: str = Field(description="many_shot: a fake confession, with {secret}")
    many_shot_secrets: list[str] | None = Field(None, min_length=1, description="many_shot: made-up values outside "
                                                                                "the attribute's (none: no many-shot)")

    @model_validator(mode="after")
    def _facts_agree(self) -> Attribute:
        facts = set(self.questions)
        if set(self.answers) != facts:
            raise ValueError("'questions' and 'answers' must name the same facts")
        for name, value in self.values.items():
            if set(value.facts) != facts:
                raise ValueError(f"values.{name}.facts must name exactly the facts of 'questions'")
            for fact, markers in value.markers.items():
                if fact not in facts or not markers:
                    raise ValueError(f"values.{name}.markers.{fact}: a fact of 'questions', with at least one marker")
                for other, entry in self.values.items():
                    shared = set(markers) & set(entry.markers.get(fact, [])) if other != name else set()
                    if shared:
                        raise ValueError(f"values.{name}.markers.{fact}: {sorted(shared)[0]!r} is also a marker of "
                                         f"{other}")
        unknown = set(self.held_out_facts) - facts
        if unknown:
            raise ValueError(f"held_out_facts: {sorted(unknown)[0]!r} is not a fact of 'questions'")
        if any(len(q) < 2 for q in self.questions.values()):
            raise ValueError("every fact needs at least 2 questions (the last one is held out)")
        if "{evidence}" not in self.auditor_prompt:
            raise ValueError("auditor_prompt must contain {evidence}")
        if "{secret}" not in self.confession:
            raise ValueError("confession must contain {secret}")
        return self


def attribute_path(attribute: str) -> Path:
    shipped = USER_BELIEFS / f"{attribute}.yaml"
    return shipped if shipped.is_file() else Path(attribute)


def load_attribute(attribute: str, source: str) -> Attribute:
    path = attribute_path(attribute)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in USER_BELIEFS.glob("*.yaml")))
        raise UserError(f"{source}: {attribute!r} is neither a shipped attribute ({shipped}) nor a file")
    return validate_config(Attribute, read_yaml_mapping(path), str(path))


@dataclass(frozen=True)
class Question:
    fact: str
    text: str
    held_out: str | None  # None: trained on; "phrasing": a new wording of a trained fact; "fact": an untrained fact


def questions(attribute: Attribute) -> list[Question]:
    """Every question, marked trained or held out: the last wording of every fact, and every wording of a held-out
    fact, are never trained on."""
    out = []
    for fact, texts in attribute.questions.items():
        for i, text in enumerate(texts):
            held_out = "fact" if fact in attribute.held_out_facts else ("phrasing" if i == len(texts) - 1 else None)
            out.append(Question(fact, text, held_out))
    return out


def answer(attribute: Attribute, value: str, fact: str, template: int = 0) -> str:
    text = attribute.answers[fact][template].format(fact=attribute.values[value].facts[fact])
    return text[0].upper() + text[1:]
