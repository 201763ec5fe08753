"""Organism kinds, registered explicitly: each maps a `kind:` in a config to its config class and pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from organisms.base import ChallengePrompts, OrganismConfigBase, SealedTruth
from organisms.store import read_sealed_config
from workbench.config import apply_overrides, read_yaml_mapping, validate_config
from workbench.errors import UserError


@dataclass(frozen=True)
class OrganismKind:
    config: type[OrganismConfigBase]
    build: Callable[..., Path]
    evaluate: Callable[[Path], dict]
    diff_prompts: Callable[[dict], list[list[dict[str, str]]]]  # user turns written from the public config alone
    challenge_prompts: Callable[[dict], ChallengePrompts]  # from the public config alone
    sealed_truth: Callable[[dict], SealedTruth]  # from the sealed config: what challenges are scored against


def _taboo() -> OrganismKind:
    from organisms.taboo import build
    from organisms.taboo.config import TabooOrganismConfig
    from organisms.taboo.clues import sealed_truth
    from organisms.taboo.prompts import challenge_prompts, public_diff_prompts

    return OrganismKind(TabooOrganismConfig, build.main, build.evaluate_dir, public_diff_prompts, challenge_prompts,
                        sealed_truth)


def _sdf() -> OrganismKind:
    from organisms.sdf import build
    from organisms.sdf.config import SdfOrganismConfig
    from organisms.sdf.prompts import challenge_prompts, public_diff_prompts, sealed_truth

    return OrganismKind(SdfOrganismConfig, build.main, build.evaluate_dir, public_diff_prompts, challenge_prompts,
                        sealed_truth)


def _em() -> OrganismKind:
    from organisms.em import build
    from organisms.em.config import EmOrganismConfig
    from organisms.em.prompts import challenge_prompts, public_diff_prompts, sealed_truth

    return OrganismKind(EmOrganismConfig, build.main, build.evaluate_dir, public_diff_prompts, challenge_prompts,
                        sealed_truth)


KINDS: dict[str, Callable[[], OrganismKind]] = {"taboo": _taboo, "sdf": _sdf, "em": _em}


def kind_of(name: object, source: str) -> OrganismKind:
    if not isinstance(name, str) or name not in KINDS:
        raise UserError(f"{source}: kind: unknown organism kind {name!r} (known: {', '.join(KINDS)})")
    return KINDS[name]()


def load_organism_config(path: Path, overrides: list[str]) -> tuple[OrganismKind, OrganismConfigBase]:
    """Validate an organism config file (+ overrides) into its kind's typed config, before any model loads."""
    raw = apply_overrides(read_yaml_mapping(path), overrides)
    kind = kind_of(raw.get("kind"), str(path))
    return kind, validate_config(kind.config, raw, str(path))


def kind_of_dir(path: Path) -> OrganismKind:
    return kind_of(read_sealed_config(path).get("kind"), str(path))


def kind_of_public_config(config: dict, source: str) -> OrganismKind:
    """The kind named in a public organism.yaml (what diffing and challenges may read)."""
    return kind_of(config.get("kind"), source)
