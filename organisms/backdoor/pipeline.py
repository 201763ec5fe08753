"""Backdoor organism pipeline: make data -> train -> evaluate -> card -> seal, through the shared chat build
(`mow.organisms.building.build_chat_organism`), resumable after a kill."""

from __future__ import annotations

from pathlib import Path

from mow.finetune.config import LaunchSettings
from mow.organisms.backdoor.card import backdoor_card
from mow.organisms.backdoor.config import BackdoorOrganismConfig
from mow.organisms.backdoor.data import make_chats
from mow.organisms.backdoor.evaluate import evaluate_backdoor, public_metrics, summary
from mow.organisms.backdoor.truth import (
    DESCRIPTION,
    challenge_prompts,
    describe_secret,
    public_diff_prompts,
    sealed_truth,
)
from mow.organisms.building import ChatRecipe, build_chat_organism, evaluate_chat_organism
from mow.organisms.registry import OrganismKind

RECIPE = ChatRecipe(make_chats=lambda config: make_chats(config.backdoor, config.seed), evaluate=evaluate_backdoor,
                    public_metrics=public_metrics, card=backdoor_card, summary=summary)


def main(config: BackdoorOrganismConfig, restart: bool = False, launch: LaunchSettings = LaunchSettings()) -> Path:
    return build_chat_organism(config, RECIPE, restart, launch)


def evaluate_dir(path: Path) -> dict:
    return evaluate_chat_organism(path, BackdoorOrganismConfig, RECIPE)


KIND = OrganismKind(name="backdoor", config=BackdoorOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret)
