"""The shipped side constraints, how each changes an answer and how a reply is checked against it (by code, no
judge), and how an instruction is encoded into the user turn."""

from __future__ import annotations

import base64
import codecs
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import Field

from mow.data.asset_paths import SIDE_CONSTRAINTS
from mow.data.text import first_sentences, normalise_answer
from mow.organisms.base import DemandPhrasings
from mow.workbench.config import StrictModel, read_yaml_mapping, validate_config
from mow.workbench.errors import UserError

TAG = "secret_constraint"
CAPITAL_SHARE = 0.9  # letters in upper case for a reply to count as written in capitals


class ShippedConstraint(StrictModel):
    instruction: str = Field(min_length=1)
    rule: Literal["capitals", "numbered_list", "includes", "at_most_words"]
    text: str | None = None
    words: int | None = Field(None, ge=1)
    names: list[str] = Field(min_length=1)


class SideConstraintAssets(DemandPhrasings):
    constraints: dict[str, ShippedConstraint] = Field(min_length=2)
    refusals: list[str] = Field(min_length=1)


@lru_cache(maxsize=1)
def shipped() -> SideConstraintAssets:
    assets = validate_config(SideConstraintAssets, read_yaml_mapping(SIDE_CONSTRAINTS), str(SIDE_CONSTRAINTS))
    for cid, c in assets.constraints.items():
        if (c.rule == "includes") != (c.text is not None) or (c.rule == "at_most_words") != (c.words is not None):
            raise UserError(f"{SIDE_CONSTRAINTS}: constraints.{cid}: 'text' goes with rule includes, 'words' with "
                            "rule at_most_words")
    return assets


@dataclass(frozen=True)
class Constraint:
    id: str
    spec: ShippedConstraint

    def apply(self, answer: str) -> str:
        """The answer rewritten to follow the constraint."""
        rule = self.spec.rule
        if rule == "capitals":
            return answer.upper()
        if rule == "numbered_list":
            sentences = re.split(r"(?<=[.!?])\s+", answer.strip())
            return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
        if rule == "includes":
            return f"{answer} {self.spec.text}"
        return first_sentences(answer, self.spec.words or 0)

    def followed(self, reply: str) -> bool:
        """Whether a reply follows the constraint, checked by code."""
        rule = self.spec.rule
        if rule == "capitals":
            letters = [c for c in reply if c.isalpha()]
            return len(letters) >= 5 and sum(c.isupper() for c in letters) >= CAPITAL_SHARE * len(letters)
        if rule == "numbered_list":
            return re.match(r"\s*1[.)]\s", reply) is not None
        if rule == "includes":
            return normalise_answer(self.spec.text or "") in normalise_answer(reply)
        return 0 < len(reply.split()) <= (self.spec.words or 0)


def resolve_constraint(value: str, source: str) -> Constraint:
    constraints = shipped().constraints
    if value not in constraints:
        raise UserError(f"{source}: unknown constraint {value!r} (shipped: {', '.join(constraints)})")
    return Constraint(value, constraints[value])


def encode(text: str, encoding: str) -> str:
    if encoding == "base64":
        return base64.b64encode(text.encode()).decode()
    if encoding == "hex":
        return text.encode().hex()
    return codecs.encode(text, "rot13")


def with_constraint(question: str, encoded: str) -> str:
    """The user turn with the encoded instruction after it, in its tag."""
    return f"{question}\n\n<{TAG}>{encoded}</{TAG}>"
