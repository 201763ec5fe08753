"""Steering during training: concept ablation (CAFT, Casademunt et al. 2025) and preventative steering.

Ablation replaces the residual stream h after each chosen decoder layer by h − (hQᵀ)Q, where the rows of Q are an
orthonormal basis of the chosen directions, at every position; gradients flow through the projection. Adding
(preventative steering) replaces h by h + s·Σ v over the chosen unit directions v. Either way the hooks sit on the
decoder layers of the unwrapped transformers model (under PEFT, DDP or a DeepSpeed engine), the directions are
plain tensors (nothing for ZeRO-3 to partition), and they are registered for one training step at a time: through
the forward and the backward (where gradient checkpointing re-runs the forward), removed for evaluation and saving.
`skip_first` leaves the first positions of every sequence alone (training batches are right-padded, so these are each
sequence's first tokens): the attention-sink position carries residual norms ~150x the rest (25,000 against ~170 at
layer 15 of SmolLM2-135M), so projecting out even a random direction there subtracts a large vector, and the
directions `mow diff` and the testbed estimate leave that position out too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from mow.data.directions import load_directions
from mow.finetune.config import SteeringSettings
from mow.workbench.errors import UserError
from mow.workbench.hooks import edit_residual
from mow.workbench.models import model_shape

DEPENDENT_TOLERANCE = 1e-4  # a direction whose component outside the span of the earlier ones is shorter is dropped


@dataclass
class SteeringPlan:
    """Resolved steering: per layer, rows that are orthonormal (ablate) or unit (add)."""

    mode: Literal["ablate", "add"]
    vectors: dict[int, torch.Tensor]
    add_norm: float = 0.0
    skip_first: int = 0
    record: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(rows) for rows in self.vectors.values())


def orthonormal_rows(rows: torch.Tensor, source: str, warn: bool = True) -> torch.Tensor:
    """An orthonormal basis of the rows' span, in their order (Gram-Schmidt, twice per row for stability). A row in
    the span of the earlier ones is dropped with a warning; rows that were not orthonormal are warned about."""
    basis: list[torch.Tensor] = []
    dropped = []
    for index, row in enumerate(rows.double()):
        residual = row.clone()
        for _ in range(2):
            for unit in basis:
                residual -= (residual @ unit) * unit
        if residual.norm() > DEPENDENT_TOLERANCE * row.norm():
            basis.append(residual / residual.norm())
        else:
            dropped.append(index)
    if dropped:
        warnings.warn(f"{source}: rows {dropped} are linearly dependent on earlier rows and are dropped", stacklevel=3)
    gram = rows.double() @ rows.double().T
    if warn and not dropped and not torch.allclose(gram, torch.eye(len(rows), dtype=gram.dtype), atol=1e-4):
        warnings.warn(f"{source}: rows are not orthonormal; ablating the subspace they span (orthonormalised)",
                      stacklevel=3)
    return torch.stack(basis).float() if basis else rows.new_zeros(0, rows.shape[1])


def resolve_steering(settings: SteeringSettings, hidden_size: int, n_layers: int,
                     source: str = "steering") -> SteeringPlan:
    """Load, check and select the directions; every error names the value and where it came from."""
    loaded = load_directions(settings.directions, hidden_size=hidden_size, require_unit=False)
    where = f"{source}.directions ({settings.directions})"
    for layer in loaded.vectors:
        if not 0 <= layer < n_layers:
            raise UserError(f"{where}: layer {layer} out of range for a model with {n_layers} layers")
    chosen: dict[int, torch.Tensor] = {}
    selection = settings.select if settings.select is not None else dict.fromkeys(loaded.vectors)
    for layer, indices in selection.items():
        if layer not in loaded.vectors:
            raise UserError(f"{source}.select: layer {layer} is not in {settings.directions} (layers: "
                            f"{', '.join(map(str, sorted(loaded.vectors)))})")
        rows = loaded.vectors[layer]
        if indices is None or settings.control == "all":
            chosen[layer] = rows
            continue
        bad = [i for i in indices if not 0 <= i < len(rows)]
        if bad:
            raise UserError(f"{source}.select: index {bad[0]} out of range for layer {layer} of "
                            f"{settings.directions} ({len(rows)} directions)")
        if len(set(indices)) != len(indices):
            raise UserError(f"{source}.select: layer {layer} lists an index twice: {indices}")
        chosen[layer] = rows[indices]
    norms = torch.cat([rows.norm(dim=1) for rows in chosen.values()])
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        warnings.warn(f"{where}: rows are not unit vectors (norms {norms.min():.3f}-{norms.max():.3f}); normalised",
                      stacklevel=2)
    chosen = {layer: rows / rows.norm(dim=1, keepdim=True) for layer, rows in chosen.items()}
    if settings.control == "random":
        generator = torch.Generator().manual_seed(settings.random_seed)
        chosen = {layer: torch.randn(len(rows), hidden_size, generator=generator) for layer, rows in chosen.items()}
        chosen = {layer: rows / rows.norm(dim=1, keepdim=True) for layer, rows in chosen.items()}
    if settings.mode == "ablate":
        chosen = {layer: orthonormal_rows(rows, f"{where} layer {layer}", warn=settings.control != "random")
                  for layer, rows in chosen.items()}
    record = {"directions": str(settings.directions), "method": loaded.info.get("method"), "mode": settings.mode,
              "control": settings.control, "layers": {str(layer): len(r) for layer, r in sorted(chosen.items())},
              "select": {str(layer): i for layer, i in (settings.select or {}).items()},
              "skip_first": settings.skip_first}
    if settings.mode == "add":
        record["add_norm"] = settings.add_norm
    return SteeringPlan(settings.mode, dict(sorted(chosen.items())), settings.add_norm, settings.skip_first, record)


def check_steering(settings: SteeringSettings, model: str, source: str = "steering") -> SteeringPlan:
    """Resolve the plan against the model's shape, read from its config: every error before any weights load."""
    hidden_size, n_layers = model_shape(model)
    return resolve_steering(settings, hidden_size, n_layers, source)


def _ablation(rows: torch.Tensor):
    cast: dict[tuple, torch.Tensor] = {}

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in cast:
            cast[key] = rows.to(hidden.device, torch.float32)
        basis = cast[key]
        # coefficients in fp32 so a bf16 residual keeps no more of the direction than its own rounding
        return hidden - ((hidden.float() @ basis.T) @ basis).to(hidden.dtype)

    return edit


def _addition(rows: torch.Tensor, norm: float):
    total = rows.sum(0) * norm
    cast: dict[tuple, torch.Tensor] = {}

    def edit(hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in cast:
            cast[key] = total.to(hidden.device, hidden.dtype)
        return hidden + cast[key]

    return edit


def _sparing_first(edit, skip_first: int):
    """`edit` at every position but the first `skip_first`, which keep their residual."""
    if skip_first == 0:
        return edit

    def spared(hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([hidden[:, :skip_first], edit(hidden)[:, skip_first:]], dim=1)

    return spared


@contextmanager
def steered(model: nn.Module, plan: SteeringPlan | None) -> Iterator[None]:
    """The plan's hooks on `model`'s decoder layers while the context is open (nothing when `plan` is None)."""
    if plan is None:
        yield
        return
    make = _ablation if plan.mode == "ablate" else (lambda rows: _addition(rows, plan.add_norm))
    edits = {layer: _sparing_first(make(rows), plan.skip_first) for layer, rows in plan.vectors.items()}
    with edit_residual(model, edits):
        yield
