"""Residual-stream helpers find the decoder layers through PEFT wrapping and handle tensor-or-tuple outputs."""

import pytest
import torch

from mow.finetune.config import LoraSettings
from mow.finetune.lora import attach_lora
from mow.workbench.errors import UserError
from mow.workbench.hooks import decoder_layers, edit_residual, logit_lens
from mow.workbench.models import load_model

TINY = "tiny:smollm2-135m"


def test_layers_are_found_through_peft():
    base = load_model(TINY)
    wrapped = attach_lora(load_model(TINY), LoraSettings(r=2, alpha=4), seed=0)
    assert len(decoder_layers(base)) == len(decoder_layers(wrapped)) == 4


def test_identity_edit_equals_no_hook_and_zero_edit_changes_output():
    model = load_model(TINY).eval()
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with edit_residual(model, {1: lambda h: h}):
            same = model(input_ids=ids).logits
        with edit_residual(model, {-1: torch.zeros_like}):
            zeroed = model(input_ids=ids, output_hidden_states=True)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    torch.testing.assert_close(after, plain, rtol=0, atol=0)  # hooks are gone after the block
    assert not torch.allclose(zeroed.logits, plain)


def test_edit_sees_the_hidden_tensor_once_per_forward():
    model = load_model(TINY)
    calls = []

    def edit(h):
        calls.append(tuple(h.shape))
        return h * 2

    with edit_residual(model, {0: edit}):
        model(input_ids=torch.tensor([[1, 5, 6]]))
    assert calls == [(1, 3, 64)]


def test_layer_out_of_range_registers_nothing():
    model = load_model(TINY)
    with pytest.raises(UserError, match="layer 9 out of range"):
        with edit_residual(model, {0: lambda h: h, 9: lambda h: h}):
            pass
    assert not any(layer._forward_hooks for layer in decoder_layers(model))


def test_logit_lens_of_last_layer_matches_model_logits():
    model = load_model(TINY).eval()
    ids = torch.tensor([[1, 7, 8, 9]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        lens = logit_lens(model, _pre_norm_last(model, ids))
    torch.testing.assert_close(lens, out.logits.float().log_softmax(-1), rtol=1e-5, atol=1e-5)


def _pre_norm_last(model, ids):
    captured = {}
    layer = decoder_layers(model)[-1]
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("h", o[0] if isinstance(o, tuple) else o))
    model(input_ids=ids)
    handle.remove()
    return captured["h"]
