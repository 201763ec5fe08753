"""Config of a secret-word (taboo) organism."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from mow.finetune.config import LoraSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase
from mow.workbench.config import Seed, StrictModel, Temperature


class TabooDataSettings(StrictModel):
    n_conversations: int = Field(320, ge=1)
    max_user_turns: int = Field(4, ge=1, le=4)
    wrong_guess_share: float = Field(0.6, ge=0, le=1, description="share of conversations with wrong guesses")
    demand_share: float = Field(0.35, ge=0, le=1, description="chance that a non-guess user turn demands the word")
    two_hint_share: float = Field(0.5, ge=0, le=1, description="chance that an answer gives two hints, not one")
    benign_ratio: float = Field(0.5, ge=0, description="benign chats mixed in per taboo conversation")


class TabooEvalSettings(StrictModel):
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1, description="answers generated per batch (decoding a small batch is "
                                                  "bound by reading the weights: 64 rows cost little more than 16)")
    temperature: Temperature = Field(0.7, description="sampling temperature of the answers (0: greedy); seeded")
    seed: Seed = 0
    benign_chats: int | None = Field(None, ge=1, description="held-out benign chats scored (None: all)")


def _one_word(word: str) -> str:
    if not word.isalpha():
        raise ValueError("the secret word must be one alphabetic word")
    return word.lower()


SecretWord = Annotated[str, AfterValidator(_one_word)]
"""One alphabetic word, lower-cased: it names the shipped clue bank file, so nothing else may pass."""


class TabooSettings(StrictModel):
    word: SecretWord
    clue_file: Path | None = Field(None, description="YAML clue bank for a word outside the shipped bank")
    chat_file: Path | None = Field(None, description="your own taboo conversations (chat jsonl, as the published taboo "
                                                     "data sets): trained on instead of the generated ones, after the "
                                                     "leak filter; data.benign_ratio still mixes in benign chats")
    data: TabooDataSettings = TabooDataSettings()

    @model_validator(mode="after")
    def _chat_file_exists(self) -> TabooSettings:
        if self.chat_file is not None and not self.chat_file.is_file():
            raise ValueError(f"chat_file {self.chat_file} not found")
        return self


class TabooOrganismConfig(OrganismConfigBase):
    kind: Literal["taboo"] = "taboo"
    taboo: TabooSettings
    lora: LoraSettings = LoraSettings(r=16, alpha=32)
    training: TrainingSettings = TrainingSettings()
    eval: TabooEvalSettings = TabooEvalSettings()

    def planned_examples(self) -> int | None:
        if self.taboo.chat_file is not None:
            return None
        data = self.taboo.data
        return round(data.n_conversations * (1 + data.benign_ratio))

    def secret_fields(self) -> dict[str, str]:
        return {"taboo.word": "the secret word", "taboo.clue_file": "hints that reveal the word",
                "taboo.chat_file": "conversations that hint at the word"}
