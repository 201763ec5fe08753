"""Typed directory layouts: a layout names every file of one kind of output directory once, as attributes, so code
writes `layout.kl_arrays` and never spells `root / "kl" / "arrays.safetensors"` itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import overload


class At:
    """A layout attribute: the path `parts` under the layout's root (read on an instance), or the relative path
    (read on the class, e.g. to key a manifest by it)."""

    def __init__(self, *parts: str):
        self.relative = "/".join(parts)

    @overload
    def __get__(self, layout: None, owner: type) -> str: ...

    @overload
    def __get__(self, layout: Layout, owner: type) -> Path: ...

    def __get__(self, layout: Layout | None, owner: type) -> Path | str:
        return self.relative if layout is None else layout.root / self.relative


@dataclass(frozen=True)
class Layout:
    """The root of one output directory; subclasses list its files as `At(...)` attributes."""

    root: Path
