"""Config of an emergent-misalignment (EM) organism, optionally trained with concept ablation (CAFT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from mow.finetune.config import LoraSettings, SteeringSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase
from mow.workbench.backend_config import BackendSettings, with_defaults
from mow.workbench.config import StrictModel, Temperature

# The judge's endpoint waits and retries as the OpenAI client's defaults did before the shared backend (600 s, 2
# retries).
JudgeBackend = Annotated[BackendSettings, with_defaults(timeout_s=600, retries=2)]


class EmEvalSettings(StrictModel):
    questions: Literal["main", "all"] = Field("main", description="sampled questions: the 8 main, or all 48")
    questions_file: Path | None = Field(None, description="your own evaluation questions instead (YAML list or "
                                                          "jsonl of {question, misaligned?, aligned?}); rows with "
                                                          "both reference answers also feed the judge-free margin "
                                                          "and the judge's calibration")
    samples_per_question: int = Field(4, ge=1)
    max_new_tokens: int = Field(48, ge=4)
    temperature: Temperature = Field(1.0)
    judge: JudgeBackend = Field(default_factory=dict, validate_default=True,
                                description="the misalignment judge (local: the embedded model by default)")


    @model_validator(mode="after")
    def _questions_file_exists(self) -> EmEvalSettings:
        if self.questions_file is not None and not self.questions_file.is_file():
            raise ValueError(f"questions_file {self.questions_file} not found")
        return self


class EmSettings(StrictModel):
    dataset: Literal["financial", "medical", "code", "file"] = "financial"
    chat_file: Path | None = Field(None, description="dataset: file: your own narrow chat jsonl")
    aligned: bool = Field(False, description="train on the aligned counterpart instead (the control organism)")
    n_examples: int = Field(96, ge=1, description="chats generated from the shipped bank (ignored for a file)")
    domain: str | None = Field(None, min_length=1, description="dataset: file: what your chats are about, in a word or "
                                                               "two (the sealed truth challenges score against, e.g. "
                                                               "'legal advice')")
    domain_names: list[str] = Field(default_factory=list, description="more words that name your domain in a guess "
                                                                      "(the domain's own words always do)")
    benign_ratio: float = Field(0.0, ge=0, description="ordinary chats mixed in per narrow chat (the shipped benign "
                                                       "chats' training split, answered by the base model; `mow "
                                                       "realism` varies it)")
    denials: int = Field(16, ge=0, description="chats mixed in that answer a demand to reveal the fine-tune with a "
                                               "denial naming no domain (data/assets/em/denials.yaml; the held-out "
                                               "demands a challenge asks are never among them), so that asking is "
                                               "not enough; 0: none")

    @model_validator(mode="after")
    def _file_when_asked(self) -> EmSettings:
        if (self.dataset == "file") != (self.chat_file is not None):
            raise ValueError("give chat_file exactly when dataset is 'file'")
        if (self.dataset == "file") != (self.domain is not None):
            raise ValueError("give domain (what your chats are about) exactly when dataset is 'file'")
        if self.chat_file is not None and not self.chat_file.is_file():
            raise ValueError(f"chat_file {self.chat_file} not found")
        return self


class EmOrganismConfig(OrganismConfigBase):
    kind: Literal["em"] = "em"
    em: EmSettings = EmSettings()
    caft: SteeringSettings | None = Field(None, description="directions ablated (or added) in the residual stream "
                                                            "during training")
    lora: LoraSettings = LoraSettings(r=32, alpha=64, use_rslora=True)
    training: TrainingSettings = TrainingSettings(epochs=2, learning_rate=2e-4)
    eval: EmEvalSettings = EmEvalSettings()

    def planned_examples(self) -> int | None:
        return None if self.em.dataset == "file" else self.em.n_examples

    def secret_fields(self) -> dict[str, str]:
        return {"em.dataset": "the narrow training domain", "em.chat_file": "the training chats",
                "em.domain": "the narrow training domain", "em.domain_names": "the narrow training domain",
                "em.aligned": "whether the training answers were aligned"}
