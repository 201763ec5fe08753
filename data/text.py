"""Text normalisation shared by guesses, scoring and secret naming (pure Python)."""

from __future__ import annotations

import re

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
