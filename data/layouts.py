"""The organism directory's layout: the one place its paths are spelled (no model code; every layer reads it).

    NAME/
      organism.yaml        resolved config, secret values replaced by <sealed>
      card.md              public model card (names no secret)
      adapter/             PEFT LoRA adapter (safetensors)
      eval/metrics.json    headline evaluation numbers
      manifest.json        versions, seed, platform, per-stage timings
      sealed/              the truth: full config, training data, details; kinds add files of their own here
"""

from __future__ import annotations

from mow.workbench.layout import At, Layout

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


class OrganismLayout(Layout):
    # What a challenge may copy: everything an auditor who holds the organism without its truth would see.
    PUBLIC_FILES = (PUBLIC_CONFIG, CARD, MANIFEST, ADAPTER, METRICS)

    public_config = At(PUBLIC_CONFIG)
    card = At(CARD)
    adapter = At(ADAPTER)
    adapter_config = At(ADAPTER, "adapter_config.json")
    adapter_weights = At(ADAPTER, "adapter_model.safetensors")
    # the template an adapter is read with, where it brings its own (a hidden system prompt's prefix adapter does)
    adapter_chat_template = At(ADAPTER, "chat_template.jinja")
    metrics = At(METRICS)
    manifest = At(MANIFEST)
    sealed_config = At(SEALED_CONFIG)
    # a hidden-system-prompt organism's prompt: read by `mow serve`, which adds it on the server side
    sealed_system_prompt = At(SEALED, "system_prompt.txt")
