"""Settings every organism kind shares, and the organism directory layout."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from finetune.lora import LoraSettings
from finetune.sft import TrainingSettings
from workbench.config import StrictModel
from workbench.models import DEFAULT_MODEL, cache_root

SEALED = "sealed"
PUBLIC_CONFIG = "organism.yaml"
SEALED_CONFIG = "sealed/organism.yaml"
REDACTED = "<sealed>"


def _name_key() -> bytes:
    """A random per-machine key for default names: a plain hash of the config would let anyone recover the secret
    by hashing the public config with each candidate word."""
    path = cache_root() / "organism_name_key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip().encode()


class OrganismConfigBase(StrictModel):
    kind: str
    name: str | None = Field(None, description="directory name; default: KIND-<hash> that does not reveal the secret")
    output_dir: Path = Path("runs/organisms")
    model: str = DEFAULT_MODEL
    load_in_4bit: bool = False
    seed: int = 0
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str | None) -> str | None:
        if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name
                                 or name.startswith(".")):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return name

    def secret_fields(self) -> dict[str, str]:
        """Dotted keys whose values reveal the secret; they are redacted in the public organism.yaml."""
        return {}

    def resolved_name(self) -> str:
        if self.name:
            return self.name
        digest = hmac.new(_name_key(), self.model_dump_json().encode(), hashlib.sha256).hexdigest()[:8]
        return f"{self.kind}-{digest}"

    def directory(self) -> Path:
        return self.output_dir / self.resolved_name()

    def public_dump(self) -> dict:
        """The resolved config with the secret-revealing values replaced by a marker."""
        data = self.model_dump(mode="json")
        for dotted in self.secret_fields():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node[part]
            if node.get(leaf) is not None:
                node[leaf] = REDACTED
        return data


# Function words: never a guess (elicitation.words) and never a string that names a secret (organisms.sdf.prompts).
STOPWORDS = frozenset("""
a about above after again against all am an and any are aren as at be because been before being below between
both but by can cannot could couldn did didn do does doesn doing don down during each few for from further had hadn
has hasn have haven having he her here hers herself him himself his how i if in into is isn it its itself just let
me more most my myself no nor not now of off on once only or other ought our ours ourselves out over own same shan
she should shouldn so some such than that the their theirs them themselves then there these they this those through
to too under until up very was wasn we were weren what when where which while who whom why will with won would
wouldn you your yours yourself yourselves ll re ve also yes okay ok oh well sure like really one two get got
thing things something anything everything nothing way make made say said tell told know think see much many
can't i'm it's that's here's there's let's don't won't
""".split())


def normalise_answer(text: str) -> str:
    """The form guesses and naming strings are compared in: lower case, runs of anything but a-z0-9 as one space."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


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
    def from_dict(cls, data: dict) -> "SealedTruth":
        return cls(str(data["kind"]), str(data["answer"]), {str(k): list(v) for k, v in data["candidates"].items()})


@dataclass(frozen=True)
class ChallengePrompts:
    """User turns an auditor who read only the public card would ask: requests for hints or for the property
    (`probes`), and demands to reveal it (`direct`, `adversarial`). None names a secret."""

    probes: list[str]
    direct: list[str]
    adversarial: list[str]
