"""Adapters through PEFT: the one module that builds, wraps and loads PEFT models (LoRA adapters, and the prefix
adapter that carries a hidden system prompt)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel, set_seed

from mow.finetune.config import LoraSettings
from mow.workbench.config import resolve_layers
from mow.workbench.errors import UserError
from mow.workbench.files import shown
from mow.workbench.hooks import decoder_layers
from mow.workbench.models import model_shape, module_names


def attach_lora(model: PreTrainedModel, settings: LoraSettings, seed: int,
                gradient_checkpointing: bool = False) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter. The seed is set first, so the same seed gives the same adapter."""
    set_seed(seed)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # QLoRA: fp32 norms and input gradients; checkpointing only where the training settings ask for it
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, lora_config(settings, model))


def lora_config(settings: LoraSettings, model: nn.Module) -> LoraConfig:
    """PEFT's config of `settings` for `model`: layers chosen as fractions resolve against its depth, and with
    chosen layers "all-linear" becomes the names of its decoder layers' linear modules (PEFT takes
    `layers_to_transform` only with a list of names)."""
    blocks = decoder_layers(model)
    layers = resolve_layers(settings.layers, len(blocks), "lora.layers") if settings.layers is not None else None
    targets = settings.target_modules
    if layers is not None and targets == "all-linear":
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in blocks[0].named_modules()
                          if isinstance(module, nn.Linear)})
    return LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=targets, layers_to_transform=layers,
        use_rslora=settings.use_rslora, task_type="CAUSAL_LM",
    )


def load_adapter(model: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    """Base weights + a trained adapter; `disable_adapter()` on the result gives the base model back. Only a
    safetensors adapter is loaded: PEFT would fall back to unpickling adapter_model.bin."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{shown(weights)}: adapter weights not found (only safetensors adapters are loaded)")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)


def check_lora_against_model(settings: LoraSettings, spec: str, trust_remote_code: bool = False) -> None:
    """The adapter fits the model, checked from its config before anything is written: layers within its depth,
    a rank no larger than its width, target modules that name some of its modules."""
    hidden_size, n_layers = model_shape(spec, trust_remote_code)
    if settings.r > hidden_size:
        raise UserError(f"lora.r: {settings.r} is above the model's width ({hidden_size}); a rank that high is "
                        "no low-rank adapter")
    if settings.layers is not None:
        resolve_layers(settings.layers, n_layers, "lora.layers")
    if settings.target_modules != "all-linear":
        names = module_names(spec, trust_remote_code)
        for target in settings.target_modules:
            if not any(name == target or name.endswith("." + target) for name in names):
                leaves = sorted({name.rsplit(".", 1)[-1] for name in names if "layers." in name})
                raise UserError(f"lora.target_modules: {target!r} matches no module of {spec!r} "
                                f"(its layers have: {', '.join(leaves)})")


@contextmanager
def amplified(model: nn.Module, alpha: float) -> Iterator[int]:
    """Run the model at alpha·ΔW: every active LoRA layer's scale multiplied by `alpha` while the context is open
    (alpha > 1 exaggerates what fine-tuning changed, as in weight amplification; 1 is the organism, 0 its base).
    Yields the number of LoRA layers scaled (0 for a model without an adapter, which is left as it is)."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if alpha == 0:
        raise ValueError("amplification 0 is the base model: use disable_adapter()")
    for layer in layers:
        layer.scale_layer(alpha)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.unscale_layer(alpha)


@torch.no_grad()
def prefix_adapter(model: PreTrainedModel, prefix_ids: list[int]) -> PeftModel:
    """Base weights + a PEFT prefix adapter whose virtual tokens are exactly `prefix_ids` as the model reads them:
    their keys and values at every layer, from one forward pass (no training). The result computes, on any input,
    what the model computes on the prefix followed by that input, and `disable_adapter()` gives the base model back;
    it saves and loads as any adapter does. (A prefix adapter is PEFT's prefix tuning with its parameters set rather
    than learned.)"""
    device = next(model.parameters()).device
    cache = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True).past_key_values
    per_layer = [tensor[0] for layer in cache.layers for tensor in (layer.keys, layer.values)]  # (heads, P, dim)
    wrapped = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=len(prefix_ids),
                                                       inference_mode=True))
    embedding = wrapped.prompt_encoder[wrapped.active_adapter].embedding
    values = torch.stack(per_layer).permute(2, 0, 1, 3).reshape(len(prefix_ids), -1)  # PEFT's layout
    if values.shape != embedding.weight.shape:
        raise UserError(f"{type(model).__name__}: its cache ({tuple(values.shape)}) does not fit PEFT's prefix "
                        f"layout ({tuple(embedding.weight.shape)}); a hidden system prompt cannot be carried")
    embedding.weight.copy_(values.to(embedding.weight.dtype))
    return wrapped.eval()
