"""Per-token KL between the tuned and base next-token distributions.

Conventions (stated because implementations differ):
- position t holds the two distributions over token t+1 after reading tokens 0..t;
- `kl_tb` = KL(tuned ‖ base) = Σ_v p_tuned(v) (log p_tuned(v) − log p_base(v)); `kl_bt` is the reverse;
- a position's side is the role of the token it predicts (t+1): "response-side" KL is where the model is about to
  write its reply, including the last header token before the first reply token; the last position of a sequence
  takes its own role.
- the `promoted` score of a vocabulary token is its mean probability gain p_tuned − p_base over all positions
  (negative: demoted);
- `mined` (diff mining, Minder et al.'s toolkit) counts, per prompt set, the positions at which a token is among the
  K largest logit differences tuned − base (the same K tokens as the largest log-probability differences: the two
  differ by one constant per position) and its log-probability did rise; with `mining_candidates` N, only among
  the tuned model's N likeliest tokens at the position. Where `promoted` favours tokens that are already likely,
  `mined` favours tokens the fine-tune raised furthest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mow.diffing.base_side import BaseSideStore
from mow.diffing.pair import ModelPair
from mow.diffing.prompts import ROLES, TokenSequence
from mow.workbench.errors import UserError
from mow.workbench.generation import model_device
from mow.workbench.hooks import embedding_weight, final_hidden_states, input_embeddings, output_embeddings, unwrap


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
    mined: torch.Tensor      # (n_sets, V) positions where the token is among the top-K logit differences

    def save(self, path: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.__dict__.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> KLArrays:
        tensors = load_file(str(path))
        if "mined" not in tensors:  # a diff from before diff mining: nothing was counted
            tensors["mined"] = torch.zeros_like(tensors["promoted"], dtype=torch.long)
        return cls(**tensors)


@torch.no_grad()
def _final_hidden(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final norm) at the real positions, flattened: (positions, d). The unembedding
    is applied later, a chunk of positions at a time, so a (batch, length, vocab) tensor never exists."""
    device = model_device(model)
    hidden = final_hidden_states(model, input_ids=input_ids.to(device), attention_mask=mask.to(device))
    return hidden[mask.to(device).bool()]


class _VocabRows:
    """The three chunk x vocabulary float32 buffers of a KL pass (the tuned model's log-probabilities, the base
    model's, and the tuned model's probabilities; the base model's probabilities overwrite its log-probabilities
    once the log-ratio is taken), allocated once and reused, rather than fresh large tensors per chunk for the
    allocator to place among the long-lived ones."""

    def __init__(self, chunk: int, vocab_size: int):
        self.tuned, self.base, self.p_tuned = (torch.empty(chunk, vocab_size) for _ in range(3))


def _log_probs(model: nn.Module, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities of `hidden` rows written into `out` (a buffer's first rows)."""
    head = output_embeddings(model)
    if type(head) is nn.Linear and head.weight.device == out.device and head.weight.dtype == out.dtype:
        torch.matmul(hidden, head.weight.T, out=out)  # the logits straight into the buffer
        if head.bias is not None:
            out.add_(head.bias)
    else:  # an adapted, quantized, half-precision or GPU head
        out.copy_(head(hidden))
    cap = getattr(unwrap(model).config, "final_logit_softcapping", None)
    if cap:
        out.div_(cap).tanh_().mul_(cap)
    return out.sub_(torch.logsumexp(out, -1, keepdim=True))


def _blocks(lengths: torch.Tensor, set_starts: list[int], batch_size: int, block_positions: int
            ) -> list[list[tuple[int, int]]]:
    """Batches of sequences (start, end), never across a prompt set's start (a set is batched the same whatever
    comes before it, so its base side is reusable bit for bit), grouped into blocks of at most `block_positions`
    positions (at least one batch each)."""
    bounds = [*set_starts, len(lengths)]
    batches = [(start, min(start + batch_size, stop)) for first, stop in zip(bounds, bounds[1:])
               for start in range(first, stop, batch_size)]
    blocks: list[list[tuple[int, int]]] = [[]]
    filled = 0
    for start, end in batches:
        size = int(lengths[start:end].sum())
        if blocks[-1] and filled + size > block_positions:
            blocks.append([])
            filled = 0
        blocks[-1].append((start, end))
        filled += size
    return blocks


class _BaseSide:
    """The base model's final hidden states per sequence: from the store for sets it holds, else computed a batch at
    a time, collected per set and written to the store when the set is complete."""

    def __init__(self, store: BaseSideStore | None, sets: dict[str, list[TokenSequence]], offsets: torch.Tensor,
                 set_starts: list[int], batch_size: int):
        self.store, self.offsets = store, offsets
        bounds = [*set_starts, len(offsets) - 1]
        self.set_of = {}  # sequence index -> set name
        self.held: dict[str, torch.Tensor] = {}
        self.fresh: dict[str, list[torch.Tensor]] = {}
        self.keys: dict[str, str] = {}
        self.ranges = dict(zip(sets, zip(bounds, bounds[1:])))
        for name, (first, stop) in self.ranges.items():
            self.set_of.update(dict.fromkeys(range(first, stop), name))
            if store is None:
                continue
            self.keys[name] = store.key([list(seq.ids) for seq in sets[name]], batch_size)
            hidden = store.load(self.keys[name], int(offsets[stop] - offsets[first]))
            if hidden is not None:
                self.held[name] = hidden
                store.reused.append(name)
            else:
                self.fresh[name] = []

    def cached(self, start: int, end: int) -> bool:
        return all(self.set_of[i] in self.held for i in range(start, end))

    def rows(self, start: int, end: int) -> torch.Tensor:
        name = self.set_of[start]
        base = int(self.offsets[self.ranges[name][0]])
        return self.held[name][int(self.offsets[start]) - base : int(self.offsets[end]) - base]

    def computed(self, start: int, end: int, rows: torch.Tensor) -> None:
        """Keep a computed batch's rows for its set's entry; write the entry once the set's last batch is in."""
        name = self.set_of[start]
        if self.store is None or name not in self.fresh:
            return
        self.fresh[name].append(rows.cpu())
        if end == self.ranges[name][1]:
            self.store.save(self.keys[name], torch.cat(self.fresh.pop(name)))


@torch.no_grad()
def per_token_kl(pair: ModelPair, sets: dict[str, list[TokenSequence]], batch_size: int = 8,
                 top_k: int = 5, progress: bool = True, chunk: int = 64, block_positions: int = 8192,
                 base_store: BaseSideStore | None = None, mining_top_k: int = 20,
                 mining_candidates: int | None = 200) -> KLArrays:
    """Both KL directions at every position.

    The texts go in blocks of about `block_positions` positions: the base model reads a block and keeps only its
    final hidden states (positions x d), then the tuned model reads it and the two distributions are compared. For
    an organism both passes use one copy of the weights, and the tuned pass runs with the adapter merged in
    (`ModelPair.tuned_merged`), so it costs what the base pass does; merging once per block rather than once per
    batch keeps the merges' cost and rounding negligible. Memory stays at the weights, one block of hidden states,
    one batch of activations and a few `chunk` x vocabulary rows (plus, with a store, the base side of the sets
    it holds or is about to hold). A set the store holds skips its base pass (`base_store.reused` names them)."""
    names = list(sets)
    given = [seq for name in names for seq in sets[name] if len(seq.ids) >= 2]
    if not given:
        raise UserError("per-token KL: no text of at least 2 tokens in the prompt sets")
    # Each set is read longest text first, so a batch pads little (on diff_speed's texts at batch 8, padding is 4.7%
    # of the real positions against 15.8% in file order); the arrays are put back in the given order at the end. The
    # reading order depends on the set alone, so a stored base side stays the one a fresh pass computes.
    reading = sorted(range(len(given)), key=lambda i: (names.index(given[i].set_name), -len(given[i].ids)))
    sequences = [given[i] for i in reading]
    kept = {name: [seq for seq in sequences if seq.set_name == name] for name in names}
    sizes = [len(kept[name]) for name in names]
    set_starts = [sum(sizes[:i]) for i in range(len(names)) if sizes[i]]
    vocab_size = embedding_weight(output_embeddings(pair.tuned_model)).shape[0]
    # Outputs are preallocated: small long-lived tensors appended between the large per-chunk ones fragment the
    # heap, and resident memory then grew by ~20 MB per chunk (measured).
    lengths = torch.tensor([len(seq.ids) for seq in sequences])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    total = int(offsets[-1])
    out = {"kl_tb": torch.zeros(total), "kl_bt": torch.zeros(total),
           "top_tuned": torch.zeros(total, top_k, dtype=torch.long), "top_tuned_p": torch.zeros(total, top_k),
           "top_base": torch.zeros(total, top_k, dtype=torch.long), "top_base_p": torch.zeros(total, top_k)}
    set_index = torch.tensor([names.index(seq.set_name) for seq in sequences])
    set_of_position = torch.repeat_interleave(set_index, lengths)
    promoted_sum = torch.zeros(len(names), vocab_size, dtype=torch.float64)
    mined = torch.zeros(len(names), vocab_size, dtype=torch.long)
    blocks = _blocks(lengths, set_starts, batch_size, block_positions)
    base_side = _BaseSide(base_store, {name: kept[name] for name in names if kept[name]}, offsets, set_starts,
                          batch_size)
    buffers = _VocabRows(chunk, vocab_size)
    bar = tqdm(total=len(sequences), desc="per-token KL", disable=not progress, leave=False)
    for block in blocks:
        stored = {(start, end): base_side.rows(start, end) for start, end in block if base_side.cached(start, end)}
        if len(stored) < len(block):
            with pair.base() as model:
                for start, end in block:
                    if (start, end) not in stored:
                        hidden = _final_hidden(model, *pair.batch([seq.ids for seq in sequences[start:end]]))
                        base_side.computed(start, end, hidden)
                        stored[start, end] = hidden
        base_hidden = [stored.pop(batch) for batch in block]
        with pair.tuned_merged() as model:
            for (start, end), base_rows in zip(block, base_hidden):
                # The batch is built again rather than kept from the base pass: a block's input tensors held
                # between the chunk rows fragment the heap (peak +180 MiB, measured).
                tuned_rows = _final_hidden(model, *pair.batch([seq.ids for seq in sequences[start:end]]))
                first = int(offsets[start])
                for begin in range(0, len(tuned_rows), chunk):
                    n = min(chunk, len(tuned_rows) - begin)
                    rows = slice(first + begin, first + begin + n)
                    _log_probs(model, tuned_rows[begin : begin + n], buffers.tuned[:n])
                    with pair.base_head() as base_model:
                        _log_probs(base_model, base_rows[begin : begin + n].to(tuned_rows.device), buffers.base[:n])
                    _compare(buffers, n, rows, set_of_position[rows], out, promoted_sum, top_k, mined,
                             mining_top_k, mining_candidates)
                bar.update(end - start)
        del base_hidden
    bar.close()
    read_at = torch.argsort(torch.tensor(reading))  # where each given sequence was read
    positions = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in read_at.tolist()])
    out = {key: values[positions] for key, values in out.items()}
    sequences = given
    lengths = lengths[read_at]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = torch.tensor([t for seq in sequences for t in seq.ids])
    roles = torch.tensor([r for seq in sequences for r in seq.roles])
    sides = torch.tensor([r for seq in sequences for r in seq.roles[1:] + seq.roles[-1:]])
    promoted_count = torch.zeros(len(names)).index_add_(0, set_index, lengths.float())
    promoted = (promoted_sum / promoted_count.clamp_min(1)[:, None]).float()
    return KLArrays(ids=ids, roles=roles, sides=sides, set_index=set_index, offsets=offsets, promoted=promoted,
                    mined=mined, **out)


def _compare(buffers: _VocabRows, n: int, rows: slice, sets_of_rows: torch.Tensor, out: dict[str, torch.Tensor],
             promoted_sum: torch.Tensor, top_k: int, mined: torch.Tensor, mining_top_k: int,
             mining_candidates: int | None) -> None:
    """KL both ways, top tokens, the promoted sums and the diff-mining counts for the first `n` rows of the
    log-probability buffers, written into `out`, `promoted_sum` and `mined`; everything happens in the three
    buffers (the products are reduced by einsum, never materialised)."""
    tuned, base = buffers.tuned[:n], buffers.base[:n]
    p_tuned = torch.exp(tuned, out=buffers.p_tuned[:n])
    log_ratio = tuned.sub_(base)
    p_base = base.exp_()  # the base log-probabilities are not needed past the log-ratio
    out["kl_tb"][rows] = torch.einsum("nv,nv->n", p_tuned, log_ratio).clamp_min(0)
    out["kl_bt"][rows] = torch.einsum("nv,nv->n", p_base, log_ratio).neg().clamp_min(0)
    if mining_candidates is None:
        raised = log_ratio.topk(mining_top_k, dim=-1, sorted=False)
        raised_ids = raised.indices
    else:  # the top-K among the tuned model's likeliest tokens at the position
        candidates = p_tuned.topk(max(mining_candidates, mining_top_k), dim=-1, sorted=False).indices
        raised = log_ratio.gather(1, candidates).topk(mining_top_k, dim=-1, sorted=False)
        raised_ids = candidates.gather(1, raised.indices)
    raised_ids = raised_ids.masked_fill(raised.values <= 0, mined.shape[1])  # a past-the-vocabulary id: not raised
    torch.topk(p_tuned, top_k, dim=-1, out=(out["top_tuned_p"][rows], out["top_tuned"][rows]))
    torch.topk(p_base, top_k, dim=-1, out=(out["top_base_p"][rows], out["top_base"][rows]))
    gain = p_tuned.sub_(p_base)
    set_ids, counts = torch.unique_consecutive(sets_of_rows, return_counts=True)
    start = 0
    for set_id, count in zip(set_ids.tolist(), counts.tolist()):
        promoted_sum[set_id] += gain[start : start + count].sum(0, dtype=torch.float64)
        mined[set_id] += torch.bincount(raised_ids[start : start + count].flatten(),
                                        minlength=mined.shape[1] + 1)[:-1]
        start += count


def summary(arrays: KLArrays, set_names: list[str]) -> dict:
    """Mean KL in both directions per prompt set and side (prompt / response / template / text)."""
    per_position_set = torch.repeat_interleave(arrays.set_index, arrays.offsets.diff())
    table: dict = {}
    for s, name in enumerate(set_names):
        table[name] = {}
        for r, role in enumerate(ROLES):
            chosen = (per_position_set == s) & (arrays.sides == r)
            if chosen.any():
                table[name][role] = {"positions": int(chosen.sum()),
                                     "kl_tuned_base": float(arrays.kl_tb[chosen].mean()),
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


def average_linkage(vectors: torch.Tensor, n_groups: int) -> list[int]:
    """Group rows by cosine similarity: agglomerative clustering with average linkage, merging the two closest
    groups until `n_groups` remain. Returns a group label per row (0 = the group of the first row). Written here
    because it is a dozen lines over at most a few dozen rows, not worth a clustering dependency."""
    unit = vectors.double() / vectors.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.T
    groups = [[i] for i in range(len(vectors))]
    while len(groups) > max(n_groups, 1):
        best, pair = -math.inf, (0, 1)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                linkage = float(similarity[groups[a]][:, groups[b]].mean())
                if linkage > best:
                    best, pair = linkage, (a, b)
        a, b = pair
        groups[a] += groups.pop(b)
    labels = [0] * len(vectors)
    for label, members in enumerate(sorted(groups, key=min)):
        for row in members:
            labels[row] = label
    return labels


def mined_topics(arrays: KLArrays, tokenizer: PreTrainedTokenizerBase, model: nn.Module, set_names: list[str],
                 n_tokens: int, n_topics: int) -> dict[str, list[dict]]:
    """Diff mining per prompt set: the `n_tokens` tokens most often among the top-K logit differences, grouped into
    at most `n_topics` topics by the cosine similarity of the tuned model's input embeddings of the tokens (tokens
    of one subject sit close there, and no judge is needed). Topics are listed by their summed count."""
    embeddings = embedding_weight(input_embeddings(model)).detach().float().cpu()
    out: dict[str, list[dict]] = {}
    for s, name in enumerate(set_names):
        counts = arrays.mined[s]
        chosen = [int(t) for t in counts.argsort(descending=True)[:n_tokens] if counts[t] > 0]
        if not chosen:
            out[name] = []
            continue
        labels = average_linkage(embeddings[chosen], min(n_topics, len(chosen)))
        topics: dict[int, list[int]] = {}
        for token, label in zip(chosen, labels):
            topics.setdefault(label, []).append(token)
        listed: list[dict[str, Any]] = [
            {"tokens": [{"token": tokenizer.decode([t]), "id": t, "count": int(counts[t])} for t in members],
             "count": sum(int(counts[t]) for t in members)} for members in topics.values()]
        out[name] = sorted(listed, key=lambda topic: -topic["count"])
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
