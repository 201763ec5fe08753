"""Residual-stream access that works on plain models, PEFT-wrapped models and tensor-or-tuple layer outputs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from mow.workbench.errors import UserError


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT (PeftModel -> LoraModel -> CausalLM) and DDP/DeepSpeed wrappers."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, whose outputs are the residual stream after each layer."""
    inner = unwrap(model)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", inner)
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise UserError(f"cannot find decoder layers in {type(inner).__name__}")
    return layers


def final_norm(model: nn.Module) -> nn.Module:
    inner = unwrap(model)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner.model
    return getattr(decoder, "norm", None) or decoder.final_layernorm


def check_layer(model: nn.Module, layer: int, source: str = "layer") -> int:
    count = len(decoder_layers(model))
    if not -count <= layer < count:
        raise UserError(f"{source}: layer {layer} out of range for a model with {count} layers")
    return layer % count


ResidualEdit = Callable[[torch.Tensor], torch.Tensor]


def _output_hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def edit_residual(model: nn.Module, edits: dict[int, ResidualEdit]) -> Iterator[None]:
    """Replace each chosen layer's output hidden state h by edit(h) while the context is open."""
    layers = decoder_layers(model)
    checked = {check_layer(model, index): edit for index, edit in edits.items()}
    handles = []
    for index, edit in checked.items():
        def hook(_module, _inputs, output, edit=edit):
            hidden = edit(_output_hidden(output))
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handles.append(layers[index].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def logit_lens(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Read residual states of shape (..., d) through the final norm and unembedding: log-probs (..., vocab)."""
    inner = unwrap(model)
    return inner.get_output_embeddings()(final_norm(model)(hidden)).float().log_softmax(-1)


@contextmanager
def capture_residual(model: nn.Module, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record each chosen layer's output hidden state (detached) on every forward while the context is open.

    Hooks on the layers themselves, not `output_hidden_states`: transformers applies the final norm to the last
    entry of `hidden_states`, so that entry is not the residual stream."""
    blocks = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for index in {check_layer(model, layer) for layer in layers}:
        def hook(_module, _inputs, output, index=index):
            captured[index] = _output_hidden(output).detach()

        handles.append(blocks[index].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
