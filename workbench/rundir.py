"""Output directories written atomically, with manifests.

Work happens in a hidden sibling `.NAME.partial/`; only a finished build is renamed to `NAME/`, so a kill never
leaves a half-written output under the final name, and a re-run finds the partial directory and resumes.
"""

from __future__ import annotations

import json
import os
import platform
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
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Manifest:
    """manifest.json of an output directory (versions, seed, platform, per-stage timings and results) and its sealed
    twin sealed/manifest.json (command line, data hashes, data reports): what could give a secret away, such as the
    hash of training data that is a function of the secret, is kept under sealed/. Saved after each stage."""

    def __init__(self, directory: Path, seed: int, sealed: bool = True):
        self.path = directory / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {
            "versions": package_versions(), "seed": seed, "platform": platform.platform(), "stages": {}}
        # Outputs with nothing to hide (diffs) keep the provenance in the public manifest.
        self.sealed_path = directory / "sealed" / "manifest.json" if sealed else None
        if self.sealed_path is None:
            self.sealed = self.data.setdefault("provenance", {"commands": [], "data_hashes": {}, "details": {}})
        else:
            self.sealed = json.loads(self.sealed_path.read_text()) if self.sealed_path.is_file() else {
                "commands": [], "data_hashes": {}, "details": {}}
        self.sealed["commands"].append(sys.argv)
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
        if self.sealed_path is not None:
            write_json(self.sealed_path, self.sealed)


def finalize(partial: Path, final: Path) -> None:
    """Move the finished build into place in one rename."""
    os.rename(partial, final)
