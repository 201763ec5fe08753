"""The activation-difference lens (Minder et al. 2025): what a narrow fine-tune was about, read off the residual stream.

For each layer, the mean of tuned minus base activations over the first few positions of each text is read two ways:
- the logit lens: through the tuned model's final norm and unembedding;
- a token-identity Patchscope (Ghandeharioun et al. 2024, as used by Minder et al.): the difference, rescaled to the
  base model's residual norm at that layer, replaces the residual of the last token of identity prompts
  ("man -> man ... ?") in the base model, and the next-token distribution says which token the vector stands for.
  Middle layers of a small model are far from its unembedding, where the logit lens reads mostly noise.
The same vector, added to the base model's residual stream, steers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mow.diffing.config import IDENTITY_PROMPTS
from mow.diffing.pair import ModelPair
from mow.diffing.prompts import TEMPLATE, TokenSequence
from mow.workbench.chat import render_prompt
from mow.workbench.generation import generate, model_device
from mow.workbench.hooks import capture_residual, edit_residual, logit_lens


@dataclass
class LensResult:
    differences: torch.Tensor  # (n_layers, d) mean tuned − base
    base_norm: torch.Tensor    # (n_layers,) mean residual norm of the base model at those positions
    logprobs: torch.Tensor     # (n_layers, V) the differences read through the final norm and unembedding
    n_positions: int


def content_start(sequence: TokenSequence, skip_first: int) -> int:
    """Where a sequence's lens window starts: at its first token of text or message content, and never before
    `skip_first`. A chat's first positions are its template (special tokens, role header, an inserted system
    prompt), the same in every chat, so reading them would read the template, not the set."""
    first = next((i for i, role in enumerate(sequence.roles) if role != TEMPLATE), len(sequence.roles))
    return max(first, skip_first)


@torch.no_grad()
def mean_differences(pair: ModelPair, sequences: list[TokenSequence], skip_first: int, positions: int,
                     batch_size: int = 16, progress: bool = True) -> LensResult:
    """Average tuned − base over the first `positions` content positions of every sequence long enough to have
    them (see `content_start`)."""
    starts = [content_start(s, skip_first) for s in sequences]
    usable = [(s, b) for s, b in zip(sequences, starts) if len(s.ids) >= b + positions]
    if not usable:
        raise ValueError(f"no text has {positions} content positions after the first {skip_first}")
    layers = list(range(pair.n_layers))
    total = torch.zeros(len(layers), pair.hidden_size, dtype=torch.float64)
    norm = torch.zeros(len(layers), dtype=torch.float64)
    device = model_device(pair.tuned_model)
    for begin in tqdm(range(0, len(usable), batch_size), desc="difference lens", disable=not progress, leave=False):
        batch = usable[begin : begin + batch_size]
        ids, mask = (t.to(device) for t in pair.batch([s.ids[: b + positions] for s, b in batch]))
        window = torch.tensor([list(range(b, b + positions)) for _, b in batch], device=device)
        rows = torch.arange(len(batch), device=device)[:, None]
        states = {}
        for name, context in (("tuned", pair.tuned), ("base", pair.base)):
            with context() as model, capture_residual(model, layers) as captured:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            states[name] = torch.stack([captured[layer][rows, window].double().cpu() for layer in layers])
        total += (states["tuned"] - states["base"]).sum(dim=(1, 2))
        norm += states["base"].norm(dim=-1).sum(dim=(1, 2))
    count = len(usable) * positions
    differences = (total / count).float()
    logprobs = logit_lens(pair.tuned_model, differences.to(device)).cpu()
    return LensResult(differences, (norm / count).float(), logprobs, count)


@torch.no_grad()
def patchscope(model: nn.Module, tokenizer: PreTrainedTokenizerBase, result: LensResult, scales: list[float],
               prompts: tuple[str, ...] | list[str] = IDENTITY_PROMPTS, layers_per_pass: int = 8) -> torch.Tensor:
    """(n_layers, V) next-token log-probs of the identity prompts with each layer's difference patched in at the
    last position, averaged over `prompts` and `scales` (multiples of the base residual norm). Run it on the base
    model. Several layers' patches share one forward pass: the batch holds one block of rows per layer (one row per
    scale), and each block is patched at its own layer only, so a pass computes what a pass per layer would, with
    `layers_per_pass` times fewer calls."""
    if not prompts:
        raise ValueError("patchscope: no prompts to patch into")
    device = model_device(model)
    encoded = [tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device) for p in prompts]
    units = result.differences / result.differences.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    vectors = (units * result.base_norm[:, None])[:, None, :] * torch.tensor(scales)[None, :, None]  # (L, S, d)
    vectors = vectors.to(device)
    n_layers, n_scales = len(vectors), len(scales)
    total: torch.Tensor | None = None
    for ids in encoded:
        position = ids.shape[1] - 1
        rows = []
        for first in range(0, n_layers, layers_per_pass):
            chosen = list(range(first, min(first + layers_per_pass, n_layers)))

            def patch_at(block: int, layer: int, position: int = position) -> Callable[[torch.Tensor], torch.Tensor]:
                def patch(hidden: torch.Tensor) -> torch.Tensor:
                    hidden = hidden.clone()
                    hidden[block * n_scales : (block + 1) * n_scales, position] = vectors[layer].to(hidden.dtype)
                    return hidden

                return patch

            edits = {layer: patch_at(block, layer) for block, layer in enumerate(chosen)}
            with edit_residual(model, edits):
                logits = model(input_ids=ids.expand(len(chosen) * n_scales, -1), use_cache=False,
                               logits_to_keep=1).logits[:, -1].float()
            rows.append(logits.log_softmax(-1).view(len(chosen), n_scales, -1).mean(1).cpu())
        per_prompt = torch.cat(rows)
        total = per_prompt if total is None else total + per_prompt
    assert total is not None
    return total / len(encoded)


def upper_half_mean(logprobs: torch.Tensor) -> torch.Tensor:
    """One readout for all layers without choosing one after the fact: the mean over the upper half of layers."""
    return logprobs[logprobs.shape[0] // 2 :].mean(0)


def top_tokens(logprobs: torch.Tensor, tokenizer: PreTrainedTokenizerBase, n: int) -> list[list[str]]:
    """(n_layers, V) -> the n top tokens per layer."""
    return [[tokenizer.decode([int(i)]) for i in row.topk(n).indices] for row in logprobs]


def token_rank(logprobs: torch.Tensor, token_id: int) -> torch.Tensor:
    """Rank of a token in each row (1 = top); ties share the middle rank, so a readout with no signal (a zero
    difference gives a flat distribution) ranks every token in the middle, not at the top."""
    value = logprobs[..., token_id : token_id + 1]
    above = (logprobs > value).sum(-1)
    tied = (logprobs == value).sum(-1) - 1
    return above + tied // 2 + 1


def steering_vector(result: LensResult, layer: int, strength: float) -> torch.Tensor:
    """The difference at `layer` rescaled to `strength` times the base model's mean residual norm there."""
    direction = result.differences[layer]
    return direction / direction.norm().clamp_min(1e-12) * strength * result.base_norm[layer]


@torch.no_grad()
def steer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layer: int,
          vector: torch.Tensor, max_new_tokens: int = 32, seed: int = 0) -> list[str]:
    """Greedy replies with `vector` added to the residual stream after `layer` at every position."""
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    vector = vector.to(model_device(model))
    with edit_residual(model, {layer: lambda hidden: hidden + vector.to(hidden.dtype)}):
        return generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, seed=seed)
