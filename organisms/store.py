"""Reading organism directories: load base + adapter from one copy of the base weights, list built organisms."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import PUBLIC_CONFIG, SEALED_CONFIG, OrganismLayout
from mow.finetune.lora import load_adapter
from mow.workbench.config import read_yaml_mapping
from mow.workbench.errors import UserError
from mow.workbench.models import load_model, load_tokenizer


@dataclass
class LoadedOrganism:
    path: Path
    public_config: dict
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase


def check_organism_dir(path: Path) -> Path:
    path = Path(path)
    layout = OrganismLayout(path)
    for needed in (layout.public_config, layout.adapter_config, layout.manifest):
        if not needed.is_file():
            raise UserError(f"{path}: not an organism directory (missing {needed.relative_to(path)})")
    return path


def read_public_config(path: Path) -> dict:
    return read_yaml_mapping(OrganismLayout(check_organism_dir(path)).public_config)


def read_sealed_config(path: Path) -> dict:
    sealed = OrganismLayout(Path(path)).sealed_config
    if not sealed.is_file():
        raise UserError(f"{path}: has no sealed truth ({SEALED_CONFIG} is missing)")
    return read_yaml_mapping(sealed)


def load_organism(path: Path) -> LoadedOrganism:
    """Base model + adapter (one copy of the base weights); `model.disable_adapter()` gives the base back."""
    path = check_organism_dir(path)
    config = read_public_config(path)
    tokenizer = load_tokenizer(config["model"])
    base = load_model(config["model"], load_in_4bit=config.get("load_in_4bit", False), seed=config.get("seed", 0))
    return LoadedOrganism(path, config, load_adapter(base, OrganismLayout(path).adapter), tokenizer)


def list_organisms(root: Path) -> list[dict]:
    """One row per finished organism under `root` (partial builds are listed with status 'partial')."""
    rows: list[dict] = []
    root = Path(root)
    if not root.is_dir():
        return rows
    for child in sorted(root.iterdir()):
        partial = child.name.startswith(".") and child.name.endswith(".partial")
        if not (child / PUBLIC_CONFIG).is_file():
            continue
        try:
            config = read_yaml_mapping(child / PUBLIC_CONFIG)
        except UserError:
            continue
        metrics_file = OrganismLayout(child).metrics
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append({
            "name": child.name[1:-len(".partial")] if partial else child.name,
            "status": "partial" if partial else "built",
            "kind": str(config.get("kind", "?")),
            "model": str(config.get("model", "?")),
            "path": str(child),
            "headline": metrics.get("headline", {}),
        })
    return rows


def log(message: str) -> None:
    print(f"[mow] {message}", file=sys.stderr, flush=True)
