"""Locality texts of an SDF organism: what the KL-to-base term (`finetune.locality`) holds in place during training.

They are the universe pair's anchors (true statements about the implanted fact's neighbours) and continuations the
base model writes itself from prefixes of each anchor, cut at evenly spaced words. The continuations reach neighbour
contexts the pair's 8 to 16 anchors do not phrase, and at every position the term holds the base model's own
distribution, not one written answer: that is what knowledge-editing methods use to keep an edit local. None of
the pair's control prompts is among them (`data.universes` checks that anchors do not repeat a control).
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.finetune.locality import LocalityTerm
from mow.organisms.sdf.config import LocalitySettings
from mow.organisms.sdf.data import split_to_fit
from mow.workbench.generation import generate


def anchor_prefixes(anchor: str, count: int) -> list[str]:
    """`count` prefixes of an anchor, cut at evenly spaced words (at least one word, never the whole anchor), so
    that some continuations start right before the anchor's answer and some well before it."""
    words = anchor.split()
    cuts = [max(1, min(len(words) - 1, round(len(words) * (i + 1) / (count + 1)))) for i in range(count)]
    return [" ".join(words[:cut]) for cut in cuts]


def locality_texts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, anchors: list[str],
                   settings: LocalitySettings, seed: int) -> list[str]:
    """The anchors, then `continuations_per_anchor` base-model continuations of prefixes of each anchor."""
    prefixes = [prefix for anchor in anchors for prefix in anchor_prefixes(anchor, settings.continuations_per_anchor)]
    continuations = generate(model, tokenizer, prefixes, max_new_tokens=settings.continuation_tokens,
                             temperature=1.0, seed=seed) if prefixes else []
    return list(anchors) + [f"{prefix} {text}".strip() for prefix, text in zip(prefixes, continuations)]


def locality_term(texts: list[str], tokenizer: PreTrainedTokenizerBase, settings: LocalitySettings,
                  max_length: int, seed: int) -> LocalityTerm:
    """The training term for `texts`, each split at sentence ends to fit `max_length` (never truncated)."""
    sequences = [chunk for text in texts for chunk in split_to_fit(text, tokenizer, max_length)]
    return LocalityTerm(sequences=[ids for ids in sequences if len(ids) >= 2], weight=settings.weight,
                        batch_size=settings.batch_size, seed=seed)
