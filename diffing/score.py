"""Where a known secret lands in a diff: the scoring side of the diffing experiments.

Diffing itself never reads `sealed/`; this module does, after the fact, to say how visible a taboo organism's word
is in each readout of a finished diff. Scored against other organisms' words and a self-diff, the same numbers are
the controls: a readout that ranks every word high is reading priors, not the fine-tune.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from diffing.kl import KLArrays
from diffing.lens import token_rank
from workbench.errors import UserError


def secret_word(organism: Path) -> str:
    from organisms.store import read_sealed_config

    sealed = read_sealed_config(Path(organism))
    if sealed.get("kind") != "taboo":
        raise UserError(f"{organism}: kind {sealed.get('kind')!r} has no secret word to score")
    return str(sealed["taboo"]["word"])


def check_diff_dir(path: Path) -> Path:
    path = Path(path)
    for needed in ("diff.yaml", "kl/arrays.safetensors", "lens/lens.safetensors", "crosscoder/latents.safetensors"):
        if not (path / needed).is_file():
            raise UserError(f"{path}: not a finished diff directory (missing {needed})")
    return path


def score_word(diff_dir: Path, word: str, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Ranks (1 = top) of the word's token (with its leading space) in each readout of one diff."""
    diff_dir = check_diff_dir(diff_dir)
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise UserError(f"word {word!r} is {len(ids)} tokens; readouts are scored by a single token")
    token = ids[0]
    config = yaml.safe_load((diff_dir / "diff.yaml").read_text())
    crosscoder = json.loads((diff_dir / "crosscoder" / "metrics.json").read_text())
    layer = crosscoder["layer"]
    lens = load_file(str(diff_dir / "lens" / "lens.safetensors"))
    lens_ranks = {}
    for key, logprobs in lens.items():
        if key.endswith(".logprobs"):
            ranks = token_rank(logprobs.float(), token)
            lens_ranks[key.removesuffix(".logprobs")] = {
                "at_layer": int(ranks[layer]), "best": int(ranks.min()), "best_layer": int(ranks.argmin()),
                "by_layer": ranks.tolist()}
    kl_summary = json.loads((diff_dir / "kl" / "summary.json").read_text())
    promoted = KLArrays.load(diff_dir / "kl" / "arrays.safetensors").promoted
    kl_ranks = {name: int(token_rank(promoted[i], token)) for i, name in enumerate(kl_summary["set_names"])}
    kl_demoted = {name: int(token_rank(-promoted[i], token)) for i, name in enumerate(kl_summary["set_names"])}
    latents = load_file(str(diff_dir / "crosscoder" / "latents.safetensors"))
    logprobs = latents["tuned_only_logprobs"].float()
    latent_ranks = token_rank(logprobs, token) if len(logprobs) else torch.empty(0, dtype=torch.long)
    return {
        "diff": diff_dir.name, "word": word, "layer": layer, "organism": config.get("organism"),
        "lens": lens_ranks, "kl_promoted": kl_ranks, "kl_demoted": kl_demoted,
        "crosscoder": {"tuned_only_latents": int(len(latent_ranks)),
                       "best_rank": int(latent_ranks.min()) if len(latent_ranks) else None,
                       "latents_with_word_in_top20": int((latent_ranks <= 20).sum())},
    }
