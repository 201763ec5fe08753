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
# Paths relative to the organism directory (the sealed manifest keys its data hashes by them).
SEALED = "sealed"
PUBLIC_CONFIG = "organism.yaml"
SEALED_CONFIG = f"{SEALED}/organism.yaml"
CARD = "card.md"
ADAPTER = "adapter"
METRICS = "eval/metrics.json"
MANIFEST = "manifest.json"
TRAIN_DATA = f"{SEALED}/train.jsonl"
EVAL_DETAILS = f"{SEALED}/eval_details.json"
CHECKPOINTS = "checkpoints"  # trainer state while building; removed before the build finishes


def sealed_relative(name: str) -> str:
    """A kind's own file under sealed/ (an SDF universe, corpus, report), relative to the organism directory."""
    return f"{SEALED}/{name}"


@dataclass(frozen=True)
class OrganismLayout:
    root: Path

    # What a challenge may copy: everything an auditor who holds the organism without its truth would see.
    PUBLIC_FILES = (PUBLIC_CONFIG, CARD, MANIFEST, ADAPTER, METRICS)

    @property
    def public_config(self) -> Path:
        return self.root / PUBLIC_CONFIG

    @property
    def card(self) -> Path:
        return self.root / CARD

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER

    @property
    def adapter_config(self) -> Path:
        return self.adapter / "adapter_config.json"

    @property
    def adapter_weights(self) -> Path:
        return self.adapter / "adapter_model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def sealed(self) -> Path:
        return self.root / SEALED

    @property
    def sealed_config(self) -> Path:
        return self.root / SEALED_CONFIG

    @property
    def train_data(self) -> Path:
        return self.root / TRAIN_DATA

    @property
    def eval_details(self) -> Path:
        return self.root / EVAL_DETAILS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS
