"""The base model's side of per-token KL, kept between diffs: researchers diff many organisms of one base on the same
prompt sets, and the base model's final hidden states on a set do not depend on the organism.

An entry is one prompt set's final hidden states (positions x d, the base model's compute dtype, on the CPU), keyed by
the base model's identity, the set's token ids and the batch size they were read at. The identity is a hash of the base
weights' shapes, dtypes and a strided sample of their values (every weight tensor, about 4,096 values each: a changed
checkpoint changes it, and it costs milliseconds where hashing every weight of an 8B model would take a minute), plus
the device type, since a GPU and a CPU round differently. An organism's base (its adapter off) and the same model loaded
as `--base` share entries. Entries live under `$MOW_CACHE_DIR/base-side/` (default `~/.cache/mow/base-side/`); deleting
the folder is always safe. A set whose texts depend on the organism (its replies) gets an entry that only the same texts
reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mow.workbench.specs import cache_root

SAMPLES_PER_TENSOR = 4096
ADAPTER_MARKERS = ("lora_", "modules_to_save")
WRAPPER_PARTS = ("base_model.model.", ".base_layer")


def default_root() -> Path:
    return cache_root() / "base-side"


def base_identity(model: nn.Module, skip: tuple[str, ...] = ADAPTER_MARKERS) -> str:
    """A hash of the weights `model` computes with when its adapter is off (adapter tensors are skipped; PEFT's
    wrapper names are stripped so a bare base model hashes the same)."""
    digest = hashlib.sha256()
    device = "cpu"
    entries = []
    for name, tensor in model.state_dict().items():
        if any(marker in name for marker in skip):
            continue
        for part in WRAPPER_PARTS:
            name = name.replace(part, "")
        entries.append((name, tensor))
    for name, tensor in sorted(entries, key=lambda entry: entry[0]):
        device = tensor.device.type
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::stride].float().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(sample.numpy().tobytes())
    digest.update(device.encode())
    return digest.hexdigest()


class BaseSideStore:
    """Final hidden states of the base model per prompt set, on disk, for one base identity."""

    def __init__(self, identity: str, root: Path | None = None):
        self.identity = identity
        self.root = Path(root) if root is not None else default_root()
        self.reused: list[str] = []  # names of the sets whose entry a KL pass used

    def key(self, sequences: list[list[int]], batch_size: int) -> str:
        """The entry of a set's token ids read `batch_size` texts at a time. Kernels need not be batch-invariant (GPU
        libraries pick algorithms by matrix shape), so a text's hidden states can round differently in a batch of
        another size; an entry is only reused where it is what a fresh pass would compute, bit for bit. (On this
        project's CPU runs they came out the same at batch sizes 1, 2, 4 and 8.)"""
        digest = hashlib.sha256(self.identity.encode())
        digest.update(f"batch {batch_size}\n".encode())
        for ids in sequences:
            digest.update(json.dumps(ids).encode())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str, positions: int) -> torch.Tensor | None:
        """The entry's hidden states, or None when there is none (or it is unreadable or of another size: a
        half-written or foreign file is ignored, and overwritten by the next save)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            hidden = load_file(str(path))["hidden"]
        except (SafetensorError, OSError, KeyError):
            return None
        return hidden if hidden.shape[0] == positions else None

    def save(self, key: str, hidden: torch.Tensor) -> None:
        """Write an entry atomically; a cache that cannot be written (read-only or full disk) is skipped."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".entry-", suffix=".safetensors", dir=self.root)
        except OSError:
            return
        os.close(fd)
        try:
            save_file({"hidden": hidden.detach().contiguous().cpu()}, tmp, metadata={"identity": self.identity})
            os.replace(tmp, self._path(key))
        except OSError:
            Path(tmp).unlink(missing_ok=True)
