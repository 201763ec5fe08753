"""Strict YAML configs: typed pydantic models, `--set a.b=value` overrides, one-line errors.

Every config model derives from `StrictModel`, so an unknown key is an error rather than silently ignored.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mow.workbench.errors import UserError
from mow.workbench.files import parse_yaml, read_yaml

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, values are validated on assignment, and a float
    is finite (`inf` or `nan` is never a sane setting)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


Seed = Annotated[int, Field(ge=0, lt=2**32, description="random seed, 0 to 2**32-1")]
Temperature = Annotated[float, Field(ge=0, le=10, description="sampling temperature, 0 (greedy) to 10")]
Threads = Annotated[int, Field(ge=1, le=1024, description="torch CPU threads")]


def _layer_choice(value: int | float) -> int | float:
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"a fractional layer must lie in (0, 1] (a fraction of the depth), got {value}; "
                         "write an absolute layer as an integer")
    return value


LayerChoice = Annotated[int | float, AfterValidator(_layer_choice)]
"""A decoder layer: an integer is an absolute index (negative from the end); a float in (0, 1] is a fraction of the
depth (0.5: the middle layer, 1.0: the last), so the same config carries to a model of any depth."""


def _layer_range(value: str) -> str:
    parts = value.split(":")
    if len(parts) != 2:
        raise ValueError(f"a layer range is FROM:TO (e.g. 0.33:0.66 or 4:12), got {value!r}")
    for part in parts:
        _layer_choice(_parse_layer(part, value))
    return value


def _parse_layer(text: str, whole: str) -> int | float:
    try:
        return int(text) if text.strip().lstrip("-").isdigit() else float(text)
    except ValueError:
        raise ValueError(f"{text!r} in the layer range {whole!r} is not a layer") from None


LayerChoices = list[LayerChoice] | Annotated[str, AfterValidator(_layer_range)]
"""Several layers: a list of `LayerChoice`s, or a range `FROM:TO` of them (both ends included)."""


def resolve_layer(choice: int | float, n_layers: int, source: str) -> int:
    """The absolute index of a `LayerChoice` in a model of `n_layers`; out of range is a one-line error."""
    if isinstance(choice, float):
        return min(n_layers - 1, int(choice * n_layers))
    if not -n_layers <= choice < n_layers:
        raise UserError(f"{source}: layer {choice} out of range for a model with {n_layers} layers "
                        f"(0 to {n_layers - 1}, or a fraction of the depth such as 0.5)")
    return choice % n_layers


def resolve_layers(choices: list[int | float] | str, n_layers: int, source: str) -> list[int]:
    """Sorted absolute indices of `LayerChoices`."""
    if isinstance(choices, str):
        low, high = (resolve_layer(_parse_layer(part, choices), n_layers, source) for part in choices.split(":"))
        return list(range(min(low, high), max(low, high) + 1))
    return sorted({resolve_layer(choice, n_layers, source) for choice in choices})


def shipped_config(relative: str) -> Path:
    """A config shipped with the package (`configs/` in the repository, package data `mow.configs` installed)."""
    return Path(str(resources.files("mow.configs").joinpath(relative)))


def resolve_config_path(path: Path) -> Path:
    """`path` as given; a relative `configs/...` path that does not exist here names the shipped config of that name,
    so the commands in the README work from any directory."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and path.parts[:1] == ("configs",) and len(path.parts) > 1:
        shipped = shipped_config("/".join(path.parts[1:]))
        if shipped.is_file():
            return shipped
    return path


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML config that must hold a mapping; errors name the file."""
    return read_yaml(resolve_config_path(path), "config file")


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in order; values are parsed as YAML scalars (`3`, `true`, `2e-4`, `[1, 2]`)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{source} {item!r}: expected KEY=VALUE, for example training.epochs=3")
        try:
            value = parse_yaml(text, f"{source} {item!r}") if text.strip() else None
        except UserError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"{source} {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def format_validation_error(exc: ValidationError, source: str) -> str:
    """First problem of a pydantic error as one line: `file: key.path: message (got value)`."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {loc!r}"
    if err["type"] == "missing":
        return f"{source}: missing required key {loc!r}"
    if err["type"] == "value_error" and not err["loc"]:  # a model validator: its message names the values
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc}: {err['msg']} (got {shown}){more}"


def validate_config(model: type[ConfigT], raw: dict[str, Any], source: str) -> ConfigT:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, as saved in every output directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
