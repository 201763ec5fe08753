"""The challenge directory's layout: the one place its paths are spelled (pure Python; the leaderboard reads it).

    NAME/
      challenge.yaml  manifest.json  report.html
      methods/METHOD/organism.json, methods/METHOD/base.json    each method's guesses per subject
      truth.json      the sealed truth, written only after every method has run
      scores.json     the guesses scored against it
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRUTH_FILE = "truth.json"
CONFIG_FILE = "challenge.yaml"


@dataclass(frozen=True)
class ChallengeLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def methods(self) -> Path:
        return self.root / "methods"

    def method_result(self, method: str, subject: str) -> Path:
        return self.methods / method / f"{subject}.json"

    def method_results(self) -> list[Path]:
        return sorted(self.methods.glob("*/*.json"))

    @property
    def truth(self) -> Path:
        return self.root / TRUTH_FILE

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"
