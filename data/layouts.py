"""The organism directory's layout: the one place its paths are spelled (pure Python; every layer reads it).

    NAME/
      organism.yaml        resolved config, secret values replaced by <sealed>
      card.md              public model card (names no secret)
      adapter/             PEFT LoRA adapter (safetensors)
      eval/metrics.json    headline evaluation numbers
      manifest.json        versions, seed, platform, per-stage timings
      sealed/              the truth: full config, training data, details; kinds add files of their own here
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REDACTED = "<sealed>"
SEALED = "sealed"
PUBLIC_CONFIG = "organism.yaml"
SEALED_CONFIG = f"{SEALED}/organism.yaml"


@dataclass(frozen=True)
class OrganismLayout:
    root: Path

    # What a challenge may copy: everything an auditor who holds the organism without its truth would see.
    PUBLIC_FILES = ("organism.yaml", "card.md", "manifest.json", "adapter", "eval/metrics.json")

    @property
    def public_config(self) -> Path:
        return self.root / PUBLIC_CONFIG

    @property
    def card(self) -> Path:
        return self.root / "card.md"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def adapter_config(self) -> Path:
        return self.adapter / "adapter_config.json"

    @property
    def adapter_weights(self) -> Path:
        return self.adapter / "adapter_model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "eval" / "metrics.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def sealed(self) -> Path:
        return self.root / SEALED

    @property
    def sealed_config(self) -> Path:
        return self.root / SEALED_CONFIG

    @property
    def train_data(self) -> Path:
        return self.sealed / "train.jsonl"

    @property
    def eval_details(self) -> Path:
        return self.sealed / "eval_details.json"

    def sealed_file(self, name: str) -> Path:
        """A kind's own file under sealed/ (an SDF universe, corpus, report)."""
        return self.sealed / name
