"""Batched generation and scoring helpers shared by evaluations and elicitation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mow.workbench.chat import fit_messages, training_tokenizer
from mow.workbench.hooks import model_method


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


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, max_new_tokens: int = 64,
             temperature: float = 0.0, batch_size: int = 16, desc: str | None = None, seed: int = 0) -> list[str]:
    """Complete rendered prompts (chat template already applied); greedy when temperature is 0."""
    outputs: list[str] = []
    sampling = dict(do_sample=True, temperature=temperature, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    torch.manual_seed(seed)
    with left_padding(tokenizer):
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None, leave=False):
            batch = prompts[start : start + batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model_device(model))
            out = model_method(model, "generate")(**enc, max_new_tokens=max_new_tokens,
                                                  pad_token_id=tokenizer.pad_token_id, **sampling)
            for ids in out[:, enc["input_ids"].shape[1] :]:
                outputs.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
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
