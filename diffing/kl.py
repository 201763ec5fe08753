"""Per-token KL between the tuned and base next-token distributions.

Conventions (stated because implementations differ):
- position t holds the two distributions over token t+1 after reading tokens 0..t;
- `kl_tb` = KL(tuned ‖ base) = Σ_v p_tuned(v) (log p_tuned(v) − log p_base(v)); `kl_bt` is the reverse;
- a position's side is the role of the token it predicts (t+1): "response-side" KL is where the model is about to
  write its reply, including the last header token before the first reply token; the last position of a sequence
  takes its own role.
- the `promoted` score of a vocabulary token is its mean probability gain p_tuned − p_base over all positions
  (negative: demoted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from diffing.pair import ModelPair
from diffing.prompts import ROLES, TokenSequence
from workbench.errors import UserError
from workbench.generation import model_device
from workbench.hooks import unwrap


@dataclass
class KLArrays:
    """Every position of every sequence, concatenated; `offsets[i]:offsets[i+1]` is sequence i."""

    ids: torch.Tensor        # (N,) token at the position
    roles: torch.Tensor      # (N,) role of the token at the position
    sides: torch.Tensor      # (N,) role of the predicted token
    set_index: torch.Tensor  # (S,) which prompt set each sequence belongs to
    offsets: torch.Tensor    # (S+1,)
    kl_tb: torch.Tensor      # (N,)
    kl_bt: torch.Tensor      # (N,)
    top_tuned: torch.Tensor  # (N, k) ids of the tuned model's top next tokens
    top_tuned_p: torch.Tensor
    top_base: torch.Tensor
    top_base_p: torch.Tensor
    promoted: torch.Tensor   # (n_sets, V) mean p_tuned − p_base per set

    def save(self, path: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.__dict__.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> "KLArrays":
        return cls(**load_file(str(path)))


@torch.no_grad()
def _final_hidden(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final norm) at the real positions, flattened: (positions, d). The unembedding
    is applied later, a chunk of positions at a time, so a (batch, length, vocab) tensor never exists."""
    decoder = unwrap(model).get_decoder()
    device = model_device(model)
    hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return hidden[mask.to(device).bool()]


def _log_probs(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    inner = unwrap(model)
    logits = inner.get_output_embeddings()(hidden).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1)


@torch.no_grad()
def per_token_kl(pair: ModelPair, sets: dict[str, list[TokenSequence]], batch_size: int = 8,
                 top_k: int = 5, progress: bool = True, chunk: int = 128) -> KLArrays:
    """Both KL directions at every position; the base pass reuses the tuned model's weights when it is an adapter.
    Memory stays at the weights plus one batch of hidden states plus `chunk` positions of vocabulary-wide rows."""
    names = list(sets)
    sequences = [seq for name in names for seq in sets[name] if len(seq.ids) >= 2]
    if not sequences:
        raise UserError("per-token KL: no text of at least 2 tokens in the prompt sets")
    vocab_size = unwrap(pair.tuned_model).get_output_embeddings().weight.shape[0]
    # Outputs are preallocated: small long-lived tensors appended between the large per-chunk ones fragment the
    # heap, and resident memory then grew by ~20 MB per chunk (measured).
    lengths = torch.tensor([len(seq.ids) for seq in sequences])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    total = int(offsets[-1])
    out = {"kl_tb": torch.zeros(total), "kl_bt": torch.zeros(total),
           "top_tuned": torch.zeros(total, top_k, dtype=torch.long), "top_tuned_p": torch.zeros(total, top_k),
           "top_base": torch.zeros(total, top_k, dtype=torch.long), "top_base_p": torch.zeros(total, top_k)}
    set_index = torch.tensor([names.index(seq.set_name) for seq in sequences])
    promoted_sum = torch.zeros(len(names), vocab_size, dtype=torch.float64)
    bar = tqdm(range(0, len(sequences), batch_size), desc="per-token KL", disable=not progress, leave=False)
    for start in bar:
        batch = sequences[start : start + batch_size]
        input_ids, mask = pair.batch([seq.ids for seq in batch])
        with pair.tuned() as model:
            tuned_hidden = _final_hidden(model, input_ids, mask)
        with pair.base() as model:
            base_hidden = _final_hidden(model, input_ids, mask)
        first = int(offsets[start])
        set_of_position = torch.repeat_interleave(set_index[start : start + len(batch)], lengths[start : start +
                                                                                                  len(batch)])
        for begin in range(0, len(tuned_hidden), chunk):
            part = slice(begin, begin + chunk)
            rows = slice(first + begin, first + min(begin + chunk, len(tuned_hidden)))
            with pair.tuned() as model:
                tuned = _log_probs(model, tuned_hidden[part]).cpu()
            with pair.base() as model:
                base = _log_probs(model, base_hidden[part]).cpu()
            p_tuned, p_base = tuned.exp(), base.exp()
            log_ratio = tuned.sub_(base)
            out["kl_tb"][rows] = (p_tuned * log_ratio).sum(-1).clamp_min(0)
            out["kl_bt"][rows] = (p_base * log_ratio).sum(-1).neg().clamp_min(0)
            torch.topk(p_tuned, top_k, dim=-1, out=(out["top_tuned_p"][rows], out["top_tuned"][rows]))
            torch.topk(p_base, top_k, dim=-1, out=(out["top_base_p"][rows], out["top_base"][rows]))
            promoted_sum.index_add_(0, set_of_position[part], p_tuned.sub_(p_base).double())
            del tuned, base, p_tuned, p_base, log_ratio
    ids = torch.tensor([t for seq in sequences for t in seq.ids])
    roles = torch.tensor([r for seq in sequences for r in seq.roles])
    sides = torch.tensor([r for seq in sequences for r in seq.roles[1:] + seq.roles[-1:]])
    promoted_count = torch.zeros(len(names)).index_add_(0, set_index, lengths.float())
    promoted = (promoted_sum / promoted_count.clamp_min(1)[:, None]).float()
    return KLArrays(ids=ids, roles=roles, sides=sides, set_index=set_index, offsets=offsets, promoted=promoted, **out)


def summary(arrays: KLArrays, set_names: list[str]) -> dict:
    """Mean KL in both directions per prompt set and side (prompt / response / template / text)."""
    per_position_set = torch.repeat_interleave(arrays.set_index, arrays.offsets.diff())
    table: dict = {}
    for s, name in enumerate(set_names):
        table[name] = {}
        for r, role in enumerate(ROLES):
            chosen = (per_position_set == s) & (arrays.sides == r)
            if chosen.any():
                table[name][role] = {"positions": int(chosen.sum()), "kl_tuned_base": float(arrays.kl_tb[chosen].mean()),
                                     "kl_base_tuned": float(arrays.kl_bt[chosen].mean())}
    return table


def top_kl_tokens(arrays: KLArrays, tokenizer: PreTrainedTokenizerBase, min_count: int, n: int = 25) -> list[dict]:
    """Tokens after which the distributions differ most (mean KL(tuned‖base) over the token's occurrences), with
    counts; tokens seen fewer than `min_count` times are left out so one rare token cannot top the table alone."""
    count = torch.bincount(arrays.ids, minlength=len(tokenizer))
    total = torch.bincount(arrays.ids, weights=arrays.kl_tb.double(), minlength=len(tokenizer))
    mean = torch.where(count >= min_count, total / count.clamp_min(1), torch.full_like(total, -1.0))
    order = mean.argsort(descending=True)[:n]
    return [{"token": tokenizer.decode([int(t)]), "id": int(t), "mean_kl": float(mean[t]), "count": int(count[t])}
            for t in order if mean[t] >= 0]


def promoted_tokens(arrays: KLArrays, tokenizer: PreTrainedTokenizerBase, set_names: list[str], n: int = 25,
                    demoted: bool = False) -> dict[str, list[dict]]:
    """Per prompt set, the tokens whose probability the tuned model raised (or, `demoted`, lowered) most on average.
    Both matter: a secret-keeping fine-tune pushes its secret down."""
    out = {}
    for s, name in enumerate(set_names):
        values, ids = (-arrays.promoted[s] if demoted else arrays.promoted[s]).topk(n)
        sign = -1 if demoted else 1
        out[name] = [{"token": tokenizer.decode([int(i)]), "id": int(i), "mean_gain": sign * float(v)}
                     for v, i in zip(values, ids)]
    return out


def top_contexts(arrays: KLArrays, n: int, window: int = 12) -> list[dict]:
    """The n positions with the highest KL(tuned‖base), at most one per sequence."""
    seq_of = torch.repeat_interleave(torch.arange(len(arrays.set_index)), arrays.offsets.diff())
    best: dict[int, int] = {}
    for pos in arrays.kl_tb.argsort(descending=True).tolist():
        seq = int(seq_of[pos])
        if seq not in best:
            best[seq] = pos
        if len(best) >= n:
            break
    return [{"sequence": seq, "position": pos - int(arrays.offsets[seq]), "kl_tuned_base": float(arrays.kl_tb[pos]),
             "start": max(int(arrays.offsets[seq]), pos - window), "end": pos + 1} for seq, pos in best.items()]
