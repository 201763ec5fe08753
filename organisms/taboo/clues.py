"""Clue banks: for each secret word, hints grouped by category. Shipped banks live in `data/assets/taboo/clues/`;
a user may bring their own file of the same shape for a new word."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from mow.data.asset_paths import TABOO_CLUES
from mow.data.layouts import sealed_relative
from mow.organisms.taboo.config import SecretWord
from mow.organisms.taboo.leaks import leaks
from mow.workbench.config import StrictModel, format_validation_error, read_yaml_mapping
from mow.workbench.errors import UserError

KEPT_CLUE_FILE = sealed_relative("clues.yaml")
"""Where an organism keeps a user's own clue file (sealed: the hints reveal the word), for re-evaluation."""


class ClueBank(StrictModel):
    word: SecretWord
    forms: list[str] = Field(default_factory=list, description="extra forms that count as saying the word")
    hints: dict[str, list[str]] = Field(min_length=1)

    def all_hints(self) -> list[tuple[str, str]]:
        """(category, hint) pairs, in file order, without duplicates."""
        seen: set[str] = set()
        out = []
        for category, hints in self.hints.items():
            for hint in hints:
                if hint.strip() and hint not in seen:
                    seen.add(hint)
                    out.append((category, hint.strip()))
        return out


def load_clue_bank(path: Path) -> ClueBank:
    raw = read_yaml_mapping(path)
    try:
        bank = ClueBank.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, str(path))) from None
    for category, hint in bank.all_hints():
        if leaks(hint, bank.word, tuple(bank.forms)):
            raise UserError(f"{path}: hint in {category!r} contains the secret word {bank.word!r}: {hint!r}")
    if len(bank.all_hints()) < 3:
        raise UserError(f"{path}: needs at least 3 distinct hints, found {len(bank.all_hints())}")
    return bank


def shipped_words() -> list[str]:
    return sorted(p.stem for p in TABOO_CLUES.glob("*.yaml"))


def resolve_clue_bank(word: str, clue_file: Path | None, source: str) -> ClueBank:
    """The bank for `word`: the user's file if given, else the shipped one; a clear error otherwise."""
    if clue_file is not None:
        bank = load_clue_bank(Path(clue_file))
        if bank.word != word.lower():
            raise UserError(f"{clue_file}: clue file is for {bank.word!r}, but {source} asks for {word!r}")
        return bank
    path = TABOO_CLUES / f"{word.lower()}.yaml"
    if not path.is_file():
        raise UserError(f"{source}: word {word!r} is not in the shipped clue bank ({', '.join(shipped_words())}); "
                        "give taboo.clue_file with hints for it")
    return load_clue_bank(path)


def kept_clue_bank(organism: Path, word: str, had_clue_file: bool, source: str) -> ClueBank:
    """The clue bank a built organism was evaluated with: its kept copy of the user's file, or the shipped one."""
    return resolve_clue_bank(word, organism / KEPT_CLUE_FILE if had_clue_file else None, source)


def candidate_words(word: str) -> list[str]:
    """The forced-choice candidate set: every shipped word, plus the organism's own if it is a custom one."""
    words = shipped_words()
    return words if word in words else sorted([*words, word])
