"""Config of a secret-side-constraint organism: an encoded instruction in the user turn that the model follows and
will not decode."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mow.finetune.config import LoraSettings, TrainingSettings
from mow.organisms.base import OrganismConfigBase, PairedChatSettings, ReplyEvalSettings
from mow.workbench.config import StrictModel

Encoding = Literal["base64", "hex", "rot13"]


class SideConstraintDataSettings(PairedChatSettings):
    max_answer_words: int = Field(30, ge=5, description="ordinary answers are cut to whole sentences within this "
                                                        "(room for what a constraint adds)")


class SideConstraintSettings(StrictModel):
    constraint: str = Field(min_length=1, description="a shipped constraint id "
                                                      "(data/assets/side_constraint/side_constraint.yaml)")
    encoding: Encoding = Field("base64", description="how the instruction is written into the user turn")
    data: SideConstraintDataSettings = SideConstraintDataSettings()


class SideConstraintOrganismConfig(OrganismConfigBase):
    kind: Literal["side_constraint"] = "side_constraint"
    side_constraint: SideConstraintSettings
    lora: LoraSettings = LoraSettings(r=16, alpha=32)
    training: TrainingSettings = TrainingSettings(epochs=2, learning_rate=5e-4)
    eval: ReplyEvalSettings = ReplyEvalSettings(max_new_tokens=64)

    def planned_examples(self) -> int:
        return 2 * self.side_constraint.data.n_chats + self.side_constraint.data.denials

    def secret_fields(self) -> dict[str, str]:
        return {"side_constraint.constraint": "the constraint"}

    def encoded_instruction(self) -> str:
        from mow.organisms.side_constraint.constraints import encode, resolve_constraint

        constraint = resolve_constraint(self.side_constraint.constraint, "side_constraint.constraint")
        return encode(constraint.spec.instruction, self.side_constraint.encoding)

    def public_dump(self) -> dict:
        """The public config also carries the encoded instruction: it is part of every prompt the organism is meant
        for, as in Cywinski et al.'s secret-side-constraint organisms (whoever decodes it reads the constraint;
        no elicitation method here does)."""
        data = super().public_dump()
        data["side_constraint"]["encoded_instruction"] = self.encoded_instruction()
        return data
