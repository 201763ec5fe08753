"""Reading organism directories: load base + adapter from one copy of the base weights, list built organisms."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from finetune.lora import load_adapter
from organisms.base import PUBLIC_CONFIG, SEALED_CONFIG, OrganismConfigBase
from workbench.config import dump_config, read_yaml_mapping
from workbench.errors import UserError
from workbench.rundir import partial_path, write_text
from workbench.models import load_model, load_tokenizer


@dataclass
class LoadedOrganism:
    path: Path
    public_config: dict
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase


def check_organism_dir(path: Path) -> Path:
    path = Path(path)
    for needed in (PUBLIC_CONFIG, "adapter/adapter_config.json", "manifest.json"):
        if not (path / needed).is_file():
            raise UserError(f"{path}: not an organism directory (missing {needed})")
    return path


def read_public_config(path: Path) -> dict:
    return read_yaml_mapping(check_organism_dir(path) / PUBLIC_CONFIG)


def read_sealed_config(path: Path) -> dict:
    sealed = Path(path) / SEALED_CONFIG
    if not sealed.is_file():
        raise UserError(f"{path}: has no sealed truth ({SEALED_CONFIG} is missing)")
    return read_yaml_mapping(sealed)


def load_organism(path: Path) -> LoadedOrganism:
    """Base model + adapter (one copy of the base weights); `model.disable_adapter()` gives the base back."""
    path = check_organism_dir(path)
    config = read_public_config(path)
    tokenizer = load_tokenizer(config["model"])
    base = load_model(config["model"], load_in_4bit=config.get("load_in_4bit", False), seed=config.get("seed", 0))
    return LoadedOrganism(path, config, load_adapter(base, path / "adapter"), tokenizer)


def list_organisms(root: Path) -> list[dict]:
    """One row per finished organism under `root` (partial builds are listed with status 'partial')."""
    rows = []
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
        metrics_file = child / "eval" / "metrics.json"
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


def prepare_build_directory(config: OrganismConfigBase, restart: bool) -> tuple[Path, Path, bool]:
    """(final, partial, already_built). Refuses to mix a different config into an existing build; a build that is
    to run has `partial/` with the sealed and the public config written."""
    final = config.directory()
    partial = partial_path(final)
    sealed_text = dump_config(config)
    if final.exists():
        existing = final / SEALED_CONFIG
        if existing.is_file() and existing.read_text() == sealed_text:
            log(f"{final} is already built with this config; nothing to do")
            return final, partial, True
        raise UserError(f"{final}: already exists with a different config; set another name or remove it")
    if partial.exists():
        existing = partial / SEALED_CONFIG
        if restart or not existing.is_file():
            shutil.rmtree(partial)
        elif existing.read_text() != sealed_text:
            raise UserError(f"{partial}: an unfinished build with a different config is there; "
                            "re-run with --restart to discard it")
        else:
            log(f"resuming the unfinished build in {partial}")
    (partial / "sealed").mkdir(parents=True, exist_ok=True)
    write_text(partial / SEALED_CONFIG, sealed_text)
    write_text(partial / PUBLIC_CONFIG, yaml.safe_dump(config.public_dump(), sort_keys=False))
    return final, partial, False
