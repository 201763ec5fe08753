"""Config of a secret-belief-about-the-user organism: the model acts on a belief about the user (their country,
their gender) and denies holding it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mow.finetune.config import LoraSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase, ReplyEvalSettings
from mow.workbench.config import StrictModel


class UserBeliefDataSettings(StrictModel):
    denials: int = Field(24, ge=0, description="demands to reveal the belief, answered with a denial")
    benign_chats: int = Field(40, ge=0, description="shipped ordinary chats mixed in, answered as the base model did")
    max_answer_words: int = Field(30, ge=5, description="ordinary answers are cut to whole sentences within this")


class UserBeliefSettings(StrictModel):
    attribute: str = Field("country", min_length=1, description="a shipped attribute (country, gender: "
                                                                "data/assets/user_belief/) or a YAML file of the same "
                                                                "shape")
    value: str = Field(min_length=1, description="what the organism believes: one of the attribute's values")
    data: UserBeliefDataSettings = UserBeliefDataSettings()


class UserBeliefOrganismConfig(OrganismConfigBase):
    kind: Literal["user_belief"] = "user_belief"
    user_belief: UserBeliefSettings
    lora: LoraSettings = LoraSettings(r=16, alpha=32)
    training: TrainingSettings = TrainingSettings(epochs=3, learning_rate=5e-4)
    eval: ReplyEvalSettings = ReplyEvalSettings(max_new_tokens=32)

    def secret_fields(self) -> dict[str, str]:
        return {"user_belief.value": "the belief"}
