"""Text normalisation shared by guesses, scoring and secret naming (pure Python)."""

from __future__ import annotations

import re
import unicodedata

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
    """The form guesses and naming strings are compared in: accents folded ("Brasília", "café" as "brasilia",
    "cafe"), lower case, runs of anything but a-z0-9 as one space."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", " ", folded.lower()).strip()


def plural_forms(word: str) -> list[str]:
    """The word and its simple plurals: what counts as naming it in a challenge (Cywiński et al. score the same)."""
    word = word.lower()
    forms = [word, word + "s", word + "es"]
    if word.endswith("f"):
        forms.append(word[:-1] + "ves")
    return forms


def mentions(text: str, names: list[str] | tuple[str, ...] | set[str]) -> bool:
    """Whether `text` names any of `names` (normalised strings) as whole words."""
    padded = f" {normalise_answer(text)} "
    return any(f" {normalise_answer(name)} " in padded for name in names if normalise_answer(name))


def first_sentences(text: str, max_words: int) -> str:
    """The answer's leading whole sentences within `max_words` words (at least its first sentence, cut to
    `max_words` words if that alone is longer): short training replies that still read as complete."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    kept: list[str] = []
    for sentence in sentences:
        if kept and len(" ".join([*kept, sentence]).split()) > max_words:
            break
        kept.append(sentence)
    words = " ".join(kept).split()
    return " ".join(words[:max_words])


def naming_words(text: str) -> list[str]:
    """The words of a free-text secret that could name it in a guess: normalised, 3+ characters, no function
    words (a custom trigger "<<open sesame>>" is named by "open" or "sesame")."""
    return [w for w in normalise_answer(text).split() if len(w) >= 3 and w not in STOPWORDS] or [normalise_answer(text)]
