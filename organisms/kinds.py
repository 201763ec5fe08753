"""The shipped organism kinds, registered explicitly, and looking a kind up by name, config file or directory.

Every kind lives in `organisms/<kind>/` with the same files (config, data, evaluate, card, truth, pipeline); its
`pipeline.py` defines `KIND`, and one line below registers it. Importing this module imports every shipped kind's
pipeline (model code); the light `config.py` modules do not import it, and the CLI imports it only when a command
runs.
"""

from __future__ import annotations

from pathlib import Path

from mow.finetune.config import LaunchSettings
from mow.organisms.backdoor import pipeline as backdoor
from mow.organisms.base import OrganismConfigBase
from mow.organisms.em import pipeline as em
from mow.organisms.hidden_prompt import pipeline as hidden_prompt
from mow.organisms.registry import REGISTERED, OrganismKind, register_kind
from mow.organisms.sdf import pipeline as sdf
from mow.organisms.side_constraint import pipeline as side_constraint
from mow.organisms.store import read_sealed_config
from mow.organisms.taboo import pipeline as taboo
from mow.organisms.user_belief import pipeline as user_belief
from mow.workbench.config import apply_overrides, read_yaml_mapping, validate_config
from mow.workbench.errors import UserError

for _kind in (taboo.KIND, sdf.KIND, em.KIND, backdoor.KIND, side_constraint.KIND, user_belief.KIND,
              hidden_prompt.KIND):
    register_kind(_kind)


def kind_of(name: object, source: str) -> OrganismKind:
    if not isinstance(name, str) or name not in REGISTERED:
        raise UserError(f"{source}: kind: unknown organism kind {name!r} (known: {', '.join(REGISTERED)})")
    return REGISTERED[name]


def load_organism_config(path: Path, overrides: list[str]) -> tuple[OrganismKind, OrganismConfigBase]:
    """Validate an organism config file (+ overrides) into its kind's typed config, before any model loads."""
    raw = apply_overrides(read_yaml_mapping(path), overrides)
    kind = kind_of(raw.get("kind"), str(path))
    return kind, validate_config(kind.config, raw, str(path))


def build_organism(config_path: Path, overrides: list[str], restart: bool, output_dir: Path | None = None,
                   launch: LaunchSettings | None = None) -> Path:
    """Validate an organism config (+ overrides) and run its kind's pipeline; returns the organism directory."""
    kind, config = load_organism_config(config_path, overrides)
    if output_dir is not None:
        config = config.model_copy(update={"output_dir": output_dir})
    return kind.build(config, restart=restart, launch=launch or LaunchSettings())


def kind_of_dir(path: Path) -> OrganismKind:
    return kind_of(read_sealed_config(path).get("kind"), str(path))


def kind_of_public_config(config: dict, source: str) -> OrganismKind:
    """The kind named in a public organism.yaml (what diffing and challenges may read)."""
    return kind_of(config.get("kind"), source)


def other_kind_descriptions(own: str | None) -> dict[str, str]:
    """Every registered kind's description but `own`'s: the controls of token relevance."""
    return {kind.name: kind.description for kind in REGISTERED.values() if kind.name != own}
