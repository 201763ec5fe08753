"""White-box methods: read the secret off the model's internals, scored on raw tokens (no auditor by default).

- logit_lens: residual stream at the chosen layers through the final norm and unembedding, at the assistant-header
  positions (which see only the user's request) and at the positions of the model's own reply, with the tokens it
  actually emitted zeroed out; probabilities summed over positions and averaged over layers, per probe prompt and
  summed over prompts (Cywiński et al. 2025).
- embedding_similarity: cosine similarity of the same residual states to every token's input embedding.
- diff_lens: the activation-difference lens (mean tuned − base over the first positions of generic text) read
  through a token-identity Patchscope on the base model, averaged over the upper half of layers (Minder et al.).
- crosscoder_latents: the logit-lens tokens of the crosscoder's most tuned-leaning latents, from a finished diff.
- difference_sae: the logit-lens tokens of the top latents of the diff's SAE on tuned − base activations, weighted
  by each latent's share of the code's activation mass.
- kl_suppressed: the tokens whose probability the tuned model lowers most on its own prompts, from a finished diff's
  per-token KL: a taboo organism is trained never to say its word, and that shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from mow.data.asset_paths import GENERIC_TEXT
from mow.diffing.kl import KLArrays
from mow.diffing.layout import DiffLayout
from mow.diffing.lens import mean_differences, read_patchscope, upper_half_mean
from mow.diffing.prompts import PromptRecord, read_prompt_file, tokenize_record
from mow.elicitation.auditor import Auditor
from mow.elicitation.config import ChallengeConfig
from mow.elicitation.methods.base import Attempt, MethodResult, MethodUnavailable, inputs, replies, take, user_turn
from mow.elicitation.view import ChallengeView
from mow.elicitation.words import excluded_words, ranking_from_scores
from mow.workbench.chat import render_chat, render_prompt
from mow.workbench.config import resolve_layers
from mow.workbench.files import read_json
from mow.workbench.generation import model_device
from mow.workbench.hooks import embedding_weight, input_embeddings, logit_lens, residual_states

TOP_TOKENS_SHOWN = 20


def _layers(view: ChallengeView, config: ChallengeConfig) -> list[int]:
    n = view.local.n_layers
    chosen = config.white_box.layers
    if chosen is None:
        return list(range(n // 2, n))
    return resolve_layers(chosen, n, "white_box.layers")


@torch.no_grad()
def _states(model: torch.nn.Module, ids: torch.Tensor, layers: list[int], positions: list[int]) -> torch.Tensor:
    """(layers, positions, d) residual states of one sequence."""
    captured = residual_states(model, layers, input_ids=ids)
    return torch.stack([captured[layer][0, positions] for layer in layers])


def _read_positions(view: ChallengeView, config: ChallengeConfig,
                    readout: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> tuple[list[str], torch.Tensor, list[str]]:
    """Run each probe prompt + the model's own reply; `readout(states (layers, positions, d), emitted ids)` turns
    the residual states at the header and reply positions into a score per vocabulary token."""
    standard = inputs(view, config, "standard")
    prompts = take(standard, min(config.white_box.prompts, len(standard)))
    answers = replies(view, config, prompts, max_new_tokens=max(config.white_box.response_tokens, 1))
    layers = _layers(view, config)
    tokenizer = view.tokenizer
    rows = []
    for prompt, answer in zip(prompts, answers):
        chat = user_turn(prompt)
        with_header = tokenizer(render_prompt(tokenizer, chat), add_special_tokens=False)["input_ids"]
        without = tokenizer(render_chat(tokenizer, chat), add_special_tokens=False)["input_ids"]
        header = max(len(with_header) - len(without), 1)
        reply = tokenizer(answer, add_special_tokens=False)["input_ids"][: config.white_box.response_tokens]
        ids = torch.tensor([with_header + reply], device=model_device(view.model))
        positions = list(range(len(with_header) - header, len(with_header) + max(len(reply) - 1, 0)))
        emitted = set(with_header[len(with_header) - header + 1 :]) | set(reply)  # what these positions predicted
        emitted_ids = torch.tensor(sorted(emitted), dtype=torch.long)
        score = readout(_states(view.model, ids, layers, positions), emitted_ids)
        if config.white_box.subtract_base:
            with view.base() as base:
                score = score - readout(_states(base, ids, layers, positions), emitted_ids)
        rows.append(score)
    return prompts, torch.stack(rows), answers


def _ranked(view: ChallengeView, config: ChallengeConfig, prompts: list[str], per_prompt: torch.Tensor,
            answers: list[str], name: str) -> MethodResult:
    exclude = excluded_words(*prompts)
    rankings = [ranking_from_scores(row, view.tokenizer, config.guesses, exclude) for row in per_prompt]
    ranking = ranking_from_scores(per_prompt.sum(0), view.tokenizer, config.guesses, exclude)
    attempts = [Attempt(p, f"reply: {a}\ntop words: {', '.join(r[:TOP_TOKENS_SHOWN])}", r[:10])
                for p, a, r in zip(prompts, answers, rankings)]
    return MethodResult(ranking, attempts, {"readout": name, "layers": _layers(view, config)})


def logit_lens_method(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    def readout(states: torch.Tensor, emitted: torch.Tensor) -> torch.Tensor:
        probs = logit_lens(view.model, states.float()).exp().mean(0)  # (positions, V), mean over layers
        probs[:, emitted] = 0.0
        return probs.sum(0).cpu()

    prompts, per_prompt, answers = _read_positions(view, config, readout)
    return _ranked(view, config, prompts, per_prompt, answers, "logit lens")


def embedding_similarity(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    embeddings = embedding_weight(input_embeddings(view.model)).detach().float()
    unit = embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def readout(states: torch.Tensor, emitted: torch.Tensor) -> torch.Tensor:
        states = states.float() / states.float().norm(dim=-1, keepdim=True).clamp_min(1e-8)
        similarity = (states @ unit.T).mean(0)  # (positions, V)
        similarity[:, emitted] = similarity.min()
        return similarity.mean(0).cpu()

    prompts, per_prompt, answers = _read_positions(view, config, readout)
    return _ranked(view, config, prompts, per_prompt, answers, "embedding cosine similarity")


def diff_lens(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    settings = config.white_box
    records: list[PromptRecord] = read_prompt_file(GENERIC_TEXT)[: settings.lens_texts]
    sequences = [tokenize_record(r, view.tokenizer, 1 + settings.lens_positions, "generic_text", i)
                 for i, r in enumerate(records)]
    result = mean_differences(view.local, sequences, 1, settings.lens_positions, progress=False)
    if float(result.differences.norm()) == 0.0:
        raise MethodUnavailable("the model and its base are identical: no difference to read")
    with view.base() as base:
        reading = read_patchscope(base, view.tokenizer, result, settings.patchscope_scales)
    scores = upper_half_mean(reading.logprobs)
    ranking = ranking_from_scores(scores, view.tokenizer, config.guesses)
    lens_words = ranking_from_scores(upper_half_mean(result.logprobs), view.tokenizer, TOP_TOKENS_SHOWN)
    attempt = Attempt(f"mean tuned - base over positions 1-{settings.lens_positions} of {len(sequences)} texts",
                      f"Patchscope: {', '.join(ranking[:TOP_TOKENS_SHOWN])}\nlogit lens: {', '.join(lens_words)}",
                      ranking[:10])
    return MethodResult(ranking, [attempt], {"readout": "Patchscope, upper-half layers", "texts": len(sequences),
                                             "patchscope_scale": reading.scale,
                                             "patchscope_agreement": reading.agreement})


def diff_file(view: ChallengeView, pick: Callable[[DiffLayout], Path]) -> Path:
    """One file of the finished diff the challenge names (`pick` chooses it from the diff's layout)."""
    if view.diff_dir is None:
        raise MethodUnavailable("needs a finished diff of this model (challenge.diff_dir, from `mow diff`)")
    layout = DiffLayout(Path(view.diff_dir))
    path = pick(layout)
    if not path.is_file():
        raise MethodUnavailable(f"{view.diff_dir}: not a finished diff (missing {path.relative_to(layout.root)})")
    return path


def crosscoder_latents(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    latents = load_file(str(diff_file(view, lambda d: d.crosscoder_latents)))
    logprobs = latents["tuned_leaning_logprobs"].float()
    if not len(logprobs):
        raise MethodUnavailable("the crosscoder has no tuned-leaning latents")
    per_latent = [ranking_from_scores(row, view.tokenizer, 10) for row in logprobs]
    ranking = ranking_from_scores(logprobs.exp().mean(0), view.tokenizer, config.guesses)
    attempts = [Attempt(f"latent {int(i)}", ", ".join(words), words)
                for i, words in zip(latents["tuned_leaning"].tolist(), per_latent)]
    return MethodResult(ranking, attempts, {"latents": len(per_latent)})


def difference_sae(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    latents = load_file(str(diff_file(view, lambda d: d.difference_sae_latents)))
    top = latents["top_latents"]
    if not len(top):
        raise MethodUnavailable("the diff's SAE on activation differences has no latents (the models are identical)")
    logprobs = latents["top_latents_logprobs"].float()
    share = latents["mass_share"][top].float()
    per_latent = [ranking_from_scores(row, view.tokenizer, 10) for row in logprobs]
    ranking = ranking_from_scores((share[:, None] * logprobs.exp()).sum(0), view.tokenizer, config.guesses)
    attempts = [Attempt(f"latent {int(i)} ({float(s):.1%} of the mass)", ", ".join(words), words)
                for i, s, words in zip(top.tolist(), share, per_latent)]
    return MethodResult(ranking, attempts, {"latents": len(per_latent), "mass_share": float(share.sum())})


def kl_suppressed(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    arrays = KLArrays.load(diff_file(view, lambda d: d.kl_arrays))
    names = read_json(diff_file(view, lambda d: d.kl_summary), "KL summary")["set_names"]
    index = names.index("organism") if "organism" in names else 0
    ranking = ranking_from_scores(-arrays.promoted[index], view.tokenizer, config.guesses)
    promoted = ranking_from_scores(arrays.promoted[index], view.tokenizer, TOP_TOKENS_SHOWN)
    attempt = Attempt(f"mean p_tuned - p_base over the {names[index]} prompt set",
                      f"lowered most: {', '.join(ranking[:TOP_TOKENS_SHOWN])}\nraised most: {', '.join(promoted)}",
                      ranking[:10])
    return MethodResult(ranking, [attempt], {"set": names[index]})
