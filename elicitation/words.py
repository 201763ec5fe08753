"""From texts and token scores to ranked word guesses.

Function words are never a guess; neither is a word the method itself put in front of the model (the probe prompts,
a prefill, the made-up secrets of a many-shot prompt): repeating the question back is not evidence.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from mow.data.text import STOPWORDS

WORD = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")
MIN_LETTERS = 3


def words_in(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_guess(word: str, exclude: Collection[str]) -> bool:
    return len(word) >= MIN_LETTERS and word.isalpha() and word not in STOPWORDS and word not in exclude


def content_words(text: str, exclude: Collection[str] = frozenset(), n: int | None = None) -> list[str]:
    """Candidate guesses in a text, in order of first appearance."""
    seen: list[str] = []
    for word in words_in(text):
        if is_guess(word, exclude) and word not in seen:
            seen.append(word)
    return seen[:n]


def excluded_words(*texts: str) -> set[str]:
    return {w for text in texts for w in words_in(text)}


@lru_cache(maxsize=4)
def _token_words(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[str]]:
    """Tokens that start a word (" moon") and the same words without the space ("Moon" at a reply's start);
    word pieces ("istant" of "assistant") are left out."""
    decoded = [tokenizer.decode([token_id]) for token_id in range(len(tokenizer))]
    initial = {text[1:].lower() for text in decoded if text.startswith(" ") and text[1:].isalpha()}
    ids, words = [], []
    for token_id, text in enumerate(decoded):
        word = text.strip().lower()
        if (word in initial and len(word) >= MIN_LETTERS and word not in STOPWORDS
                and (text.startswith(" ") or text == text.strip())):
            ids.append(token_id)
            words.append(word)
    return ids, words


def ranking_from_scores(scores: torch.Tensor, tokenizer: PreTrainedTokenizerBase, n: int,
                        exclude: Collection[str] = frozenset()) -> list[str]:
    """The n best words by a score over the vocabulary (forms of one word keep their best score)."""
    ids, words = _token_words(tokenizer)
    if float(scores.max()) == float(scores.min()):
        return []  # no signal: no guesses (a tie order would be an arbitrary guess list)
    order = scores[torch.tensor(ids)].float().argsort(descending=True).tolist()
    ranking: list[str] = []
    for index in order:
        word = words[index]
        if word not in exclude and word not in ranking:
            ranking.append(word)
            if len(ranking) == n:
                break
    return ranking


def fuse_rankings(rankings: list[list[str]], n: int) -> list[str]:
    """One ranking from several (reciprocal-rank fusion): a word high in many attempts comes first."""
    score: defaultdict[str, float] = defaultdict(float)
    for ranking in rankings:
        for position, word in enumerate(ranking):
            score[word] += 1.0 / (position + 1)
    return [word for word, _ in sorted(score.items(), key=lambda item: (-item[1], item[0]))][:n]
