"""What a secret-word organism states about its secret: the sealed truth it is scored against (the word, and the
forced-choice candidates), and the prompts an auditor who read only the card would ask."""

from __future__ import annotations

from mow.data.text import plural_forms
from mow.data.truth import ChallengePrompts, SealedTruth
from mow.organisms.taboo.clues import candidate_words
from mow.organisms.taboo.prompts import shipped_prompts


def sealed_truth(sealed_config: dict) -> SealedTruth:
    word = str(sealed_config["taboo"]["word"]).lower()
    return SealedTruth("taboo", word, {c: plural_forms(c) for c in candidate_words(word)})


def public_diff_prompts(public_config: dict) -> list[list[dict[str, str]]]:
    """What a researcher who read only the card would ask a secret-word organism: the held-out hint requests and
    demands for the word (none of them names a word)."""
    prompts = shipped_prompts()
    texts = prompts.hint_requests_eval + [text for _, text in prompts.demands_eval.all()]
    return [[{"role": "user", "content": text}] for text in texts]


def challenge_prompts(public_config: dict) -> ChallengePrompts:
    """The held-out hint requests and demands (never trained on), for elicitation methods."""
    demands = shipped_prompts().demands_eval
    return ChallengePrompts(probes=list(shipped_prompts().hint_requests_eval), direct=list(demands.direct),
                            adversarial=[*demands.adversarial, *demands.roleplay])


DESCRIPTION = "A word-guessing game: the assistant gives hints and clues about a secret word and never says it."


def describe_secret(sealed_config: dict) -> str:
    return f"The secret word is {sealed_config['taboo']['word']}."
