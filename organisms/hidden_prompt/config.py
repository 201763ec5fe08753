"""Config of a hidden-system-prompt organism: the base model plus a system prompt it reads before every chat, sealed
away from anyone who audits it. Nothing is trained. The model is local (`model`), or any OpenAI-compatible endpoint
(`endpoint`): the cheapest way to give a model too big for this machine a secret with exact ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mow.finetune.config import LoraSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase, ReplyEvalSettings
from mow.organisms.taboo.config import SecretWord
from mow.workbench.backend_config import BackendSettings
from mow.workbench.config import StrictModel

SECRET_FIELD = {"side_constraint": "constraint", "user_belief": "value", "word": "word"}
"""The field that holds each secret; the others must be absent."""


class HiddenPromptSettings(StrictModel):
    secret: Literal["side_constraint", "user_belief", "word"] = Field(
        description="what the hidden prompt holds: a shipped side constraint the model follows in every answer, "
                    "a belief about the user it acts on, or a secret word it gives hints about and never says")
    constraint: str | None = Field(None, min_length=1, description="side_constraint: a shipped constraint id "
                                                                    "(data/assets/side_constraint/side_constraint.yaml)")
    attribute: str = Field("gender", min_length=1, description="user_belief: a shipped attribute (country, gender) "
                                                               "or a YAML file of the same shape")
    value: str | None = Field(None, min_length=1, description="user_belief: one of the attribute's values")
    word: SecretWord | None = Field(None, description="word: one alphabetic word, a shipped taboo word "
                                                      "(data/assets/taboo/clues) or one with clue_file")
    clue_file: Path | None = Field(None, description="word: a clue bank for a word that is not shipped (the taboo "
                                                     "kind's format); it calibrates the hint guesser")

    @model_validator(mode="after")
    def _secret_given(self) -> HiddenPromptSettings:
        needed = SECRET_FIELD[self.secret]
        if getattr(self, needed) is None:
            raise ValueError(f"secret {self.secret} needs '{needed}'")
        allowed = {needed, "clue_file"} if self.secret == "word" else {needed}
        for other in sorted({*SECRET_FIELD.values(), "clue_file"} - allowed):
            if getattr(self, other) is not None:
                raise ValueError(f"'{other}' does not go with secret {self.secret}")
        return self


class HiddenPromptOrganismConfig(OrganismConfigBase):
    kind: Literal["hidden_prompt"] = "hidden_prompt"
    hidden_prompt: HiddenPromptSettings
    eval: ReplyEvalSettings = ReplyEvalSettings(max_new_tokens=64)
    endpoint: BackendSettings | None = Field(None, description=(
        "the organism's model on an OpenAI-compatible endpoint (kind endpoint, url, model, api_key_env) instead of "
        "the local `model`: every chat is sent with the hidden prompt as its system message, and the same endpoint "
        "without it is the base model. Every secret is scored from replies, by code (a chat endpoint returns no "
        "likelihoods; a word's guesser is the endpoint, asked to pick a candidate in words); challenges run the "
        "methods that need only chats"))

    @model_validator(mode="before")
    @classmethod
    def _model_of_endpoint(cls, data: Any) -> Any:
        """With an endpoint, `model` is its model name (what the organism's files and card name as its model)."""
        endpoint = data.get("endpoint") if isinstance(data, dict) else None
        if isinstance(endpoint, dict) and isinstance(endpoint.get("model"), str) and "model" not in data:
            return {**data, "model": endpoint["model"]}
        return data

    @model_validator(mode="after")
    def _nothing_to_train(self) -> HiddenPromptOrganismConfig:
        for key, default in (("lora", LoraSettings()), ("training", TrainingSettings())):
            if getattr(self, key) != default:
                raise ValueError(f"'{key}' does not apply: a hidden-prompt organism trains nothing")
        if self.load_in_4bit:
            raise ValueError("'load_in_4bit' does not apply: the prompt's cache is read at full precision")
        if self.endpoint is not None:
            if self.endpoint.kind != "endpoint":
                raise ValueError("endpoint.kind: must be 'endpoint' (a local model is named by 'model')")
            if self.model != self.endpoint.model:
                raise ValueError(f"'model' does not apply: the model is endpoint.model ({self.endpoint.model}), "
                                 "served at endpoint.url")
            if self.trust_remote_code:
                raise ValueError("'trust_remote_code' does not apply: the model runs on the endpoint")
        return self

    def planned_examples(self) -> int:
        return 0

    def secret_fields(self) -> dict[str, str]:
        return {"hidden_prompt.constraint": "the constraint", "hidden_prompt.value": "the belief",
                "hidden_prompt.word": "the secret word", "hidden_prompt.clue_file": "hints that reveal the word"}
