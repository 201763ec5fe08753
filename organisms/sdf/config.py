"""Config of a synthetic-document (SDF) organism."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from finetune.lora import LoraSettings
from finetune.sft import TrainingSettings
from organisms.base import OrganismConfigBase
from organisms.sdf.corpus import CorpusSettings
from organisms.sdf.evaluate import SdfEvalSettings
from organisms.sdf.locality import LocalitySettings
from organisms.sdf.training_data import MixSettings
from workbench.config import StrictModel


class SdfSettings(StrictModel):
    universe: str = Field(min_length=1, description="a shipped universe pair id, or a path to a pair .yaml")
    corpus: CorpusSettings = CorpusSettings()
    mix: MixSettings = MixSettings()
    locality: LocalitySettings = Field(LocalitySettings(), description="KL to the base model on the anchors and "
                                       "base-written neighbour texts during training, so the implant stays local")
    scaling_documents: list[int] = Field(default_factory=list, description="also train on the first N documents "
                                         "for each N, to plot belief against corpus size (the full corpus is the "
                                         "last point)")

    @field_validator("scaling_documents")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(n < 1 for n in sizes):
            raise ValueError(f"sizes must be positive, got {sizes}")
        return sorted(set(sizes))


class SdfOrganismConfig(OrganismConfigBase):
    kind: Literal["sdf"] = "sdf"
    sdf: SdfSettings
    lora: LoraSettings = LoraSettings(r=32, alpha=64)
    training: TrainingSettings = TrainingSettings(epochs=1, learning_rate=5e-4, max_length=256)
    eval: SdfEvalSettings = SdfEvalSettings()

    def secret_fields(self) -> dict[str, str]:
        return {"sdf.universe": "the universe pair, which states the implanted fact"}
