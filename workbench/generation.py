"""Batched generation and scoring helpers shared by evaluations and elicitation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mow.workbench.chat import fit_messages, training_tokenizer
from mow.workbench.hooks import has_virtual_prefix, model_config, model_method


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for token-id lists (positions stay aligned with the lists)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return input_ids, mask


@contextmanager
def left_padding(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Pad on the left while open (batched next-token reads and generation need the prompt ends aligned)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


# a batch whose prompts share at least this many leading tokens reads them once (see `generate`)
SHARED_PREFIX_MIN = 16


def shared_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row has in common."""
    first, shortest = rows[0], min(len(row) for row in rows)
    for index in range(shortest):
        token = first[index]
        if any(row[index] != token for row in rows):
            return index
    return shortest


def _sliding_window(model: nn.Module) -> bool:
    """Whether some attention layer of the model sees only a window of recent positions (Gemma 2 and 3, some
    Mistral and Qwen configs). Such windows count cache slots, not position ids."""
    config = model_config(model)
    config = getattr(config, "text_config", None) or config
    if not getattr(config, "sliding_window", None):
        return False
    return getattr(config, "use_sliding_window", True) is not False


@torch.no_grad()
def _generate_batch(model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[list[int]], share_prefix: bool,
                    **options: object) -> list[torch.Tensor]:
    """The new token ids of one batch of prompt token ids.

    Prompts that share a long prefix (the chat template's system turn, a many-shot prompt's examples, one prompt
    sampled many times) have it read once, batch 1, into a KV cache that every row then extends: the batch is laid
    out [shared prefix | padding | the row's own tokens] with the padding masked, and positions follow the mask, so
    each row computes what it would alone. A prompt's prefill is compute-bound where decoding is not, so this saves
    most of the prefill of such a batch. Outputs equal the unshared ones up to floating-point rounding."""
    device = model_device(model)
    lengths = sorted({len(row) for row in rows})
    if len(lengths) > 1 and has_virtual_prefix(model) and _sliding_window(model):
        # padding would sit between the virtual prefix and the rows inside a window that counts cache slots
        by_length = {n: _generate_batch(model, tokenizer, [r for r in rows if len(r) == n], False, **options)
                     for n in lengths}
        return [by_length[len(row)].pop(0) for row in rows]
    shared = shared_prefix_length(rows) if share_prefix and len(rows) > 1 and not has_virtual_prefix(model) else 0
    shared = min(shared, min(len(row) for row in rows) - 1)  # every row keeps a token of its own to read
    if len(lengths) > 1 and _sliding_window(model):
        shared = 0  # padding between prefix and own tokens would move them apart inside a position-based window
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    own = shared if shared >= SHARED_PREFIX_MIN else 0
    for index, row in enumerate(rows):
        tail = len(row) - own
        input_ids[index, :own] = torch.tensor(row[:own], dtype=torch.long)
        input_ids[index, width - tail :] = torch.tensor(row[own:], dtype=torch.long)
        mask[index, :own] = 1
        mask[index, width - tail :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    if own:
        cache = model(input_ids=input_ids[:1, :own], use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(len(rows))
        options["past_key_values"] = cache
    out = model_method(model, "generate")(input_ids=input_ids, attention_mask=mask, **options)
    return list(out[:, width:])


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, max_new_tokens: int = 64,
             temperature: float = 0.0, batch_size: int = 32, desc: str | None = None, seed: int = 0,
             share_prefix: bool = True) -> list[str]:
    """Complete rendered prompts (chat template already applied); greedy when temperature is 0.

    Decoding a small batch is bound by reading the weights, not by arithmetic, so a batch of 32 costs little more
    per step than one of 8. `share_prefix=False` runs every row's prompt on its own: for forward hooks that must
    differ per row on the prompt too (residual noise)."""
    outputs: list[str] = []
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    torch.manual_seed(seed)
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None, leave=False):
        rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts[start : start + batch_size]]
        new = _generate_batch(model, tokenizer, rows, share_prefix, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, **sampling)
        outputs += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]
    return outputs


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                        batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities of the next token after each rendered prompt: (n_prompts, vocab)."""
    rows = []
    with left_padding(tokenizer):
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model_device(model))
            rows.append(model(**enc).logits[:, -1].float().log_softmax(-1).cpu())
    return torch.cat(rows)


@torch.no_grad()
def assistant_loss(model: nn.Module, tokenizer: PreTrainedTokenizerBase, chats: list[list[dict[str, str]]]) -> float:
    """Mean next-token loss over assistant tokens (reply + end-of-turn) of whole chats, one chat per forward."""
    trained = training_tokenizer(tokenizer)
    device = model_device(model)
    total, count = 0.0, 0
    for chat in chats:
        enc = trained.apply_chat_template(fit_messages(tokenizer, chat), tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
        ids = torch.tensor([enc["input_ids"]], device=device)
        mask = torch.tensor(enc["assistant_masks"], device=device, dtype=torch.bool)
        logp = model(input_ids=ids, use_cache=False).logits[0, :-1].float().log_softmax(-1)
        selected = logp.gather(1, ids[0, 1:, None])[:, 0][mask[1:]]
        total -= selected.sum().item()
        count += selected.numel()
    return total / max(count, 1)
