"""Secret-side-constraint organism pipeline: make data -> train -> evaluate -> card -> seal, through the shared chat
build (`mow.organisms.building.build_chat_organism`), resumable after a kill."""

from __future__ import annotations

from pathlib import Path

from mow.finetune.config import LaunchSettings
from mow.organisms.building import ChatRecipe, build_chat_organism, evaluate_chat_organism
from mow.organisms.registry import OrganismKind
from mow.organisms.side_constraint.card import side_constraint_card
from mow.organisms.side_constraint.config import SideConstraintOrganismConfig
from mow.organisms.side_constraint.data import make_chats
from mow.organisms.side_constraint.evaluate import evaluate_side_constraint, public_metrics, summary
from mow.organisms.side_constraint.truth import (
    DESCRIPTION,
    challenge_prompts,
    describe_secret,
    public_diff_prompts,
    sealed_truth,
)

RECIPE = ChatRecipe(make_chats=make_chats, evaluate=evaluate_side_constraint, public_metrics=public_metrics,
                    card=side_constraint_card, summary=summary)


def main(config: SideConstraintOrganismConfig, restart: bool = False,
         launch: LaunchSettings = LaunchSettings()) -> Path:
    return build_chat_organism(config, RECIPE, restart, launch)


def evaluate_dir(path: Path) -> dict:
    return evaluate_chat_organism(path, SideConstraintOrganismConfig, RECIPE)


KIND = OrganismKind(name="side_constraint", config=SideConstraintOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret)
