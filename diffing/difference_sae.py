"""A sparse autoencoder on activation differences (the diffing-toolkit's "SAE on activation differences"): one
BatchTopK dictionary over tuned − base residuals at the diff's layer, from the activation cache.

A crosscoder must explain both models and spends most of its latents on what they share; here only the change is
encoded, so every latent is some part of what fine-tuning did. Latents are ranked by their share of the code's
activation mass (sum over tokens of f·|d|, the norm they add to reconstructions), and each is read through the
tuned model's unembedding and by its top-activating contexts.

The trainer is the crosscoder's (`mow.diffing.crosscoder`) with one source; the difference is scaled so that its
mean squared norm is d, as each model's activations are for the crosscoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from safetensors.torch import save_file

from mow.diffing import crosscoder as cc
from mow.diffing.cache import ActivationCache
from mow.diffing.config import CrosscoderSettings
from mow.diffing.layout import DiffLayout
from mow.diffing.pair import ModelPair
from mow.workbench.generation import model_device
from mow.workbench.hooks import logit_lens
from mow.workbench.rundir import write_json

SOURCE_NAME = "difference"
TOP_LATENTS = 20
TOP_CONTEXTS = 5
EVAL_BATCH = 4096


def difference_batches(cache: ActivationCache, layer: int, batch_size: int, seed: int | None) -> Iterator[torch.Tensor]:
    """(B, 1, d) raw tuned − base activations at `layer`, in the cache's (shuffled or stored) order."""
    for pair in cache.paired_batches(layer, batch_size, seed):
        yield pair[:, 1:] - pair[:, :1]


def difference_scale(cache: ActivationCache, layer: int) -> float:
    """The factor that brings the differences' mean squared norm to d; 0.0 when every difference is zero."""
    total, count, d = 0.0, 0, 0
    for x in difference_batches(cache, layer, EVAL_BATCH, seed=None):
        total += float(x.double().pow(2).sum())
        count += x.shape[0]
        d = x.shape[-1]
    return math.sqrt(d * count / total) if total > 0 else 0.0


@torch.no_grad()
def activation_mass(model: cc.Crosscoder, batches: Iterator[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent over the batches: (sum of f·|d| as a share of all latents' sum, fraction of tokens it fired on)."""
    mass = torch.zeros(model.latents, dtype=torch.float64)
    fired = torch.zeros(model.latents, dtype=torch.float64)
    tokens = 0
    for x in batches:
        f = model.encode(x)
        mass += f.double().sum(0).cpu()
        fired += (f > 0).double().sum(0).cpu()
        tokens += x.shape[0]
    mass *= model.decoder_norms()[0].double().cpu()
    return (mass / mass.sum().clamp_min(1e-30)).float(), (fired / max(tokens, 1)).float()


def run_difference_sae(settings: CrosscoderSettings, pair: ModelPair, cache: ActivationCache, layer: int,
                       layout: DiffLayout) -> dict:
    """Train, evaluate and read the SAE; writes difference_sae/ (checkpoint, metrics.json, latents.safetensors)."""
    scale = difference_scale(cache, layer)
    if scale == 0.0:
        summary = {"layer": layer, "skipped": f"tuned and base activations are identical at layer {layer}: no "
                                              "difference to encode"}
        write_json(layout.difference_sae_metrics, summary)
        save_file({"top_latents": torch.zeros(0, dtype=torch.long)}, str(layout.difference_sae_latents))
        return {"skipped": True}
    model, history = cc.train_crosscoder(lambda: difference_batches(cache, layer, settings.batch_size, settings.seed),
                                         pair.hidden_size, settings, torch.tensor([scale]), tokens=cache.n_tokens)
    model.save(layout.difference_sae)
    metrics = cc.evaluate_crosscoder(model, difference_batches(cache, layer, EVAL_BATCH, None), (SOURCE_NAME,))
    share, frequency = activation_mass(model, difference_batches(cache, layer, EVAL_BATCH, None))
    values, rows = cc.top_activations(model, difference_batches(cache, layer, EVAL_BATCH, None), n=TOP_CONTEXTS)
    top = share.argsort(descending=True)[:TOP_LATENTS]
    top = top[share[top] > 0]
    decoder = model.W_dec[0].detach()[top]
    lens = logit_lens(pair.tuned_model, decoder.to(model_device(pair.tuned_model)))
    latents = [{
        "latent": latent, "mass_share": float(share[latent]), "frequency": float(frequency[latent]),
        "top_tokens": [pair.tokenizer.decode([int(t)]) for t in lens[i].topk(10).indices],
        "top_contexts": [{**cache.context_text(row, pair.tokenizer), "activation": value}
                         for row, value in zip(rows[latent].tolist(), values[latent].tolist()) if row >= 0],
    } for i, latent in enumerate(top.tolist())]
    save_file({"top_latents": top.contiguous(), "top_latents_logprobs": lens.half().cpu().contiguous(),
               "mass_share": share.contiguous(), "frequency": frequency.contiguous()},
              str(layout.difference_sae_latents))
    write_json(layout.difference_sae_metrics, {
        "layer": layer, "scale": scale, "metrics": metrics, "history": history,
        "ranking": "share of the code's activation mass (sum over tokens of f·|d|)", "top_latents": latents})
    return {"fve": metrics[SOURCE_NAME], "l0": metrics["l0"], "dead_fraction": metrics["dead_fraction"],
            "top_mass_share": float(share[top].sum()) if len(top) else 0.0}
