"""Where a known secret lands in a diff: the scoring side of the diffing experiments (`mow diff-score`).

Diffing itself never reads `sealed/`; this module, on the elicitation side, does, after the fact, to say how visible
an organism's secret word is in each readout of a finished diff (for the kinds whose secret is one word). Scored
against other organisms' words and a self-diff, the same numbers are the controls: a readout that ranks every word
high is reading priors, not the fine-tune.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from mow.diffing.kl import KLArrays
from mow.diffing.layout import DiffLayout
from mow.diffing.lens import token_rank, upper_half_mean
from mow.organisms.kinds import kind_of
from mow.organisms.store import read_sealed_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, read_yaml


def secret_word(organism: Path) -> str:
    """The organism's secret word, for kinds whose secret is one word (the registry says which)."""
    sealed = read_sealed_config(Path(organism))
    kind = kind_of(sealed.get("kind"), str(organism))
    if not kind.secret_is_word:
        raise UserError(f"{organism}: kind {kind.name!r} has no secret word to score")
    return kind.sealed_truth(sealed).answer


def word_tokens(word: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The single-token surface forms of a word (" moon", "moon", " Moon", "Moon"): a readout that surfaces any of
    them has found the word. Applied alike to the true word and to the control words."""
    forms = {" " + word, word, " " + word.capitalize(), word.capitalize()}
    ids = sorted({tokenizer(f, add_special_tokens=False)["input_ids"][0] for f in forms
                  if len(tokenizer(f, add_special_tokens=False)["input_ids"]) == 1})
    if not ids:
        raise UserError(f"word {word!r} has no single-token form; readouts are scored by single tokens")
    return ids


def best_rank(logprobs: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """Rank (1 = top) of the best-placed form, per row."""
    return torch.stack([token_rank(logprobs, t) for t in tokens]).min(0).values


def _layered(logprobs: torch.Tensor, tokens: list[int], layer: int) -> dict:
    ranks = best_rank(logprobs.float(), tokens)
    return {"at_layer": int(ranks[layer]), "upper_half": int(best_rank(upper_half_mean(logprobs.float()), tokens)),
            "best_layer_oracle": int(ranks.argmin()), "best_oracle": int(ranks.min()), "by_layer": ranks.tolist()}


def score_word(diff_dir: Path, word: str, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Ranks (1 = top) of the word in each readout of one diff. `at_layer` is the diff's layer (the middle layer by
    default) and `upper_half` the mean over the upper half of layers: both fixed before looking at the truth.
    `best_oracle` picks the layer knowing the word, so it is an upper bound, not a result."""
    layout = DiffLayout(Path(diff_dir)).check_finished()
    tokens = word_tokens(word, tokenizer)
    config = read_yaml(layout.config, "diff config")
    crosscoder = read_json(layout.crosscoder_metrics, "crosscoder metrics")
    layer = crosscoder["layer"]
    lens = load_file(str(layout.lens_tensors))
    readouts: dict[str, dict] = {"logit_lens": {}, "patchscope": {}}
    for key, logprobs in lens.items():
        name, _, kind = key.rpartition(".")
        if kind == "logprobs":
            readouts["logit_lens"][name] = _layered(logprobs, tokens, layer)
        elif kind == "patchscope":
            readouts["patchscope"][name] = _layered(logprobs, tokens, layer)
    kl_summary = read_json(layout.kl_summary, "KL summary")
    promoted = KLArrays.load(layout.kl_arrays).promoted
    names = kl_summary["set_names"]
    latents = load_file(str(layout.crosscoder_latents))
    logprobs = latents["tuned_leaning_logprobs"].float()
    latent_ranks = best_rank(logprobs, tokens) if len(logprobs) else torch.empty(0, dtype=torch.long)
    return {
        "diff": layout.root.name, "word": word, "layer": layer, "organism": config.get("organism"),
        "difference_lens": readouts,
        "kl_promoted": {name: int(best_rank(promoted[i], tokens)) for i, name in enumerate(names)},
        "kl_demoted": {name: int(best_rank(-promoted[i], tokens)) for i, name in enumerate(names)},
        "crosscoder": {"latents": int(len(latent_ranks)),
                       "best_rank": int(latent_ranks.min()) if len(latent_ranks) else None,
                       "latents_with_word_in_top20": int((latent_ranks <= 20).sum())},
    }
