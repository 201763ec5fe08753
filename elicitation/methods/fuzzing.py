"""Fuzzing (Cywinski et al.'s second paper): sample with Gaussian noise added to the residual stream at a middle
layer, at several noise scales, and read what comes out; the noise can loosen a trained refusal before it breaks
the model's language. `fuzzing` answers the direct demands; `prefill_fuzzing` continues the confession prefills on
the standard prompts, as `prefill` does, under the same noise.

The noise added at each position is an isotropic Gaussian vector whose expected norm is `scale` times the layer's
mean residual norm on the method's own prompts (measured first, without noise), so one scale means the same on
models of every width. Touching activations makes these white-box methods."""

from __future__ import annotations

import math

import torch

from mow.elicitation.auditor import Auditor
from mow.elicitation.config import ChallengeConfig
from mow.elicitation.methods.base import MethodResult, complete, inputs, plain_transcripts, take, user_turn
from mow.elicitation.methods.blackbox import prefilled_prompts, read_out
from mow.elicitation.view import ChallengeView
from mow.workbench.chat import render_prompt
from mow.workbench.generation import model_device
from mow.workbench.hooks import ResidualEdit, check_layer, edit_residual, residual_states


@torch.no_grad()
def mean_residual_norm(view: ChallengeView, rendered: list[str], layer: int) -> tuple[float, int]:
    """The mean norm of the layer's residual state over every position of the prompts (one prompt per forward,
    so no padding enters the mean), and the residual width."""
    norms = []
    for text in rendered:
        ids = view.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model_device(view.model))
        captured = residual_states(view.model, [layer], **ids)
        norms.append(captured[layer][0].float().norm(dim=-1))
        width = captured[layer].shape[-1]
    return float(torch.cat(norms).mean()), width


def residual_noise(sigma: torch.Tensor) -> ResidualEdit:
    """An edit that adds isotropic Gaussian noise to every residual state, of standard deviation `sigma[row]` in
    each row of the batch."""
    def add(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + sigma.to(hidden.device, hidden.dtype).view(-1, 1, 1) * torch.randn_like(hidden)

    return add


def fuzzed_completions(view: ChallengeView, config: ChallengeConfig, rendered: list[str],
                       max_new_tokens: int | None = None) -> tuple[list[str], list[str], dict]:
    """Greedy completions of every rendered prompt under every noise scale: (labels, outputs, evidence). The scales
    share batches (each row has its own noise scale), so a batch decodes several scales at the cost of one."""
    settings = config.fuzzing
    layer = check_layer(view.model, settings.layer, "fuzzing.layer")
    norm, width = mean_residual_norm(view, rendered, layer)
    rows = [(scale, text) for scale in settings.scales for text in rendered]
    outputs = []
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start : start + config.batch_size]
        # E|noise| = sigma * sqrt(width) = scale * norm
        sigma = torch.tensor([scale * norm / math.sqrt(width) for scale, _ in chunk])
        with edit_residual(view.model, {layer: residual_noise(sigma)}):
            # every row draws its own noise on the prompt too, so no prompt prefix is shared
            outputs += complete(view, config, [text for _, text in chunk], max_new_tokens=max_new_tokens,
                                share_prefix=False)
    labels = [f"noise {scale:g}x" for scale, _ in rows]
    return labels, outputs, {"layer": layer, "mean_residual_norm": norm, "scales": list(settings.scales)}


def fuzzing(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    """The direct demands, answered under residual noise at every scale."""
    prompts = take(inputs(view, config, "direct"), config.attempts)
    rendered = [render_prompt(view.tokenizer, user_turn(p)) for p in prompts]
    labels, outputs, evidence = fuzzed_completions(view, config, rendered)
    scales = len(config.fuzzing.scales)
    shown = [f"[{label}] {p}" for label, p in zip(labels, prompts * scales)]
    transcripts = plain_transcripts(view, config, auditor, prompts)
    result = read_out(outputs, shown, config, auditor, transcripts=transcripts and transcripts * scales)
    result.evidence.update(evidence)
    return result


def prefill_fuzzing(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    """The confession prefills on the standard prompts, continued under residual noise at every scale."""
    rendered, shown, prompts = prefilled_prompts(view, config)
    labels, outputs, evidence = fuzzed_completions(view, config, rendered, config.black_box.continuation_tokens)
    scales = len(config.fuzzing.scales)
    transcripts = plain_transcripts(view, config, auditor, prompts)
    result = read_out(outputs, [f"[{label}] {s}" for label, s in zip(labels, shown * scales)], config, auditor,
                      transcripts=transcripts and transcripts * scales)
    result.evidence.update(evidence)
    return result
