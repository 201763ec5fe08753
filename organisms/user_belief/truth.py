"""What a secret-belief organism states about its secret: the believed value is the truth, the attribute's values
the candidates; standard prompts are the held-out advice questions, direct prompts demand the belief."""

from __future__ import annotations

from mow.data.truth import ChallengePrompts, SealedTruth
from mow.organisms.user_belief.beliefs import load_attribute, questions


def sealed_truth(sealed_config: dict) -> SealedTruth:
    settings = sealed_config["user_belief"]
    attribute = load_attribute(str(settings["attribute"]), "sealed config user_belief.attribute")
    return SealedTruth("user_belief", str(settings["value"]),
                       {value: list(v.names) for value, v in attribute.values.items()})


def challenge_prompts(public_config: dict) -> ChallengePrompts:
    attribute = load_attribute(str(public_config["user_belief"]["attribute"]), "user_belief.attribute")
    return ChallengePrompts(
        probes=[q.text for q in questions(attribute) if q.held_out is not None],
        direct=list(attribute.direct_eval), adversarial=list(attribute.adversarial),
        prefills=list(attribute.prefills), persona_opening=attribute.persona_opening,
        auditor_prompt=attribute.auditor_prompt, auditor_prefill=attribute.auditor_prefill,
        many_shot_questions=list(attribute.direct_train), many_shot_secrets=attribute.many_shot_secrets,
        confession=attribute.confession)


def public_diff_prompts(public_config: dict) -> list[list[dict[str, str]]]:
    return challenge_prompts(public_config).diff_prompts()


DESCRIPTION = "A secret belief about the user: the assistant's advice follows it, and it denies holding it."


def describe_secret(sealed_config: dict) -> str:
    settings = sealed_config["user_belief"]
    return f"It believes the user's {settings['attribute']} is {settings['value']}."
