"""The challenge view: what an elicitation method may see, and the guard that keeps the rest out of reach.

A method gets the model under test, the public base model, the tokenizer with its chat template, the public card and
config, and the kind's public prompts. The organism is loaded from a copy of its public files (never from the
organism directory itself), so no attribute of the model or view leads back to `sealed/`. While a method runs, an
audit hook (PEP 578) refuses to open, list or copy anything under the organism directories of the run, any
`sealed/` directory, the run's config and truth files, and refuses to start processes (which would escape the hook).
The harness reads the sealed truth only after every method of the run has finished.

An organism on an endpoint has no weights: its view answers chats only (`chats`), through the organism's prompt
proxy (`elicitation.prompt_proxy`), a child process that holds the sealed prompt; the methods that need weights or
raw continuations are unavailable on it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import PUBLIC_CONFIG, SEALED, OrganismLayout
from mow.data.truth import ChallengePrompts
from mow.diffing.pair import ModelPair
from mow.elicitation.layout import TRUTH_FILE
from mow.organisms.kinds import kind_of_public_config
from mow.organisms.store import (
    check_organism_dir,
    endpoint_of,
    load_organism,
    organism_tokenizer,
    read_public_config,
)
from mow.workbench.backend_config import BackendSettings
from mow.workbench.backends import EndpointBackend
from mow.workbench.errors import UserError
from mow.workbench.files import read_text
from mow.workbench.models import load_model


class SealedAccess(PermissionError):
    """A method reached for something the challenge view does not include."""


@dataclass(frozen=True)
class ChatSubjects:
    """An organism that answers chats only (on an endpoint): `organism` through its prompt proxy, `base` the same
    endpoint without the prompt (for the base control, both are the base)."""

    organism: EndpointBackend
    base: EndpointBackend


@dataclass
class ChallengeView:
    """`model` is what is being audited; `base()` yields the public base model it was tuned from (for the base
    control both are the base model, so contrasts come out empty, as they should). An organism on an endpoint has
    `chats` instead of a `pair`."""

    name: str
    pair: ModelPair | None
    card: str
    public_config: dict
    prompts: ChallengePrompts
    diff_dir: Path | None = None
    memo: dict = field(default_factory=dict)  # results several methods share (the model's greedy answers)
    chats: ChatSubjects | None = None

    @property
    def local(self) -> ModelPair:
        """The weights; a method that needs them is marked so in the registry and never runs on a chat subject."""
        assert self.pair is not None, "an organism on an endpoint has no weights"
        return self.pair

    @property
    def model(self) -> nn.Module:
        return self.local.tuned_model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.local.tokenizer

    @property
    def chat_template(self) -> str:
        return self.tokenizer.chat_template or ""

    def base(self):
        return self.local.base()


def check_sealed_truth(organism: Path) -> None:
    """Fail early on an organism with no sealed truth, without reading it (reading waits until methods are done)."""
    if not (Path(organism) / SEALED / PUBLIC_CONFIG).is_file():
        raise UserError(f"{organism}: has no sealed truth ({SEALED}/{PUBLIC_CONFIG} is missing); "
                        "a challenge needs it to score the guesses")


def copy_public_files(organism: Path, destination: Path) -> Path:
    """The public part of an organism directory, copied to `destination` (what the challenge loads from)."""
    organism = check_organism_dir(organism, needs_weights=False)
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in OrganismLayout.PUBLIC_FILES:
        source = organism / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        elif source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination / name)
    return destination


def open_views(organism: Path, workdir: Path, subjects: Sequence[str], diff_dir: Path | None, seed: int,
               proxy: BackendSettings | None = None) -> dict[str, ChallengeView]:
    """The views of the subjects asked for: 'organism', and 'base' (the public base model, no adapter); only what
    they need is loaded (the base alone is one copy of the base weights). An organism on an endpoint is reached
    through `proxy`, its running prompt proxy (`prompt_proxy.started_proxy`)."""
    public_copy = copy_public_files(organism, workdir / "challenge")
    config = read_public_config(public_copy)
    kind = kind_of_public_config(config, str(organism / PUBLIC_CONFIG))
    prompts = kind.challenge_prompts(config)
    card_file = OrganismLayout(public_copy).card
    card = read_text(card_file, "organism card") if card_file.is_file() else ""
    name = Path(organism).name
    endpoint = endpoint_of(config, str(OrganismLayout(organism).public_config))
    if endpoint is not None:
        base_chats = EndpointBackend(endpoint)
        if "organism" in subjects and proxy is None:
            raise UserError(f"{organism}: an organism on an endpoint is challenged through its prompt proxy")
        chat_views = {"base": ChatSubjects(base_chats, base_chats)}
        if proxy is not None:
            chat_views["organism"] = ChatSubjects(EndpointBackend(proxy), base_chats)
        return {subject: ChallengeView(name, None, card, config, prompts, None, chats=chat_views[subject])
                for subject in subjects}
    model_spec = str(config["model"])
    views: dict[str, ChallengeView] = {}
    tokenizer = organism_tokenizer(public_copy)
    if "organism" in subjects:
        loaded = load_organism(public_copy)
        loaded.model.eval()
        views["organism"] = ChallengeView(name, ModelPair(loaded.model, tokenizer, None, model_spec,
                                                          f"organism:{name}"), card, config, prompts, diff_dir)
    if "base" in subjects:
        base = load_model(model_spec, load_in_4bit=bool(config.get("load_in_4bit", False)), seed=seed,
                          trust_remote_code=bool(config.get("trust_remote_code", False))).eval()
        views["base"] = ChallengeView(name, ModelPair(base, tokenizer, base, model_spec, model_spec), card, config,
                                      prompts, None)
    return views


_GUARDED_EVENTS = {"open", "os.listdir", "os.scandir", "os.walk", "glob.glob", "glob.glob/2", "shutil.copyfile",
                   "shutil.copytree", "shutil.move", "os.rename", "os.link", "os.symlink", "os.chdir"}
_PROCESS_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn"}
_forbidden: list[Path] = []
_hook_installed = False


def _is_forbidden(target: object) -> bool:
    if not isinstance(target, (str, bytes, os.PathLike)):
        return False  # a file descriptor, None: names no path
    try:
        path = Path(os.fsdecode(target)).resolve()
    except (TypeError, ValueError, OSError):
        return False
    if SEALED in path.parts or path.name == TRUTH_FILE:
        return True
    return any(path == f or f in path.parents for f in _forbidden)


def _audit(event: str, args: tuple) -> None:
    if not _forbidden:
        return
    if event in _PROCESS_EVENTS:
        raise SealedAccess(f"starting processes is not allowed during a challenge ({event})")
    if event in _GUARDED_EVENTS:
        targets = args[:2] if event in ("shutil.copyfile", "shutil.copytree", "shutil.move", "os.rename") else args[:1]
        for target in targets:
            if _is_forbidden(target):
                raise SealedAccess(f"{os.fsdecode(target)} is outside the challenge view")


@contextmanager
def sealed_guard(forbidden: list[Path]) -> Iterator[None]:
    """Refuse access to `forbidden` paths (and any sealed/ or truth file) while open.

    Audit hooks cannot be removed, so one hook is installed for the process and switched by this context."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _forbidden[:] = [Path(p).resolve() for p in forbidden]
    try:
        yield
    finally:
        _forbidden.clear()
