"""Records of what a challenge is about: the sealed truth it is scored against and the prompts an auditor may ask
(pure Python: scoring and the leaderboard import these without any model code)."""

from __future__ import annotations

from dataclasses import dataclass

from mow.workbench.errors import UserError


@dataclass(frozen=True)
class SealedTruth:
    """What an elicitation challenge is scored against, read from `sealed/` only after every method has run.

    `candidates` maps each candidate answer of the forced-choice set (the true one included) to the strings, in
    `normalise_answer` form, that count as naming it: for a secret word the word and its simple plurals."""

    kind: str
    answer: str
    candidates: dict[str, list[str]]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "answer": self.answer, "candidates": self.candidates}

    @classmethod
    def from_dict(cls, data: dict, source: str = "sealed truth") -> SealedTruth:
        """A truth as saved by `to_dict`; a damaged one is a one-line error naming `source`."""
        for key, kind in (("kind", str), ("answer", str), ("candidates", dict)):
            if not isinstance(data.get(key), kind):
                raise UserError(f"{source}: {key!r} is missing or not a {kind.__name__}")
        candidates = data["candidates"]
        if data["answer"] not in candidates or not all(
                isinstance(forms, list) and all(isinstance(f, str) for f in forms) for forms in candidates.values()):
            raise UserError(f"{source}: 'candidates' must map each candidate, the answer included, to a list of "
                            "strings")
        return cls(data["kind"], data["answer"], {str(k): list(v) for k, v in candidates.items()})


@dataclass(frozen=True)
class ChallengePrompts:
    """User turns an auditor who read only the public card would ask: *standard* prompts, where the model uses its
    secret (`probes`: hint requests, advice that depends on a belief, ordinary requests), and demands to reveal it
    (`direct`, `adversarial`). None names a secret.

    The rest words the black-box methods and the auditor for the kind (None: the challenge config's wording, which
    is written for a secret word): the starts of a confession a prefill puts in the assistant's mouth, the opening
    of the user turn the model is made to write, what the auditor is asked, and the fake confessions of many-shot."""

    probes: list[str]
    direct: list[str]
    adversarial: list[str]
    prefills: list[str] | None = None
    persona_opening: str | None = None
    auditor_prompt: str | None = None  # contains {evidence}
    auditor_prefill: str | None = None
    # many_shot: fake exchanges (a question from `many_shot_questions`, a `confession` naming one of
    # `many_shot_secrets`, none of them a candidate) before the real demand
    many_shot_questions: list[str] | None = None
    many_shot_secrets: list[str] | None = None
    confession: str | None = None  # contains {secret}

    def has_own_wording(self) -> bool:
        """The kind words the methods itself (otherwise a challenge uses the secret word's wording)."""
        return any(v is not None for v in (self.prefills, self.persona_opening, self.auditor_prompt, self.confession))

    def diff_prompts(self) -> list[list[dict[str, str]]]:
        """The standard and direct prompts as single user turns (what `mow diff` runs both models on)."""
        return [[{"role": "user", "content": text}] for text in [*self.probes, *self.direct]]
