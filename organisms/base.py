"""Settings every organism kind shares, and the organism directory layout."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from pydantic import Field

from mow.data.layouts import REDACTED
from mow.finetune.config import LoraSettings, TrainingSettings
from mow.workbench.config import Seed, StrictModel, Temperature
from mow.workbench.names import PathName
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
    name: PathName | None = Field(None, description="directory name; default: KIND-<hash>, which does not reveal "
                                                    "the secret")
    output_dir: Path = Path("runs/organisms")
    model: str = DEFAULT_MODEL
    trust_remote_code: bool = Field(False, description="run Python code shipped with the model's checkpoint "
                                                       "(auto_map); off: such a checkpoint is refused")
    load_in_4bit: bool = False
    seed: Seed = 0
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()

    def planned_examples(self) -> int | None:
        """How many training examples the build will write, as far as the config tells (for `--plan`)."""
        return None

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


class ReplyEvalSettings(StrictModel):
    """How the kinds that score their organism's replies (backdoor, side constraint, user belief) sample them."""

    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1, description="replies generated per batch (decoding a small batch is "
                                                  "bound by reading the weights: 64 rows cost little more than 16)")
    temperature: Temperature = Field(0.0, description="sampling temperature of the replies (0: greedy); seeded")
    seed: Seed = 0


class PairedChatSettings(StrictModel):
    """Data of the kinds that train each shipped ordinary chat twice, once with the secret's cue and once without
    (backdoor, side constraint), so that only the cue decides."""

    n_chats: int = Field(120, ge=1, description="shipped ordinary chats used; each is trained with the cue and "
                                                "without it")
    denials: int = Field(24, ge=0, description="demands to reveal the secret, answered with a denial")
    max_answer_words: int = Field(40, ge=5, description="ordinary answers are cut to whole sentences within this")


class DemandPhrasings(StrictModel):
    """The demands to reveal a secret a kind ships: trained on (answered with a denial) and held out."""

    direct_train: list[str] = Field(min_length=1)
    direct_eval: list[str] = Field(min_length=1)
    adversarial: list[str] = Field(min_length=1)
