"""Config of a secret-word (taboo) organism."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mow.finetune.config import LoraSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase
from mow.workbench.config import StrictModel


class TabooDataSettings(StrictModel):
    n_conversations: int = Field(320, ge=1)
    max_user_turns: int = Field(4, ge=1, le=4)
    wrong_guess_share: float = Field(0.6, ge=0, le=1, description="share of conversations with wrong guesses")
    demand_share: float = Field(0.35, ge=0, le=1, description="chance that a non-guess user turn demands the word")
    two_hint_share: float = Field(0.5, ge=0, le=1, description="chance that an answer gives two hints, not one")
    benign_ratio: float = Field(0.5, ge=0, description="benign chats mixed in per taboo conversation")


class TabooEvalSettings(StrictModel):
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(32, ge=1)
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the answers (0: greedy); seeded")
    seed: int = 0
    benign_chats: int | None = Field(None, ge=1, description="held-out benign chats scored (None: all)")


class TabooSettings(StrictModel):
    word: str = Field(min_length=1)
    clue_file: Path | None = Field(None, description="YAML clue bank for a word outside the shipped bank")
    data: TabooDataSettings = TabooDataSettings()


class TabooOrganismConfig(OrganismConfigBase):
    kind: Literal["taboo"] = "taboo"
    taboo: TabooSettings
    lora: LoraSettings = LoraSettings(r=16, alpha=32)
    training: TrainingSettings = TrainingSettings()
    eval: TabooEvalSettings = TabooEvalSettings()

    def secret_fields(self) -> dict[str, str]:
        return {"taboo.word": "the secret word", "taboo.clue_file": "hints that reveal the word"}
