"""The activation-difference lens (Minder et al. 2025): what a narrow fine-tune was about, read off the residual stream.

For each layer, the mean of tuned minus base activations over the first few positions of each text is read two ways:
- the logit lens: through the tuned model's final norm and unembedding;
- a token-identity Patchscope (Ghandeharioun et al. 2024, as used by Minder et al.): the difference, rescaled to a
  multiple of the base model's residual norm at that layer, replaces the residual of the last token of identity
  prompts ("man -> man ... ?") in the base model, and the next-token distribution says which token the vector
  stands for. Middle layers of a small model are far from its unembedding, where the logit lens reads mostly noise.
The same vector, added to the tuned model's residual stream at the largest strength that keeps its replies coherent,
steers it (`coherent_strength`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mow.diffing.config import IDENTITY_PROMPTS
from mow.diffing.pair import ModelPair
from mow.diffing.prompts import TEMPLATE, TokenSequence
from mow.organisms.behaviour import answer_logprob
from mow.workbench.chat import render_prompt
from mow.workbench.generation import generate, model_device
from mow.workbench.hooks import edit_residual, logit_lens, residual_states


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
    batches = [usable[begin : begin + batch_size] for begin in range(0, len(usable), batch_size)]
    # one sweep per model (the tuned one with its adapter merged for the whole sweep): the sum of differences is the
    # tuned sum minus the base sum
    with tqdm(total=2 * len(batches), desc="difference lens", disable=not progress, leave=False) as bar:
        for sign, context in ((1.0, pair.tuned_merged), (-1.0, pair.base)):
            with context() as model:
                for batch in batches:
                    ids, mask = (t.to(device) for t in pair.batch([s.ids[: b + positions] for s, b in batch]))
                    window = torch.tensor([list(range(b, b + positions)) for _, b in batch], device=device)
                    rows = torch.arange(len(batch), device=device)[:, None]
                    captured = residual_states(model, layers, input_ids=ids, attention_mask=mask)
                    states = torch.stack([captured[layer][rows, window].double().cpu() for layer in layers])
                    total += sign * states.sum(dim=(1, 2))
                    if sign < 0:
                        norm += states.norm(dim=-1).sum(dim=(1, 2))
                    bar.update()
    count = len(usable) * positions
    differences = (total / count).float()
    logprobs = logit_lens(pair.tuned_model, differences.to(device)).cpu()
    return LensResult(differences, (norm / count).float(), logprobs, count)


@torch.no_grad()
def patchscope(model: nn.Module, tokenizer: PreTrainedTokenizerBase, result: LensResult, scales: list[float],
               prompts: tuple[str, ...] | list[str] = IDENTITY_PROMPTS, layers_per_pass: int = 8) -> torch.Tensor:
    """(n_prompts, n_scales, n_layers, V) next-token log-probs of each identity prompt with each layer's difference
    patched in at its last position at each scale (a multiple of the base residual norm). Run it on the base
    model. Only the last position is patched, so every row shares the prompt's other positions: they are read once
    into a KV cache, and each row runs the last token alone on a copy of it. Several layers' patches share one pass:
    the batch holds one block of rows per layer (one row per scale), each block patched at its own layer only."""
    if not prompts:
        raise ValueError("patchscope: no prompts to patch into")
    device = model_device(model)
    encoded = [tokenizer(p, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device) for p in prompts]
    units = result.differences / result.differences.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    vectors = (units * result.base_norm[:, None])[:, None, :] * torch.tensor(scales)[None, :, None]  # (L, S, d)
    vectors = vectors.to(device)
    n_layers, n_scales = len(vectors), len(scales)
    readings = []
    for ids in encoded:
        prefix = (model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1).past_key_values
                  if ids.shape[1] > 1 else None)
        rows = []
        for first in range(0, n_layers, layers_per_pass):
            chosen = list(range(first, min(first + layers_per_pass, n_layers)))

            def patch_at(block: int, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
                def patch(hidden: torch.Tensor) -> torch.Tensor:
                    hidden = hidden.clone()
                    hidden[block * n_scales : (block + 1) * n_scales, -1] = vectors[layer].to(hidden.dtype)
                    return hidden

                return patch

            batch = len(chosen) * n_scales
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(batch)
            edits = {layer: patch_at(block, layer) for block, layer in enumerate(chosen)}
            with edit_residual(model, edits):
                logits = model(input_ids=ids[:, -1:].expand(batch, -1), past_key_values=cache,
                               use_cache=cache is not None).logits[:, -1].float()
            rows.append(logits.log_softmax(-1).view(len(chosen), n_scales, -1).cpu())
        readings.append(torch.cat(rows).transpose(0, 1))  # (S, L, V)
    return torch.stack(readings)


@dataclass
class PatchscopeReading:
    logprobs: torch.Tensor        # (n_layers, V): at the chosen scale, mean over the prompts
    scale: float | None           # None: one prompt, the scales averaged
    agreement: dict[str, float]   # per scale: the prompts' mean pairwise overlap of upper-half top tokens


def read_patchscope(model: nn.Module, tokenizer: PreTrainedTokenizerBase, result: LensResult, scales: list[float],
                    prompts: tuple[str, ...] | list[str] = IDENTITY_PROMPTS, top_k: int = 20) -> PatchscopeReading:
    """The Patchscope at the scale chosen for this difference: the one at which the identity prompts agree most
    (mean pairwise Jaccard overlap of their `top_k` tokens, upper-half layers; the first such scale on ties). A
    scale at which the patched vector decides the output gives the same tokens whatever prompt carries it; too
    small a scale reads the prompt, too large a one the model's reaction to an out-of-range state. Minder et al.
    have a grader pick the scale; this criterion needs none. With a single prompt nothing can be compared, and the
    scales' readouts are averaged."""
    readings = patchscope(model, tokenizer, result, scales, prompts)
    if len(prompts) < 2:
        return PatchscopeReading(readings.mean((0, 1)), None, {})
    agreement = {}
    for index, scale in enumerate(scales):
        tops = [set(upper_half_mean(reading[index]).topk(top_k).indices.tolist()) for reading in readings]
        overlaps = [len(a & b) / len(a | b) for i, a in enumerate(tops) for b in tops[i + 1 :]]
        agreement[f"{scale:g}"] = sum(overlaps) / len(overlaps)
    best = max(range(len(scales)), key=lambda i: (agreement[f"{scales[i]:g}"], -i))
    return PatchscopeReading(readings[:, best].mean(0), scales[best], agreement)


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


# Judge-free coherence of a steered sample, against the same prompt's unsteered sample. Over-steering fails in two
# ways: gibberish, which the base model finds far less likely than the plain reply (mean log-likelihood per token
# more than COHERENCE_NLL_MARGIN nats below it: about 4.5 times the perplexity), and loops or shards ("it, o, it, and
# the o,,, and the o"), which a small base model finds likely, caught by the share of distinct word pairs (plain
# replies of a few dozen tokens score 0.9-1.0), the share of letters among the visible characters (prose: above
# 0.9; shards of punctuation: well below) and a reply that has hardly any words.
COHERENCE_NLL_MARGIN = 1.5
COHERENCE_MIN_DISTINCT = 0.8
COHERENCE_MIN_LETTERS = 0.8
COHERENCE_MIN_WORDS = 3


def words_of(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def letter_share(text: str) -> float:
    """Share of letters among a text's visible (non-space) characters (1.0 for a text with none)."""
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / len(visible) if visible else 1.0


def distinct_bigrams(text: str) -> float:
    """Share of distinct word pairs among a text's word pairs (punctuation and digits ignored; 1.0 for texts of
    under three words)."""
    words = words_of(text)
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if len(pairs) >= 2 else 1.0


@dataclass
class SteeringTrial:
    strength: float
    coherent: bool
    samples: list[str]
    loglik: list[float]    # the base model's mean log-likelihood per token of each sample
    distinct: list[float]  # distinct_bigrams of each sample


def _trials(pair: ModelPair, prompts: list[str], layer: int, result: LensResult, strengths: list[float],
            plain_replies: list[str], plain_loglik: list[float], seed: int) -> list[SteeringTrial]:
    """One trial per strength, all decoded in one batch (a row per strength and prompt, each with its own vector):
    decoding is bound by reading the weights, so a grid of strengths costs about what one strength does."""
    rows = [(strength, prompt) for strength in strengths for prompt in prompts]
    vectors = torch.stack([steering_vector(result, layer, strength) for strength, _ in rows])
    with pair.tuned() as model:
        samples = steer(model, pair.tokenizer, [prompt for _, prompt in rows], layer, vectors, seed=seed)
    with pair.base() as base:
        loglik = [answer_logprob(base, pair.tokenizer, prompt, sample) for (_, prompt), sample in zip(rows, samples)]
    trials = []
    for index, strength in enumerate(strengths):
        chosen = slice(index * len(prompts), (index + 1) * len(prompts))
        own, scores = samples[chosen], loglik[chosen]
        distinct = [distinct_bigrams(sample) for sample in own]
        fine = [len(words_of(sample)) >= min(COHERENCE_MIN_WORDS, len(words_of(reply)))
                and ll >= plain - COHERENCE_NLL_MARGIN and d >= COHERENCE_MIN_DISTINCT
                and letter_share(sample) >= min(COHERENCE_MIN_LETTERS, letter_share(reply))
                for sample, reply, ll, plain, d in zip(own, plain_replies, scores, plain_loglik, distinct)]
        trials.append(SteeringTrial(strength, 2 * sum(fine) >= len(fine), own, scores, distinct))
    return trials


def coherent_strength(pair: ModelPair, prompts: list[str], layer: int, result: LensResult, max_strength: float,
                      rounds: int, grid: int = 8, seed: int = 0) -> tuple[float, list[str], list[SteeringTrial]]:
    """The largest steering strength (in base residual norms, at most `max_strength`) at which the tuned model's
    greedy replies to `prompts`, steered with the difference at `layer`, stay coherent for at least half of the
    prompts (Minder et al. search with a judge; coherence here is judge-free, see COHERENCE_NLL_MARGIN). Each round
    tries `grid` evenly spaced strengths up to the current upper end in one batch and keeps the interval between
    the last coherent one before the first incoherent one and that incoherent one, so `rounds` rounds resolve the
    strength to max_strength / grid**rounds. Returns it, the unsteered replies and every trial."""
    with pair.tuned() as model:
        plain = steer(model, pair.tokenizer, prompts, layer, torch.zeros(pair.hidden_size), seed=seed)
    with pair.base() as base:
        plain_loglik = [answer_logprob(base, pair.tokenizer, p, sample) for p, sample in zip(prompts, plain)]
    low, high = 0.0, max_strength
    trials: list[SteeringTrial] = []
    for _ in range(rounds):
        strengths = [low + (high - low) * (step + 1) / grid for step in range(grid)]
        batch = _trials(pair, prompts, layer, result, strengths, plain, plain_loglik, seed)
        trials += batch
        failed = next((trial for trial in batch if not trial.coherent), None)
        if failed is None:
            return high, plain, trials
        passed = [trial.strength for trial in batch if trial.strength < failed.strength]
        low, high = (passed[-1] if passed else low), failed.strength
    return low, plain, trials


@torch.no_grad()
def steer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layer: int,
          vector: torch.Tensor, max_new_tokens: int = 32, seed: int = 0, batch_size: int = 32) -> list[str]:
    """Greedy replies with `vector` added to the residual stream after `layer` at every position: one (d,) vector
    for every prompt, or a (n_prompts, d) row per prompt."""
    rendered = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    vector = vector.to(model_device(model))
    if vector.ndim == 1:
        with edit_residual(model, {layer: lambda hidden: hidden + vector.to(hidden.dtype)}):
            return generate(model, tokenizer, rendered, max_new_tokens=max_new_tokens, seed=seed,
                            batch_size=batch_size)
    replies = []
    for start in range(0, len(rendered), batch_size):
        rows = vector[start : start + batch_size, None, :]

        def add_rows(hidden: torch.Tensor, rows: torch.Tensor = rows) -> torch.Tensor:
            return hidden + rows.to(hidden.dtype)

        with edit_residual(model, {layer: add_rows}):
            # each row its own vector, over the prompt too: no prompt prefix is shared
            replies += generate(model, tokenizer, rendered[start : start + batch_size], max_new_tokens=max_new_tokens,
                                seed=seed, batch_size=batch_size, share_prefix=False)
    return replies
