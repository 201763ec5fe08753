"""Causal-LM loss computed from the labelled positions only: the fast CPU path's LM head.

TRL's fused LM head scores only labelled positions on Triton devices, but every position elsewhere (CPU included),
and adds entropy on top. With assistant-only loss or padded batches, most positions carry no label, and on a CPU the
vocabulary projection and its log-softmax over them is a large share of a small model's step (about a fifth of the
FLOPs and an eighth of the time for SmolLM2-135M with its 49k vocabulary). This wraps the model's forward, as TRL's
head does, so the loss still goes through the wrapped module's `forward` (DDP's gradient hooks, DeepSpeed's
parameter gathering, PEFT's adapters all see a normal call): `model(..., labelled_loss_labels=labels)` runs the
backbone, keeps the hidden states whose next-token label is not -100, and projects only those through the LM head.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

IGNORE_INDEX = -100


@dataclass
class LabelledLossOutput(ModelOutput):
    """`loss` is the summed negative log-likelihood divided by `num_items_in_batch` (or the labelled count)."""

    loss: torch.Tensor | None = None
    labelled_tokens: torch.Tensor | None = None
    correct_tokens: torch.Tensor | None = None


UNSUPPORTED_HEAD_SCALINGS = ("logits_scaling", "lm_head_multiplier", "output_multiplier")


def supports_labelled_loss(model: PreTrainedModel) -> bool:
    """False for heads that rescale logits in ways this loss does not reproduce (Granite, Falcon-H1, ...)."""
    text_config = model.config.get_text_config()
    return all(getattr(text_config, name, None) is None for name in UNSUPPORTED_HEAD_SCALINGS)


def add_labelled_loss_head(model: PreTrainedModel) -> None:
    """Patch `model.forward` (the causal LM, before or after PEFT wraps it) with the labelled-positions loss.

    Without the `labelled_loss_labels` keyword the forward is the original one, so generation and evaluation are
    unchanged. Idempotent."""
    if getattr(model, "_labelled_loss_head", False):
        return
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, labelled_loss_labels: torch.Tensor | None = None, num_items_in_batch=None, **kwargs):
        if labelled_loss_labels is None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        # The backbone and head are looked up per call: PEFT and DeepSpeed replace modules after patching.
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labelled_loss_labels[:, 1:].to(hidden.device)
        keep = targets != IGNORE_INDEX
        logits = self.get_output_embeddings()(hidden[keep]).float()
        text_config = self.config.get_text_config()
        if getattr(text_config, "logit_scale", None) is not None:
            logits = logits * text_config.logit_scale
        if getattr(text_config, "final_logit_softcapping", None) is not None:
            cap = text_config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        labelled = targets[keep]
        summed = F.cross_entropy(logits, labelled, reduction="sum")
        denominator = keep.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        with torch.no_grad():
            correct = (logits.argmax(-1) == labelled).sum()
        return LabelledLossOutput(loss=summed / denominator, labelled_tokens=keep.sum(), correct_tokens=correct)

    model.forward = types.MethodType(forward, model)
    model._labelled_loss_head = True
