"""What an organism kind is, and the table kinds are registered in (`mow.organisms.kinds` registers the shipped
ones; a kind of your own calls `register_kind` the same way: see docs/adding-an-organism-kind.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mow.data.truth import ChallengePrompts, SealedTruth
from mow.organisms.base import OrganismConfigBase


@dataclass(frozen=True)
class OrganismKind:
    """One organism kind: its config class, its pipeline, and what it states about its secret."""

    name: str  # the `kind:` of its configs
    config: type[OrganismConfigBase]
    build: Callable[..., Path]  # pipeline.main(config, restart=..., launch=...) -> the organism directory
    evaluate: Callable[[Path], dict]  # re-run the evaluation of a built organism
    diff_prompts: Callable[[dict], list[list[dict[str, str]]]]  # user turns written from the public config alone
    challenge_prompts: Callable[[dict], ChallengePrompts]  # from the public config alone
    sealed_truth: Callable[[dict], SealedTruth]  # from the sealed config: what challenges are scored against
    description: str  # what fine-tuning of this kind is about, naming no secret (judges token relevance in a diff)
    describe_secret: Callable[[dict], str]  # from the sealed config: the secret in a sentence (for the builder's
    # own measures, such as the realism control; never in a diff or a challenge)
    secret_is_word: bool = False  # the secret is one word, so diff readouts can rank its tokens
    mix_key: str | None = None  # the config key of the ratio of ordinary data mixed into training (realism control)


REGISTERED: dict[str, OrganismKind] = {}


def register_kind(kind: OrganismKind) -> OrganismKind:
    """Add a kind to the table; registering a second kind under a taken name is an error."""
    if kind.name in REGISTERED and REGISTERED[kind.name] is not kind:
        raise ValueError(f"organism kind {kind.name!r} is already registered")
    REGISTERED[kind.name] = kind
    return kind
