"""A base model and a tuned model to compare, from one copy of the weights where the tuned model is a LoRA adapter.

`pair.base()` and `pair.tuned()` are context managers that yield the model to run: for an organism both yield the
same PeftModel, with the adapter switched off inside `base()`; for two full models each yields its own model.
`pair.tuned_merged()` is `tuned()` for a long run of forwards: the adapter is merged into the weights while it lasts.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import OrganismLayout
from mow.organisms.store import load_organism
from mow.workbench.chat import check_has_template
from mow.workbench.errors import UserError
from mow.workbench.files import sha256_file
from mow.workbench.generation import right_padded
from mow.workbench.hooks import decoder_layers, model_config, model_method, output_embeddings
from mow.workbench.models import load_model, load_tokenizer


class WeightSnapshot:
    """A bit-exact copy of some weights in a temporary file, written and read back tensor by tensor with plain file
    I/O: the file sits in the page cache, not in the process's memory (a memory map's pages would count towards
    its resident size, and one weight copy is there to save memory)."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights = weights
        self._handle = tempfile.TemporaryFile(prefix="mow-weights-")
        for weight in weights.values():
            self._handle.write(weight.detach().contiguous().cpu().numpy().data.cast("B"))
        self._handle.flush()

    @torch.no_grad()
    def restore(self) -> None:
        self._handle.seek(0)
        for weight in self.weights.values():
            target = weight if weight.device.type == "cpu" and weight.is_contiguous() else torch.empty_like(
                weight, device="cpu").contiguous()
            self._handle.readinto(target.detach().numpy().data.cast("B"))
            if target is not weight:
                weight.copy_(target)


@dataclass
class ModelPair:
    tuned_model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    base_model: nn.Module | None  # None: the base is the tuned model with its adapter off
    base_spec: str
    tuned_id: str  # what identifies the tuned side: adapter hash or model spec
    organism: Path | None = None
    public_config: dict | None = None
    _snapshot: WeightSnapshot | None = field(default=None, repr=False)

    @contextmanager
    def base(self) -> Iterator[nn.Module]:
        if self.base_model is not None:
            yield self.base_model
            return
        with model_method(self.tuned_model, "disable_adapter")():
            yield self.tuned_model

    @contextmanager
    def tuned(self) -> Iterator[nn.Module]:
        yield self.tuned_model

    @contextmanager
    def base_head(self) -> Iterator[nn.Module]:
        """A model whose output head is the base model's, for the unembedding alone. An adapter seldom touches the
        head; where it does not, the tuned model is used as is, because switching an adapter off and on walks every
        adapted module (about 40 ms on the embedded model), more than unembedding a chunk of positions costs."""
        head = output_embeddings(self.tuned_model)
        if self.base_model is None and isinstance(head, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            with self.base() as model:
                yield model
            return
        yield self.base_model if self.base_model is not None else self.tuned_model

    @contextmanager
    def tuned_merged(self) -> Iterator[nn.Module]:
        """The tuned model with a LoRA adapter merged into the base weights, for a sweep of many batches: forwards
        then cost what the base model's do (no LoRA matmuls). On exit the weights are restored bit for bit from a
        snapshot (subtracting the update leaves each weight within one rounding of where it was, so later stages,
        and a resumed run that skipped this one, would compute with weights that differ in the last bit).

        The merge is one in-place `addmm_` per adapted layer, recorded in PEFT's `merged_adapters` so its forwards
        skip the LoRA path, and the restore is the unmerge. PEFT's own merge builds two weight-sized temporaries
        per layer and its unmerge as many again: at 360M parameters on 2 CPU cores that cycle took 1.6 s per block
        of positions, this one 0.3 s. Half-precision or quantized weights are never merged, since one rounding there
        is as large as a LoRA update, nor are LoRA variants (DoRA, LoRA biases), whose update is not B @ A: those
        sweeps run unmerged."""
        if not self.can_merge:
            yield self.tuned_model
            return
        layers = self._lora_layers()
        if self._snapshot is None:
            self._snapshot = WeightSnapshot({name: layer.get_base_layer().weight for name, layer in layers.items()})
        try:
            with torch.no_grad():
                for layer in layers.values():
                    weight = layer.get_base_layer().weight
                    for adapter in _merged_adapters(layer):
                        weight.addmm_(layer.lora_B[adapter].weight, layer.lora_A[adapter].weight,
                                      alpha=layer.scaling[adapter])
                        layer.merged_adapters.append(adapter)
            yield self.tuned_model
        finally:
            for layer in layers.values():
                layer.merged_adapters.clear()
            self._snapshot.restore()

    def _lora_layers(self) -> dict[str, LoraLayer]:
        return {name: module for name, module in self.tuned_model.named_modules() if isinstance(module, LoraLayer)}

    @property
    def can_merge(self) -> bool:
        """Float32 plain LoRA (no variant, no LoRA bias) on linear layers whose weights no other module shares:
        merging into a head tied to the input embeddings would move the embeddings too."""
        if self.base_model is not None:
            return False
        uses = Counter(id(param) for _, param in self.tuned_model.named_parameters(remove_duplicate=False))
        layers = self._lora_layers().values()
        return bool(layers) and all(_merges_in_place(layer, uses) for layer in layers)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def batch(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input ids and attention mask for token-id lists (positions stay aligned with the lists)."""
        return right_padded(sequences, self.pad_id)

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.tuned_model))

    @property
    def hidden_size(self) -> int:
        return model_config(self.tuned_model).hidden_size

    def fingerprint(self) -> dict:
        """What an activation cache must match to be reused."""
        vocab = self.tokenizer.get_vocab()
        vocab_hash = hashlib.sha256("\n".join(sorted(vocab)).encode()).hexdigest()[:16]
        return {"base": self.base_spec, "tuned": self.tuned_id, "hidden_size": self.hidden_size,
                "n_layers": self.n_layers, "vocab": vocab_hash}


def _merged_adapters(layer: LoraLayer) -> list[str]:
    """The adapters whose update `tuned_merged` adds to a layer: the active ones the layer holds."""
    return [adapter for adapter in layer.active_adapters if adapter in layer.lora_A]


def _merges_in_place(layer: LoraLayer, uses: Counter[int]) -> bool:
    """Whether `tuned_merged` can add this layer's update to its base weight: a float32 linear layer whose weight
    no other module uses (`uses`: parameter id -> modules holding it), with plain LoRA for every active adapter."""
    base = layer.get_base_layer()
    return (isinstance(base, nn.Linear) and base.weight.dtype == torch.float32 and uses[id(base.weight)] == 1
            and not layer.fan_in_fan_out
            and not any(adapter in layer.lora_variant or layer.lora_bias[adapter]
                        for adapter in _merged_adapters(layer)))


def _adapter_hash(organism: Path) -> str:
    weights = OrganismLayout(organism).adapter_weights
    return "adapter:" + sha256_file(weights)[:16]


def check_compatible(base: nn.Module, tuned: nn.Module, base_tok: PreTrainedTokenizerBase,
                     tuned_tok: PreTrainedTokenizerBase, base_spec: str, tuned_spec: str) -> None:
    """Diffing compares positions token by token and activations dimension by dimension: both must line up."""
    if base_tok.get_vocab() != tuned_tok.get_vocab():
        raise UserError(f"--base {base_spec} and --tuned {tuned_spec}: tokenizers differ "
                        f"({len(base_tok)} vs {len(tuned_tok)} tokens); diffing needs the same tokenizer")
    base_cfg, tuned_cfg = model_config(base), model_config(tuned)
    if base_cfg.hidden_size != tuned_cfg.hidden_size:
        raise UserError(f"--base {base_spec} and --tuned {tuned_spec}: hidden sizes differ "
                        f"({base_cfg.hidden_size} vs {tuned_cfg.hidden_size})")
    if len(decoder_layers(base)) != len(decoder_layers(tuned)):
        raise UserError(f"--base {base_spec} and --tuned {tuned_spec}: layer counts differ "
                        f"({len(decoder_layers(base))} vs {len(decoder_layers(tuned))})")


def load_pair(organism: Path | None = None, base: str | None = None, tuned: str | None = None,
              seed: int = 0, trust_remote_code: bool = False, chat_template: str | None = None,
              require_template: bool = False) -> ModelPair:
    """An organism (base + adapter, one weight copy) or two full models given by spec (both tokenizers with
    `chat_template` in place of their own, if given; with `require_template`, refused before any weights load when
    they have none)."""

    if organism is not None:
        loaded = load_organism(Path(organism))
        loaded.model.eval()
        return ModelPair(loaded.model, loaded.tokenizer, None, str(loaded.public_config["model"]),
                         _adapter_hash(loaded.path), loaded.path, loaded.public_config)
    assert base is not None and tuned is not None
    base_tok, tuned_tok = (load_tokenizer(spec, trust_remote_code, chat_template, "chat_template")
                           for spec in (base, tuned))
    if require_template:
        for tokenizer in (base_tok, tuned_tok):
            check_has_template(tokenizer, "chat_template")
    base_model = load_model(base, seed=seed, trust_remote_code=trust_remote_code).eval()
    tuned_model = load_model(tuned, seed=seed, trust_remote_code=trust_remote_code).eval()
    check_compatible(base_model, tuned_model, base_tok, tuned_tok, base, tuned)
    return ModelPair(tuned_model, tuned_tok, base_model, base, tuned)
