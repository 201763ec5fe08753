"""Config of a secret-word (taboo) organism."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from finetune.lora import LoraSettings
from finetune.sft import TrainingSettings
from organisms.base import OrganismConfigBase
from organisms.taboo.conversations import TabooDataSettings
from organisms.taboo.evaluate import TabooEvalSettings
from workbench.config import StrictModel


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
