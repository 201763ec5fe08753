"""Settings every organism kind shares, and the organism directory layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field

from finetune.lora import LoraSettings
from finetune.sft import TrainingSettings
from workbench.config import StrictModel
from workbench.models import DEFAULT_MODEL

SEALED = "sealed"
PUBLIC_CONFIG = "organism.yaml"
SEALED_CONFIG = "sealed/organism.yaml"
REDACTED = "<sealed>"


class OrganismConfigBase(StrictModel):
    kind: str
    name: str | None = Field(None, description="directory name; default: KIND-<hash> that does not reveal the secret")
    output_dir: Path = Path("runs/organisms")
    model: str = DEFAULT_MODEL
    load_in_4bit: bool = False
    seed: int = 0
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()

    def secret_fields(self) -> dict[str, str]:
        """Dotted keys whose values reveal the secret; they are redacted in the public organism.yaml."""
        return {}

    def resolved_name(self) -> str:
        if self.name:
            return self.name
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]
        return f"{self.kind}-{digest}"

    def directory(self) -> Path:
        return self.output_dir / self.resolved_name()

    def public_dump(self) -> dict:
        """The resolved config with the secret-revealing values replaced by a marker."""
        data = self.model_dump(mode="json")
        for dotted in self.secret_fields():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node[part]
            if node.get(leaf) is not None:
                node[leaf] = REDACTED
        return data
