"""Output directories written atomically, with manifests: the one resume and restart rule of every pipeline.

Work happens in a hidden sibling `.NAME.partial/`; only a finished run is renamed to `NAME/`, so a kill never
leaves a half-written output under the final name. For every command that writes one (organism build, diff, elicit,
caft testbed, demo), the same rule (README: "Re-runs, resuming and --restart"):

- `NAME/` finished with the same config: reported as done; nothing runs.
- `.NAME.partial/` with the same config: resumed; finished stages are kept.
- `NAME/` or `.NAME.partial/` with a different config: a one-line error that names `--restart`.
- `--restart`: the partial directory is discarded and the run starts over; a finished `NAME/` is replaced when the
  new run finishes (a killed restart leaves the old output in place).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from mow.workbench.errors import UserError
from mow.workbench.files import read_json, shown

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "safetensors", "pydantic",
                    "model-organism-workbench")


PARTIAL_SUFFIX = ".partial"
NAME_MAX = 255  # bytes in one path component, on every file system the workbench runs on


def partial_path(final: Path) -> Path:
    return final.parent / f".{final.name}{PARTIAL_SUFFIX}"


def final_name(partial: Path) -> str | None:
    """The name a partial directory is finished under (None if `partial` is not one)."""
    name = partial.name
    if name.startswith(".") and name.endswith(PARTIAL_SUFFIX) and len(name) > 1 + len(PARTIAL_SUFFIX):
        return name[1:-len(PARTIAL_SUFFIX)]
    return None


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
        self.data: dict[str, Any] = read_json(self.path, "manifest") if self.path.is_file() else {
            "versions": package_versions(), "seed": seed, "platform": platform.platform(), "stages": {}}
        # Outputs with nothing to hide (diffs) keep the provenance in the public manifest.
        self.sealed_path = directory / "sealed" / "manifest.json" if sealed else None
        self.sealed: dict[str, Any]
        if self.sealed_path is None:
            self.sealed = self.data.setdefault("provenance", {"commands": [], "data_hashes": {}, "details": {}})
        else:
            self.sealed = read_json(self.sealed_path, "sealed manifest") if self.sealed_path.is_file() else {
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


def log(message: str) -> None:
    print(f"[mow] {message}", file=sys.stderr, flush=True)


def check_output_location(output: Path, *siblings: Path) -> None:
    """`output` (and `siblings`, such as its partial directory) can be created where asked: a printable path, names
    the file system takes, and a writable directory above (the first existing one: the missing ones are created).
    A directory that already exists there is the caller's business."""
    if not str(output).isprintable():
        raise UserError(f"{shown(output)}: output path holds control characters (a NUL byte, a newline, ...)")
    longest = max(len(part.encode()) for path in (output, *siblings) for part in Path(path).parts)
    if longest > NAME_MAX:
        raise UserError(f"{shown(output)}: a name in the output path is {longest} bytes, above the {NAME_MAX} the "
                        "file system takes")
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: output path is a file, not a directory")
    existing = Path(output).parent.absolute()
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"{existing}: output directory is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{existing}: is a file, not a directory, so {output} cannot be written")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing}: output directory is not writable")


class RunDirectory:
    """One pipeline's output directory: `final` when finished, `partial` while it is being written.

    `config_file` (relative to the directory) holds the resolved config, `config_text`; it is what tells a resumable
    or finished run of the same config from one of another. Use: `if run.finished(restart): return run.final`,
    then every check that can fail, then `run.start(restart)`, the stages (skipping those the manifest has done),
    and `run.finish()`."""

    def __init__(self, final: Path, config_file: str, config_text: str, what: str):
        self.final = Path(final)
        self.partial = partial_path(self.final)
        self.replaced = self.final.parent / f".{self.final.name}.replaced"  # a finished run being swapped out
        self.config_file = config_file
        self.config_text = config_text
        self.what = what

    def _same_config(self, directory: Path) -> bool:
        saved = directory / self.config_file
        return saved.is_file() and saved.read_bytes() == self.config_text.encode("utf-8")

    def check_location(self) -> None:
        check_output_location(self.final, self.partial)

    def finished(self, restart: bool) -> bool:
        """True when a finished run of this config is there (and not to be redone); raises where a run of another
        config, or something that is no run at all, is in the way, or where the output cannot be written. Changes
        nothing on disk."""
        self.check_location()
        if self.final.exists() and not (self.final / self.config_file).is_file():
            raise UserError(f"{self.final}: exists and is not a {self.what} output (no {self.config_file}); "
                            "choose another name or output directory")
        if not restart:
            if self.final.exists():
                if not self._same_config(self.final):
                    raise UserError(f"{self.final}: already exists with a different config; re-run with --restart "
                                    "to replace it, or choose another name")
                log(f"{self.final} is already built with this config; nothing to do (--restart rebuilds it)")
                return True
            if self.partial.exists() and (self.partial / self.config_file).is_file() and not self._same_config(
                    self.partial):
                raise UserError(f"{self.partial}: an unfinished {self.what} with a different config is there; "
                                "re-run with --restart to discard it")
        return False

    def start(self, restart: bool) -> Path:
        """Create (or, resuming, reuse) the partial directory with the config written; returns it."""
        if self.partial.exists() and (restart or not self._same_config(self.partial)):
            shutil.rmtree(self.partial)
        elif self.partial.exists():
            log(f"resuming the unfinished {self.what} in {self.partial}")
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only mount, a full disk: what check_location cannot see from permissions
            raise UserError(f"{shown(self.partial)}: cannot create the output directory ({exc.strerror})") from None
        write_text(self.partial / self.config_file, self.config_text)
        return self.partial

    def finish(self) -> Path:
        """Move the finished run into place. An older finished run (under --restart) is renamed aside first and
        removed only once the new one is in place, so a kill leaves one whole run under the final name, or none
        and a finished partial that the next run completes."""
        if self.replaced.exists():
            shutil.rmtree(self.replaced)
        if self.final.exists():
            os.rename(self.final, self.replaced)
        os.rename(self.partial, self.final)
        if self.replaced.exists():
            shutil.rmtree(self.replaced)
        return self.final
