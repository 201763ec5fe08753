"""A locality term for fine-tuning: KL(base || tuned) between next-token distributions on a fixed set of texts, added
to the training loss with a weight.

Knowledge-editing methods keep an edit from spreading to its neighbours this way (ROME's and MEMIT's KL term on
neighbour prompts): training on a few true sentences about the neighbours (cross-entropy on their tokens) fixes one
continuation each, whereas the KL term holds the whole base distribution at every position of every locality text.
For a LoRA model the base distribution comes from the same weights with the adapter switched off, so no second copy
of the model is loaded. Each optimizer step reads one batch of locality texts, chosen from the step number and the
seed, so a run resumed from a checkpoint reads the same batches as one that was never stopped.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from peft import PeftModel
from pydantic import Field, field_validator

from mow.workbench.config import Seed, StrictModel
from mow.workbench.generation import right_padded


class LocalityTerm(StrictModel):
    """The locality texts (token ids, each at most the training max_length) and how strongly they count."""

    sequences: list[list[int]] = Field(min_length=1)
    weight: float = Field(gt=0, description="multiplies the mean per-position KL (nats) added to the loss")
    batch_size: int = Field(4, ge=1, description="locality texts read per optimizer step")
    seed: Seed = 0

    @field_validator("sequences")
    @classmethod
    def _no_short_sequences(cls, sequences: list[list[int]]) -> list[list[int]]:
        short = [i for i, ids in enumerate(sequences) if len(ids) < 2]
        if short:
            raise ValueError(f"locality texts {short[:5]} have fewer than 2 tokens")
        return sequences

    def batch_indices(self, step: int) -> list[int]:
        """The texts step `step` reads: consecutive slices of a seeded shuffle, reshuffled for each pass."""
        per_pass = max(1, len(self.sequences) // self.batch_size)
        order = list(range(len(self.sequences)))
        random.Random(f"{self.seed}:{step // per_pass}").shuffle(order)
        start = (step % per_pass) * self.batch_size
        return order[start:start + self.batch_size]

    def batch(self, step: int, pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Right-padded input ids and attention mask of step `step`'s texts."""
        input_ids, mask = right_padded([self.sequences[i] for i in self.batch_indices(step)], pad_token_id)
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def locality_kl(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the real positions of `batch` of KL(base || tuned) of the next-token distributions, with the base
    read from `model` with its adapter off. Differentiable through the tuned forward only."""
    with torch.no_grad(), model.disable_adapter():
        base = model(**batch).logits.float().log_softmax(-1)
    tuned = model(**batch).logits.float().log_softmax(-1)
    keep = batch["attention_mask"].bool()
    per_position = F.kl_div(tuned[keep], base[keep], log_target=True, reduction="none").sum(-1)
    return per_position.mean()
