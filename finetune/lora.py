"""LoRA adapters through PEFT: the one module that builds, wraps and loads PEFT models."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel, set_seed

from mow.finetune.config import LoraSettings


def attach_lora(model: PreTrainedModel, settings: LoraSettings, seed: int,
                gradient_checkpointing: bool = False) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter. The seed is set first, so the same seed gives the same adapter."""
    set_seed(seed)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # QLoRA: fp32 norms and input gradients; checkpointing only where the training settings ask for it
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, lora_config(settings))


def lora_config(settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, layers_to_transform=settings.layers,
        use_rslora=settings.use_rslora, task_type="CAUSAL_LM",
    )


def load_adapter(model: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    """Base weights + a trained adapter; `disable_adapter()` on the result gives the base model back."""
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
