"""The concept-directions file format: `diffing` writes it, `finetune` reads it, a user may bring their own.

`NAME.safetensors` holds one float32 tensor `layer_{L}` of shape (k, d) per layer, each row a unit vector in the raw
residual stream after decoder layer L; `NAME.json` says how they were found:
  {"format": "mow.directions/1", "method": ..., "model": ..., "tuned": ..., "hidden_size": d,
   "layers": {"L": [{"index": i, "label": ..., "score": ...}, ...]}, "details": {...}}

Importing this module imports no torch: configs and tools that only name a directions file stay light. torch and
safetensors' torch half are imported inside the functions that read or write tensors (a lazy import for start-up
time, not to dodge a cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mow.workbench.errors import UserError
from mow.workbench.files import read_json
from mow.workbench.rundir import write_json

if TYPE_CHECKING:
    import torch


FORMAT = "mow.directions/1"


@dataclass
class Directions:
    vectors: dict[int, torch.Tensor]  # layer -> (k, d) unit rows
    info: dict

    def save(self, stem: Path) -> None:
        from safetensors.torch import save_file

        stem.parent.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(f".{stem.name}.safetensors.tmp")
        save_file({f"layer_{layer}": v.float().contiguous() for layer, v in self.vectors.items()}, str(tmp))
        tmp.replace(stem.with_suffix(".safetensors"))
        write_json(stem.with_suffix(".json"), self.info)


def load_directions(path: Path, hidden_size: int | None = None, require_unit: bool = True) -> Directions:
    """Read and check a directions file (either half of the pair may be named); unit rows are enforced unless
    `require_unit` is False (a user's own file, normalised by the reader)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    weights, info_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for needed in (weights, info_path):
        if not needed.is_file():
            raise UserError(f"directions {path}: {needed.name} not found")
    info = read_json(info_path, f"directions {path}: info file")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"directions {path}: cannot read: {str(exc).splitlines()[0]}") from None
    if info.get("format") != FORMAT:
        raise UserError(f"directions {path}: format {info.get('format')!r}, expected {FORMAT!r}")
    vectors = {}
    for key, value in tensors.items():
        if not key.startswith("layer_") or not key[6:].isdigit() or value.ndim != 2:
            raise UserError(f"directions {path}: unexpected tensor {key!r} of shape {tuple(value.shape)}")
        if hidden_size is not None and value.shape[1] != hidden_size:
            raise UserError(f"directions {path}: {key} has width {value.shape[1]}, the model has {hidden_size}")
        if not torch.isfinite(value).all():
            raise UserError(f"directions {path}: {key} holds inf or nan")
        norms = value.norm(dim=1)
        if not norms.min() > 0:
            raise UserError(f"directions {path}: {key} has a zero row (row {int(norms.argmin())})")
        if require_unit and not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise UserError(f"directions {path}: {key} rows are not unit vectors (norms {norms.min():.3f}-"
                            f"{norms.max():.3f})")
        vectors[int(key[6:])] = value.float()
    if not vectors:
        raise UserError(f"directions {path}: no layer_N tensors")
    return Directions(vectors, info)
