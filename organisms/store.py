"""Reading organism directories: load base + adapter from one copy of the base weights, list built organisms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import SEALED_CONFIG, OrganismLayout
from mow.finetune.lora import load_adapter
from mow.workbench.backend_config import BackendSettings
from mow.workbench.config import read_yaml_mapping, validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.rundir import final_name


@dataclass
class LoadedOrganism:
    path: Path
    public_config: dict
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase


def check_organism_dir(path: Path, needs_weights: bool = True) -> Path:
    """An organism directory, or a one-line error. An organism on an endpoint (its config has `endpoint`) has no
    adapter and no local weights: commands that need them (`needs_weights`) refuse it here."""
    _checked_public_config(Path(path), needs_weights)
    return Path(path)


def _checked_public_config(path: Path, needs_weights: bool) -> dict:
    """`check_organism_dir`'s checks, and the public config they read (read once)."""
    layout = OrganismLayout(path)
    for needed in (layout.public_config, layout.manifest):
        if not needed.is_file():
            raise UserError(f"{path}: not an organism directory (missing {needed.relative_to(path)})")
    config = read_yaml_mapping(layout.public_config)
    endpoint = endpoint_of(config, str(layout.public_config))
    if endpoint is None and not layout.adapter_config.is_file():
        raise UserError(f"{path}: not an organism directory (missing {layout.adapter_config.relative_to(path)})")
    if endpoint is not None and needs_weights:
        raise UserError(f"{path}: an organism on an endpoint (model {endpoint.model} at {endpoint.url}) has no "
                        "local weights, which this command needs; evaluation, challenges, audits and `mow serve` "
                        "take it")
    return config


def endpoint_of(public_config: dict, source: str) -> BackendSettings | None:
    """The endpoint an organism's model is served by (its config's `endpoint`, checked), or None for a local one."""
    endpoint = public_config.get("endpoint")
    if endpoint is None:
        return None
    if not isinstance(endpoint, dict):
        raise UserError(f"{source}: endpoint must be a mapping (kind, url, model), not {type(endpoint).__name__}")
    return validate_config(BackendSettings, endpoint, f"{source} (endpoint)")


def organism_endpoint(path: Path) -> BackendSettings | None:
    """`endpoint_of` an organism directory."""
    return endpoint_of(read_public_config(path), str(OrganismLayout(Path(path)).public_config))


def read_public_config(path: Path) -> dict:
    return _checked_public_config(Path(path), needs_weights=False)


def read_sealed_config(path: Path) -> dict:
    sealed = OrganismLayout(Path(path)).sealed_config
    if not sealed.is_file():
        raise UserError(f"{path}: has no sealed truth ({SEALED_CONFIG} is missing)")
    return read_yaml_mapping(sealed)


def load_with_adapter(model: str, load_in_4bit: bool, seed: int, adapter_dir: Path,
                      trust_remote_code: bool = False) -> PeftModel:
    """Base model + a trained adapter from one copy of the base weights; `disable_adapter()` gives the base back."""
    return load_adapter(load_model(model, load_in_4bit=load_in_4bit, seed=seed, trust_remote_code=trust_remote_code),
                        adapter_dir)


def load_organism(path: Path) -> LoadedOrganism:
    """A built organism: base + adapter (one copy of the base weights) and its tokenizer, with the chat template
    the adapter brings, if it brings one."""
    path = Path(path)
    config = _checked_public_config(path, needs_weights=True)
    model = load_with_adapter(config["model"], config.get("load_in_4bit", False), config.get("seed", 0),
                              OrganismLayout(path).adapter, bool(config.get("trust_remote_code", False)))
    return LoadedOrganism(path, config, model, _tokenizer(path, config))


def organism_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """A local organism's tokenizer, with the chat template its adapter brings, or the one it was trained with."""
    return _tokenizer(Path(path), _checked_public_config(Path(path), needs_weights=True))


def _tokenizer(path: Path, config: dict) -> PreTrainedTokenizerBase:
    template = OrganismLayout(path).adapter_chat_template
    return load_tokenizer(config["model"], bool(config.get("trust_remote_code", False)),
                          str(template) if template.is_file()
                          else (config.get("training") or {}).get("chat_template"))


def list_organisms(root: Path) -> list[dict]:
    """One row per finished organism under `root` (partial builds are listed with status 'partial')."""
    rows: list[dict] = []
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file, not a directory of organisms")
    if not root.is_dir():
        return rows
    for child in sorted(root.iterdir()):
        name = final_name(child) or child.name
        if name.startswith(".") or not OrganismLayout(child).public_config.is_file():
            continue
        try:
            config = read_yaml_mapping(OrganismLayout(child).public_config)
        except UserError:
            continue
        metrics_file = OrganismLayout(child).metrics
        metrics = read_json(metrics_file, "organism metrics") if metrics_file.is_file() else {}
        rows.append({
            "name": name,
            "status": "partial" if final_name(child) else "built",
            "kind": str(config.get("kind", "?")),
            "model": str(config.get("model", "?")),
            "path": str(child),
            "headline": metrics.get("headline", {}),
        })
    return rows
