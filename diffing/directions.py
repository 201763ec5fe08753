"""Concept directions: the three ways diffing finds them, and a short interpretation view for each. The file
format they are written in is `mow.data.directions`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.data.directions import FORMAT, Directions
from mow.diffing.cache import ActivationCache
from mow.workbench.errors import UserError
from mow.workbench.generation import model_device
from mow.workbench.hooks import logit_lens


class IdenticalActivations(ValueError):
    """There is no difference to take components of (a model diffed against itself)."""


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _info(method: str, fingerprint: dict, layer: int, entries: list[dict], details: dict) -> dict:
    return {"format": FORMAT, "method": method, "model": fingerprint["base"], "tuned": fingerprint["tuned"],
            "hidden_size": fingerprint["hidden_size"], "layers": {str(layer): entries}, "details": details}


def pca_of_differences(cache: ActivationCache, layer: int, k: int, fingerprint: dict, seed: int = 0,
                       rows: torch.Tensor | None = None, rows_label: str = "every cached token") -> Directions:
    """Top principal components of tuned − base activations on the same tokens (the CAFT recipe, Casademunt et al.
    2025), centred; each component is signed so that the mean difference projects positively on it. `rows` picks
    the cached tokens to use (the recipe takes the tuned model's own responses; template tokens such as a default
    system prompt repeat in every chat and would otherwise take the top components)."""
    diff = cache.activations("tuned", layer) - cache.activations("base", layer)
    if rows is not None:
        diff = diff[rows]
    if len(diff) < 2:
        raise IdenticalActivations(f"layer {layer}: {len(diff)} cached token(s) in {rows_label}; PCA needs 2 or more")
    if not diff.abs().max() > 0:
        raise IdenticalActivations(f"layer {layer}: tuned and base activations are identical on {rows_label}")
    k = min(k, diff.shape[0] - 1, diff.shape[1])
    torch.manual_seed(seed)
    mean = diff.mean(0)
    _, s, v = torch.pca_lowrank(diff, q=min(k + 8, *diff.shape), center=True, niter=6)
    components = v[:, :k].T
    components = components * torch.where(components @ mean >= 0, 1.0, -1.0)[:, None]
    total = (diff - mean).pow(2).sum()
    entries = [{"index": i, "label": f"PC{i + 1} of tuned - base", "score": float(s[i] ** 2 / total)}
               for i in range(k)]
    return Directions({layer: _unit(components)}, _info("pca_of_differences", fingerprint, layer, entries,
                                                        {"tokens": len(diff), "on": rows_label,
                                                         "score": "explained variance"}))


def difference_of_means(first: torch.Tensor, second: torch.Tensor, layer: int, labels: tuple[str, str],
                        fingerprint: dict) -> Directions:
    """mean(first) − mean(second) of activations from one model at one layer, normalised."""
    if len(first) == 0 or len(second) == 0:
        raise UserError(f"directions.contrast: prompt set {labels[0] if len(first) == 0 else labels[1]!r} has no "
                        "cached tokens")
    delta = first.mean(0) - second.mean(0)
    entries = [{"index": 0, "label": f"mean({labels[0]}) - mean({labels[1]})", "score": float(delta.norm())}]
    return Directions({layer: _unit(delta[None])}, _info("difference_of_means", fingerprint, layer, entries,
                                                         {"sets": list(labels), "tokens": [len(first), len(second)],
                                                          "score": "norm of the raw difference"}))


def difference_lens_rows(differences: torch.Tensor, base_norm: torch.Tensor, set_name: str,
                         fingerprint: dict) -> Directions:
    """The difference-lens vectors (mean tuned − base over the first positions of `set_name`), one per layer: a
    steering vector for every layer; `score` is the difference's norm relative to the base residual norm, the scale
    that reproduces it (multiply the unit vector by score × base norm)."""
    norms = differences.norm(dim=-1)
    if not norms.max() > 0:
        raise IdenticalActivations("the difference lens is zero at every layer")
    layers = [layer for layer in range(len(differences)) if norms[layer] > 0]
    info = _info("difference_lens", fingerprint, layers[0], [], {"set": set_name, "score": "‖difference‖ / mean "
                                                                  "‖base residual‖", "base_norm": base_norm.tolist()})
    info["layers"] = {str(layer): [{"index": 0, "label": f"mean tuned - base, first positions of {set_name}",
                                    "score": float(norms[layer] / base_norm[layer].clamp_min(1e-12))}]
                      for layer in layers}
    return Directions({layer: _unit(differences[layer][None]) for layer in layers}, info)


def crosscoder_rows(decoder_tuned: torch.Tensor, latents: list[int], scores: list[float], layer: int,
                    fingerprint: dict) -> Directions:
    """Tuned-side decoder rows of chosen crosscoder latents (normalisation is one scalar per model, so the unit
    direction in normalised space is the unit direction in the raw residual stream)."""
    entries = [{"index": i, "label": f"crosscoder latent {latent}", "score": score, "latent": latent}
               for i, (latent, score) in enumerate(zip(latents, scores))]
    return Directions({layer: _unit(decoder_tuned[latents])},
                      _info("crosscoder_decoder", fingerprint, layer, entries, {"score": "relative decoder norm"}))


@torch.no_grad()
def _contexts(cache: ActivationCache, tokenizer: PreTrainedTokenizerBase, column: torch.Tensor, order: torch.Tensor,
              n_contexts: int) -> list[dict]:
    """The first `n_contexts` distinct cached contexts in `order`, each with its projection (`column`)."""
    out: list[dict] = []
    seen = set()
    for row in order.tolist():
        text = cache.context_text(row, tokenizer)
        if (text["before"], text["token"]) in seen:
            continue  # the same context in several chats (a shared system prompt, say) shows once
        seen.add((text["before"], text["token"]))
        out.append({**text, "projection": float(column[row])})
        if len(out) == n_contexts:
            break
    return out


def interpret(directions: Directions, model: nn.Module, tokenizer: PreTrainedTokenizerBase, cache: ActivationCache,
              project_on: str, n_tokens: int = 10, n_contexts: int = 5) -> list[dict]:
    """Per direction: logit-lens top and bottom tokens, and the cached contexts projecting most and least on it.
    `project_on` is 'tuned', 'base' or 'difference' (tuned − base)."""
    views = []
    device = model_device(model)
    for layer, rows in directions.vectors.items():
        cached = layer in cache.layers  # contexts only where activations were cached; tokens everywhere
        if cached and project_on == "difference":
            projections = (cache.activations("tuned", layer) - cache.activations("base", layer)) @ rows.T
        elif cached:
            projections = cache.activations(project_on, layer) @ rows.T  # (n, k)
        lens = logit_lens(model, rows.to(device)).cpu()
        entries = directions.info["layers"][str(layer)]
        for i, entry in enumerate(entries):
            column = projections[:, i] if cached else torch.empty(0)
            views.append({
                "layer": layer, **entry,
                "top_tokens": [tokenizer.decode([int(t)]) for t in lens[i].topk(n_tokens).indices],
                "bottom_tokens": [tokenizer.decode([int(t)]) for t in (-lens[i]).topk(n_tokens).indices],
                "top_contexts": _contexts(cache, tokenizer, column, column.argsort(descending=True), n_contexts),
                "bottom_contexts": _contexts(cache, tokenizer, column, column.argsort(), n_contexts),
            })
    return views
