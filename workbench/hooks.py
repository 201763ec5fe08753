"""Residual-stream access that works on plain models, PEFT-wrapped models and tensor-or-tuple layer outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig

from mow.workbench.config import resolve_layer
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


def model_method(model: nn.Module, name: str) -> Callable[..., Any]:
    """`model.<name>`, a method that the model's class adds to nn.Module (generate, disable_adapter, get_decoder, ...).

    nn.Module's `__getattr__` types every attribute the class does not declare as Tensor | Module, which cannot be
    called; transformers and peft are read as Any, so what such a method returns is Any."""
    method = getattr(model, name)
    if not callable(method):
        raise TypeError(f"{type(model).__name__}.{name} is not a method")
    return method


def has_virtual_prefix(model: nn.Module) -> bool:
    """A PEFT prompt-learning model (the prefix adapter of a hidden system prompt): it puts its own cache before
    every input, so no other prefix cache can be passed in beside it, and no merge makes it one checkpoint."""
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def _returned_module(model: nn.Module, accessor: str) -> nn.Module:
    """`model.<accessor>()` (get_decoder, get_output_embeddings, ...), checked to be a module."""
    module = model_method(model, accessor)()
    if not isinstance(module, nn.Module):
        raise UserError(f"{type(model).__name__}.{accessor}() gives {type(module).__name__}, not a module")
    return module


def model_config(model: nn.Module) -> PreTrainedConfig:
    """The config of the transformers model under any wrapper."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if config is None:
        raise UserError(f"{type(inner).__name__} has no config")
    return config


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings, blocks, final norm; no output head) of the transformers model."""
    inner = unwrap(model)
    if hasattr(inner, "get_decoder"):
        return _returned_module(inner, "get_decoder")
    stack = getattr(inner, "model", inner)
    if not isinstance(stack, nn.Module):
        raise UserError(f"cannot find the decoder in {type(inner).__name__}")
    return stack


def output_embeddings(model: nn.Module) -> nn.Module:
    """The output head (unembedding) of the transformers model under any wrapper."""
    return _returned_module(unwrap(model), "get_output_embeddings")


def input_embeddings(model: nn.Module) -> nn.Module:
    """The input embedding of the transformers model under any wrapper."""
    return _returned_module(unwrap(model), "get_input_embeddings")


def embedding_weight(module: nn.Module) -> torch.Tensor:
    """The weight matrix of an input embedding or output head: (vocab, d)."""
    matrix = module.weight
    if not isinstance(matrix, torch.Tensor):
        raise UserError(f"{type(module).__name__}.weight is not a tensor")
    return matrix


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, whose outputs are the residual stream after each layer."""
    stack = decoder(model)
    layers = getattr(stack, "layers", None) or getattr(stack, "h", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"cannot find decoder layers in {type(unwrap(model)).__name__}")
    return layers


def final_norm(model: nn.Module) -> nn.Module:
    stack = decoder(model)
    norm = getattr(stack, "norm", None) or getattr(stack, "final_layernorm", None)
    if not isinstance(norm, nn.Module):
        raise UserError(f"cannot find the final norm in {type(unwrap(model)).__name__}")
    return norm


def check_layer(model: nn.Module, layer: int | float, source: str = "layer") -> int:
    """The absolute index of a layer choice (an index, or a fraction of the depth) in `model`."""
    return resolve_layer(layer, len(decoder_layers(model)), source)


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
    """Read residual states of shape (..., d) through the final norm and unembedding, as the model's own head does
    (with its logit soft-cap, where its config has one, as Gemma 2's does): log-probs (..., vocab)."""
    logits = output_embeddings(model)(final_norm(model)(hidden)).float()
    cap = getattr(model_config(model), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1)


class _ForwardDone(Exception):
    """Raised by a capturing hook to end the forward pass once the deepest module it reads has run."""


def _outputs_until(model: nn.Module, modules: dict[Any, nn.Module], last: Any, inputs: dict) -> dict:
    """The output of each of `modules` for one forward pass of the whole model (so wrappers such as a prefix
    adapter take part) that ends once `last` has run."""
    captured: dict = {}
    handles = []
    for key, module in modules.items():
        def hook(_module, _inputs, output, key=key):
            captured[key] = _output_hidden(output).detach()
            if key == last:
                raise _ForwardDone

        handles.append(module.register_forward_hook(hook))
    try:
        model(**inputs, use_cache=False)
    except _ForwardDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


@torch.no_grad()
def residual_states(model: nn.Module, layers: list[int], **inputs: Any) -> dict[int, torch.Tensor]:
    """Each chosen layer's output hidden state for one forward pass of `inputs`, which stops after the deepest
    chosen layer: the layers above it and the output head (a vocabulary-wide matmul per position) never run.
    Reading a middle layer this way costs about half a forward; reading every layer saves the head."""
    blocks = decoder_layers(model)
    chosen = {check_layer(model, layer) for layer in layers}
    return _outputs_until(model, {index: blocks[index] for index in chosen}, max(chosen), inputs)


@torch.no_grad()
def final_hidden_states(model: nn.Module, **inputs: Any) -> torch.Tensor:
    """The last hidden states (after the final norm) of one forward pass of `inputs`, without the output head:
    what the head would unembed. Through the whole model, so that a wrapper's additions (a prefix adapter's cache)
    count, which calling the decoder stack alone would skip."""
    return _outputs_until(model, {"norm": final_norm(model)}, "norm", inputs)["norm"]


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
