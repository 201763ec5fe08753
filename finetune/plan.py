"""`mow organism build CONFIG --plan`: what a build would need, from the model's config.json alone (no weights).

Parameter counts are exact: the model is built on the meta device (no memory), and the LoRA parameters are counted
on the modules the config's `lora` section adapts. Memory per device and time are estimates, and say so:

- weights: bf16 (2 bytes) on GPUs, fp32 where the config asks for it; 4-bit NF4 with double quantisation stores a
  linear layer's weight in 0.5 bytes plus one 8-bit scale per 64 weights and one fp32 scale per 256 scales
  (bitsandbytes' layout); embeddings and norms stay in bf16;
- LoRA training state: fp32 parameters, gradients and AdamW's two moments: 16 bytes per trainable parameter;
- ZeRO-2 shards gradients and optimizer state over the processes, ZeRO-3 the weights too; ZeRO-3 with offload keeps
  weights and optimizer state in CPU memory and gathers about two layers at a time on the device (accelerate's
  `calculate_maximum_sizes` gives the largest layer);
- activations per micro-batch, bf16: about 34·s·b·h bytes per layer for the saved activations of a transformer
  layer with fused attention (Korthikanti et al. 2022, without the attention-score term that fused kernels do not
  store), or 2·s·b·h per layer plus one layer's 34·s·b·h under gradient checkpointing; plus the fp32 logits of the
  labelled positions (s·b·V·4, an upper bound);
- time: LoRA training costs about 4 FLOPs per model parameter per token (forward, and backward through the frozen
  weights; the adapter's own gradients are negligible), 6 with gradient checkpointing, at a stated share of a
  stated peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import calculate_maximum_sizes
from torch import nn
from transformers import AutoModelForCausalLM

from mow.finetune.config import LaunchSettings, LoraSettings, TrainingSettings
from mow.workbench.config import resolve_layers
from mow.workbench.hooks import decoder_layers, output_embeddings
from mow.workbench.models import read_model_config

GIB = 1024**3
PEAK_TFLOPS = 989.0  # NVIDIA H100 SXM, dense bf16
UTILISATION = 0.4
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
LORA_STATE_BYTES = 16  # fp32 parameter, gradient, and AdamW's two moments
ACTIVATION_BYTES_PER_HIDDEN = 34  # bf16, per token per layer, fused attention (Korthikanti et al. 2022)


@dataclass
class Shape:
    """What the plan needs to know of a model: parameter counts and sizes, from the meta-device model."""

    total_params: int
    linear_params: int  # in the decoder layers' linear layers: what 4-bit quantisation applies to
    lora_params: int
    largest_layer_params: int
    hidden_size: int
    n_layers: int
    vocab_size: int


def _adapted(name: str, module: nn.Module, lora: LoraSettings, layer_of: dict[str, int], layers: set[int] | None,
             head: nn.Module) -> bool:
    if not isinstance(module, nn.Linear) or module is head:
        return False
    if name not in layer_of or (layers is not None and layer_of[name] not in layers):
        return False
    leaf = name.rsplit(".", 1)[-1]
    return lora.target_modules == "all-linear" or leaf in lora.target_modules


def model_shape_for_plan(spec: str, lora: LoraSettings, trust_remote_code: bool = False) -> Shape:
    config = read_model_config(spec, trust_remote_code, require_weights=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    blocks = decoder_layers(model)
    block_index = {id(block): index for index, block in enumerate(blocks)}
    block_prefix = {name: block_index[id(module)] for name, module in model.named_modules()
                    if id(module) in block_index}
    layer_of = {name: index for prefix, index in block_prefix.items()
                for name, _ in model.get_submodule(prefix).named_modules(prefix=prefix)}
    layers = set(resolve_layers(lora.layers, len(blocks), "lora.layers")) if lora.layers is not None else None
    head = output_embeddings(model)
    lora_params = linear_params = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name in layer_of:
            linear_params += module.weight.numel()
        if _adapted(name, module, lora, layer_of, layers, head):
            lora_params += lora.r * (module.in_features + module.out_features)
    _, (largest_bytes, _) = calculate_maximum_sizes(model)
    bytes_per = next(model.parameters()).element_size()
    return Shape(total_params=sum(p.numel() for p in model.parameters()), linear_params=linear_params,
                 lora_params=lora_params, largest_layer_params=largest_bytes // bytes_per,
                 hidden_size=config.hidden_size, n_layers=len(blocks), vocab_size=config.vocab_size)


def weight_bytes(shape: Shape, precision: str, four_bit: bool) -> float:
    per = 4 if precision == "fp32" else 2
    if four_bit:
        return shape.linear_params * NF4_BYTES_PER_WEIGHT + (shape.total_params - shape.linear_params) * 2
    return shape.total_params * per


def activation_bytes(shape: Shape, micro_batch: int, tokens: int, checkpointing: bool) -> float:
    per_layer = ACTIVATION_BYTES_PER_HIDDEN * tokens * micro_batch * shape.hidden_size
    layers = (2 * tokens * micro_batch * shape.hidden_size * shape.n_layers + per_layer if checkpointing
              else per_layer * shape.n_layers)
    return layers + 4 * tokens * micro_batch * shape.vocab_size


def plan(spec: str, lora: LoraSettings, training: TrainingSettings, launch: LaunchSettings, examples: int | None,
         four_bit: bool, trust_remote_code: bool = False) -> dict:
    """The figures `--plan` prints (bytes and counts; `estimate` marks what is not exact)."""
    shape = model_shape_for_plan(spec, lora, trust_remote_code)
    processes = launch.num_processes if launch.distributed else 1
    micro_batch = max(1, training.batch_size // processes)  # chats per process per forward (before grad_accum)
    precision = "fp32" if training.precision == "fp32" else "bf16"
    weights = weight_bytes(shape, precision, four_bit)
    state = shape.lora_params * LORA_STATE_BYTES
    single = activation_bytes(shape, training.batch_size, training.max_length, training.gradient_checkpointing)
    acts = activation_bytes(shape, micro_batch, training.max_length, training.gradient_checkpointing)
    gathered = 2 * shape.largest_layer_params * (4 if precision == "fp32" else 2)
    per_device = {
        "single process": weights + state + single,
        f"DDP x{processes}": weights + state + acts,
        f"ZeRO-2 x{processes}": weights + shape.lora_params * (4 + 12 / processes) + acts,
        f"ZeRO-3 x{processes}": (weights + state) / processes + gathered + acts,
        f"ZeRO-3 + CPU offload x{processes}": gathered + acts,
        "4-bit QLoRA, single process": weight_bytes(shape, precision, True) + state + single,
    }
    flops_per_token = (6 if training.gradient_checkpointing else 4) * shape.total_params
    tokens = None if examples is None else int(examples * training.max_length * training.epochs)
    seconds = None if tokens is None else tokens * flops_per_token / (PEAK_TFLOPS * 1e12 * UTILISATION)
    return {"shape": shape, "per_device": per_device, "weights": weights, "lora_state": state, "activations": acts,
            "micro_batch": micro_batch, "precision": "nf4" if four_bit else precision, "tokens": tokens,
            "seconds": seconds, "flops_per_token": flops_per_token}


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else (
        f"{seconds:.0f} s")


def render(spec: str, figures: dict) -> str:
    shape: Shape = figures["shape"]
    lines = [
        f"plan for {spec} (from its config.json; no weights loaded)",
        f"  parameters: {shape.total_params:,} ({shape.n_layers} layers, width {shape.hidden_size}, vocabulary "
        f"{shape.vocab_size:,}); LoRA trains {shape.lora_params:,} "
        f"({100 * shape.lora_params / shape.total_params:.3f}%)",
        f"  weights {figures['precision']}: {figures['weights'] / GIB:.2f} GiB; LoRA parameters, gradients and AdamW "
        f"state: {figures['lora_state'] / GIB:.3f} GiB; activations per process of a launch, {figures['micro_batch']} "
        f"chat(s) at max_length (estimate): {figures['activations'] / GIB:.2f} GiB",
        "  memory per device (estimates):",
        *[f"    {name:34s} {value / GIB:8.2f} GiB" for name, value in figures["per_device"].items()],
    ]
    if figures["tokens"] is not None:
        lines.append(f"  training tokens (at most, every example at max_length): {figures['tokens']:,}; "
                     f"about {_duration(figures['seconds'])} on one device at {UTILISATION:.0%} of an H100's "
                     f"{PEAK_TFLOPS:.0f} TFLOP/s bf16 peak (estimate: {figures['flops_per_token']:.3g} FLOPs/token)")
    return "\n".join(lines)
