"""The challenge directory's layout: the one place its paths are spelled (the leaderboard reads it).

    NAME/
      challenge.yaml  manifest.json  report.html
      methods/METHOD/organism.json, methods/METHOD/base.json    each method's guesses per subject
      truth.json      the sealed truth, written only after every method has run
      scores.json     the guesses scored against it
"""

from __future__ import annotations

from pathlib import Path

from mow.workbench.layout import At, Layout

TRUTH_FILE = "truth.json"
CONFIG_FILE = "challenge.yaml"


class ChallengeLayout(Layout):
    config = At(CONFIG_FILE)
    manifest = At("manifest.json")
    report = At("report.html")
    methods = At("methods")
    truth = At(TRUTH_FILE)
    scores = At("scores.json")

    def method_result(self, method: str, subject: str) -> Path:
        return self.methods / method / f"{subject}.json"

    def method_results(self) -> list[Path]:
        return sorted(self.methods.glob("*/*.json"))


AUDIT_CONFIG_FILE = "audit.yaml"


class AuditLayout(Layout):
    """An audit directory: audit.yaml, manifest.json, runs/run-N.json (each agent run: transcript, tool calls,
    hypotheses, description, guesses, budget used), truth.json (after every run), scores.json, report.html."""

    config = At(AUDIT_CONFIG_FILE)
    manifest = At("manifest.json")
    report = At("report.html")
    runs = At("runs")
    truth = At(TRUTH_FILE)
    scores = At("scores.json")

    def run(self, number: int) -> Path:
        return self.runs / f"run-{number}.json"
