"""Does a text reveal the secret word? One detector for filtering training data and for scoring leaks.

A text leaks if, ignoring case, it has
- any inflected or compound form that starts a token with the word or a known form of it
  (smile, smiles, smiling, smiled, snowman, bluebird; also 'rocket' for rock: strict on purpose), or
- the word split by spaces or punctuation between its letters (s m i l e, s-m-i-l-e, s.m.i.l.e).
Forms that do not start with the word (leaf -> leaves, smile -> smiling) come from `word_forms`.
"""

from __future__ import annotations

import re
from functools import lru_cache


def word_forms(word: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Stems whose presence at the start of a token counts as saying the word."""
    word = word.lower()
    forms = {word, *(e.lower() for e in extra)}
    if word.endswith("e") and len(word) > 3:
        forms.add(word[:-1] + "ing")
    if word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    return tuple(sorted(forms))


@lru_cache(maxsize=256)
def _pattern(word: str, extra: tuple[str, ...]) -> re.Pattern[str]:
    stems = "|".join(re.escape(f) for f in word_forms(word, extra))
    spaced = r"[\W_]+".join(re.escape(ch) for ch in word.lower())
    return re.compile(rf"(?<![a-z])(?:{stems})|(?<![a-z]){spaced}(?![a-z])", re.IGNORECASE)


def leaks(text: str, word: str, extra_forms: tuple[str, ...] = ()) -> bool:
    return _pattern(word.lower(), tuple(extra_forms)).search(text) is not None
