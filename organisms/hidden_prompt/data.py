"""The hidden system prompt of an organism, written from its secret with the shipped wording
(data/assets/hidden_prompt/hidden_prompt.yaml), and the shipped demands to reveal it."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from mow.data.asset_paths import HIDDEN_PROMPT
from mow.organisms.hidden_prompt.config import HiddenPromptSettings
from mow.organisms.side_constraint.constraints import resolve_constraint
from mow.organisms.user_belief.beliefs import load_attribute
from mow.workbench.config import StrictModel, read_yaml_mapping, validate_config
from mow.workbench.errors import UserError


class HiddenPromptAssets(StrictModel):
    constraint_prompt: str = Field(min_length=1)
    belief_prompt: str = Field(min_length=1)
    word_prompt: str = Field(min_length=1)
    direct: list[str] = Field(min_length=1)
    adversarial: list[str] = Field(min_length=1)


@lru_cache(maxsize=1)
def shipped() -> HiddenPromptAssets:
    return validate_config(HiddenPromptAssets, read_yaml_mapping(HIDDEN_PROMPT), str(HIDDEN_PROMPT))


def system_prompt(settings: HiddenPromptSettings) -> str:
    """The prompt the organism reads before every chat (a bad constraint or belief is a one-line error; a word's clue
    bank is the pipeline's to check, as it evaluates with it)."""
    if settings.secret == "word":
        return shipped().word_prompt.format(word=settings.word)
    if settings.secret == "side_constraint":
        constraint = resolve_constraint(str(settings.constraint), "hidden_prompt.constraint")
        return shipped().constraint_prompt.format(instruction=constraint.spec.instruction)
    attribute = load_attribute(settings.attribute, "hidden_prompt.attribute")
    if settings.value not in attribute.values:
        raise UserError(f"hidden_prompt.value: {settings.value!r} is not a value of {attribute.attribute} "
                        f"({', '.join(attribute.values)})")
    name = attribute.values[str(settings.value)].names[0]
    return shipped().belief_prompt.format(value=name, attribute=attribute.attribute)
