"""Records of what a challenge is about: the sealed truth it is scored against and the prompts an auditor may ask
(pure Python: scoring and the leaderboard import these without any model code)."""

from __future__ import annotations

from dataclasses import dataclass


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
    def from_dict(cls, data: dict) -> SealedTruth:
        return cls(str(data["kind"]), str(data["answer"]), {str(k): list(v) for k, v in data["candidates"].items()})


@dataclass(frozen=True)
class ChallengePrompts:
    """User turns an auditor who read only the public card would ask: requests for hints or for the property
    (`probes`), and demands to reveal it (`direct`, `adversarial`). None names a secret."""

    probes: list[str]
    direct: list[str]
    adversarial: list[str]
