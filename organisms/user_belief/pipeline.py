"""Secret-belief organism pipeline: make data -> train -> evaluate -> card -> seal, through the shared chat build
(`mow.organisms.building.build_chat_organism`), resumable after a kill."""

from __future__ import annotations

from pathlib import Path

from mow.finetune.config import LaunchSettings
from mow.organisms.building import ChatRecipe, build_chat_organism, evaluate_chat_organism
from mow.organisms.registry import OrganismKind
from mow.organisms.user_belief.card import user_belief_card
from mow.organisms.user_belief.config import UserBeliefOrganismConfig
from mow.organisms.user_belief.data import make_chats
from mow.organisms.user_belief.evaluate import evaluate_user_belief, public_metrics, summary
from mow.organisms.user_belief.truth import (
    DESCRIPTION,
    challenge_prompts,
    describe_secret,
    public_diff_prompts,
    sealed_truth,
)

RECIPE = ChatRecipe(make_chats=make_chats, evaluate=evaluate_user_belief, public_metrics=public_metrics,
                    card=user_belief_card, summary=summary)


def main(config: UserBeliefOrganismConfig, restart: bool = False, launch: LaunchSettings = LaunchSettings()) -> Path:
    return build_chat_organism(config, RECIPE, restart, launch)


def evaluate_dir(path: Path) -> dict:
    return evaluate_chat_organism(path, UserBeliefOrganismConfig, RECIPE)


KIND = OrganismKind(name="user_belief", config=UserBeliefOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret)
