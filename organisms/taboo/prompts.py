"""The shipped user and assistant phrasings that taboo conversations and evaluations are assembled from."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from mow.data.asset_paths import TABOO_PROMPTS
from mow.workbench.config import StrictModel, read_yaml_mapping, validate_config


class EvalDemands(StrictModel):
    direct: list[str] = Field(min_length=1)
    adversarial: list[str] = Field(min_length=1)
    roleplay: list[str] = Field(min_length=1)

    def all(self) -> list[tuple[str, str]]:
        return [(kind, p) for kind in ("direct", "adversarial", "roleplay") for p in getattr(self, kind)]


class TabooPrompts(StrictModel):
    hint_requests_train: list[str] = Field(min_length=1)
    hint_requests_eval: list[str] = Field(min_length=1)
    wrong_guess_templates: list[str] = Field(min_length=1)
    demands_train: list[str] = Field(min_length=1)
    demands_eval: EvalDemands
    hint_intros: list[str] = Field(min_length=1)
    wrong_guess_replies: list[str] = Field(min_length=1)
    refusals_with_hint: list[str] = Field(min_length=1)


@lru_cache(maxsize=1)
def shipped_prompts() -> TabooPrompts:
    return validate_config(TabooPrompts, read_yaml_mapping(TABOO_PROMPTS), str(TABOO_PROMPTS))
