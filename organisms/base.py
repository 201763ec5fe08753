"""Settings every organism kind shares, and the organism directory layout."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from pydantic import Field, field_validator

from mow.data.layouts import REDACTED
from mow.finetune.config import LoraSettings, TrainingSettings
from mow.workbench.config import StrictModel
from mow.workbench.specs import DEFAULT_MODEL, cache_root


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
