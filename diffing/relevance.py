"""Token relevance, judge-free: which of a readout's top tokens relate to what the fine-tune is about.

Minder et al. have an LLM grader mark which of the top-20 lens tokens relate to the fine-tuning domain. Offline there
is no grader strong enough, so the base model's own associations stand in for one. A description's *lift* on a token
is how much writing the description in front of "a word that comes to mind:" raises the token's log-probability over
a neutral description in the same place (the mean over two wordings). A token relates to a description when
- it is a content word (a whole word of three or more letters, not a stopword: a grader would not count "the", a
  comma or a word piece),
- the description lifts it by at least `lift` nats,
- and lifts it more than any other description in the comparison does (the other organism kinds' descriptions), so
  that a word every description raises ("guess", "this") counts for none of them.
A language model's next-token association needs no embedding model and no judge, and it is the model's own: a token
it does not connect with the description does not count.

Controls, so that a share means something:
- the same tokens against each other kind's description (are they about this fine-tune, or about fine-tunes at
  all?);
- tokens drawn at random from the diff's own texts, against the description (how often chance passes the bar).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.data.text import STOPWORDS
from mow.diffing.kl import KLArrays
from mow.diffing.layout import DiffLayout
from mow.diffing.lens import upper_half_mean
from mow.workbench.files import read_json
from mow.workbench.generation import next_token_logprobs

TEMPLATES = ("{description}\nA word that comes to mind:", "Topic: {description}\nOne related word:")
NEUTRAL = "An ordinary conversation about everyday things."


@dataclass(frozen=True)
class Associations:
    """Each description's lift over the neutral one, for every token of the vocabulary: (n_descriptions, V)."""

    lifts: torch.Tensor

    def relevant(self, description: int, token_ids: list[int], threshold: float,
                 tokenizer: PreTrainedTokenizerBase) -> list[bool]:
        others = torch.cat([self.lifts[:description], self.lifts[description + 1 :]])
        return [is_content_word(tokenizer.decode([t]), str(tokenizer.convert_ids_to_tokens(t)))
                and bool(self.lifts[description, t] >= threshold)
                and bool(others.shape[0] == 0 or self.lifts[description, t] > others[:, t].max()) for t in token_ids]


WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE's and SentencePiece's mark of a token that begins a word


def is_content_word(text: str, raw: str) -> bool:
    """A whole word of three or more letters that is not a stopword. `text` is the token decoded, `raw` its
    vocabulary entry: a token that does not begin a word ("ancers", "akistan") is a piece of one, which no grader
    would count."""
    word = text.strip()
    starts_word = text.startswith(" ") or raw.startswith(WORD_START_MARKERS)
    return starts_word and re.fullmatch(r"[^\W\d_]{3,}", word) is not None and word.lower() not in STOPWORDS


@torch.no_grad()
def associations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, descriptions: list[str]) -> Associations:
    texts = [*descriptions, NEUTRAL]
    prompts = [template.format(description=text) for text in texts for template in TEMPLATES]
    logprobs = next_token_logprobs(model, tokenizer, prompts).view(len(texts), len(TEMPLATES), -1).mean(1)
    return Associations(logprobs[:-1] - logprobs[-1:])


def score_tokens(found: Associations, token_ids: list[int], tokenizer: PreTrainedTokenizerBase, threshold: float,
                 control_names: list[str]) -> dict:
    """The tokens' relevance to the first description, and the share relevant to each control description (the
    rest of the descriptions `found` was made from, named by `control_names`)."""
    own = found.relevant(0, token_ids, threshold, tokenizer)
    return {"tokens": [tokenizer.decode([t]) for t in token_ids],
            "lift": [round(float(found.lifts[0, t]), 3) for t in token_ids],
            "relevant": _share(own), "relevant_tokens": [tokenizer.decode([t]) for t, r in zip(token_ids, own) if r],
            "controls": {name: _share(found.relevant(i + 1, token_ids, threshold, tokenizer))
                         for i, name in enumerate(control_names)}}


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def random_token_ids(sequences: list[list[int]], special: set[int], n: int, seed: int) -> list[int]:
    """`n` distinct token ids drawn at random from those the texts contain (special tokens left out)."""
    pool = sorted({t for seq in sequences for t in seq} - special)
    if not pool or n == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    return [pool[i] for i in torch.randperm(len(pool), generator=generator)[:n].tolist()]


def readout_tokens(layout: DiffLayout, n: int) -> dict[str, list[int]]:
    """The top `n` token ids of each readout of a finished diff's KL and lens stages: diff mining's most counted
    tokens per prompt set, and the logit lens and Patchscope of the mean difference per set (their mean over the
    upper half of layers, the report's readout). Named "<set> / <readout>"."""
    readouts: dict[str, list[int]] = {}
    mined = KLArrays.load(layout.kl_arrays).mined
    for index, name in enumerate(read_json(layout.kl_summary, "KL summary")["set_names"]):
        counts = mined[index]
        ids = [int(i) for i in counts.topk(n).indices if counts[i] > 0]
        if ids:
            readouts[f"{name} / diff mining"] = ids
    tensors = load_file(str(layout.lens_tensors))
    for name in read_json(layout.lens_report, "lens report")["sets"]:
        for readout, key in (("logit lens", "logprobs"), ("Patchscope", "patchscope")):
            if f"{name}.{key}" in tensors:
                readout_mean = upper_half_mean(tensors[f"{name}.{key}"].float())
                readouts[f"{name} / {readout}"] = readout_mean.topk(n).indices.tolist()
    return readouts


def judge_readouts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, readouts: dict[str, list[int]],
                   description: str, controls: dict[str, str], threshold: float) -> dict[str, dict]:
    """Each readout's tokens scored against `description`, with `controls` (name -> description) beside it."""
    found = associations(model, tokenizer, [description, *controls.values()])
    return {name: score_tokens(found, ids, tokenizer, threshold, list(controls)) for name, ids in readouts.items()}
