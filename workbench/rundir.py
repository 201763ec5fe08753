"""Output directories written atomically, with manifests.

Work happens in a hidden sibling `.NAME.partial/`; only a finished build is renamed to `NAME/`, so a kill never
leaves a half-written output under the final name, and a re-run finds the partial directory and resumes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "pydantic",
                    "model-organism-workbench")


def partial_path(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Manifest:
    """manifest.json of an output directory: versions, seed, data hashes, per-stage timings; saved after each stage."""

    def __init__(self, path: Path, seed: int):
        self.path = path
        if path.is_file():
            self.data = json.loads(path.read_text())
        else:
            self.data = {"versions": package_versions(), "seed": seed, "command": sys.argv,
                         "platform": platform.platform(), "data_hashes": {}, "stages": {}}
        self.save()

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("done", False)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Time a stage; its dict is saved with `done: true` only if the block finishes."""
        record: dict[str, Any] = {}
        start = time.perf_counter()
        yield record
        record.update(done=True, seconds=round(time.perf_counter() - start, 2))
        self.data["stages"][name] = record
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def finalize(partial: Path, final: Path) -> None:
    """Move the finished build into place in one rename."""
    os.rename(partial, final)


def remove_partial(final: Path) -> None:
    shutil.rmtree(partial_path(final), ignore_errors=True)
