"""The diff directory's layout: the one place its paths are spelled (pure Python; white-box elicitation reads
diff outputs through it).

    NAME/
      diff.yaml  manifest.json  report.html
      prompts/sets.jsonl
      kl/arrays.safetensors  kl/summary.json
      lens/lens.safetensors  lens/lens.json
      cache/                 activation cache (meta.json, progress.json, shards)
      crosscoder/            crosscoder.safetensors, crosscoder.json, metrics.json, latents.safetensors
      directions/            NAME.safetensors + NAME.json per method, views.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mow.workbench.errors import UserError

CONFIG_FILE = "diff.yaml"


@dataclass(frozen=True)
class DiffLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def prompt_sets(self) -> Path:
        return self.root / "prompts" / "sets.jsonl"

    @property
    def kl(self) -> Path:
        return self.root / "kl"

    @property
    def kl_arrays(self) -> Path:
        return self.kl / "arrays.safetensors"

    @property
    def kl_summary(self) -> Path:
        return self.kl / "summary.json"

    @property
    def lens(self) -> Path:
        return self.root / "lens"

    @property
    def lens_tensors(self) -> Path:
        return self.lens / "lens.safetensors"

    @property
    def lens_report(self) -> Path:
        return self.lens / "lens.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def crosscoder(self) -> Path:
        return self.root / "crosscoder"

    @property
    def crosscoder_metrics(self) -> Path:
        return self.crosscoder / "metrics.json"

    @property
    def crosscoder_latents(self) -> Path:
        return self.crosscoder / "latents.safetensors"

    @property
    def directions(self) -> Path:
        return self.root / "directions"

    @property
    def direction_views(self) -> Path:
        return self.directions / "views.json"

    def direction_file(self, method: str) -> Path:
        """The stem of one method's directions (NAME.safetensors + NAME.json)."""
        return self.directions / method

    def check_finished(self) -> DiffLayout:
        """This layout, or a one-line error naming what a finished diff lacks (scoring and white-box methods read
        these files)."""
        for needed in (self.config, self.kl_arrays, self.lens_tensors, self.crosscoder_latents):
            if not needed.is_file():
                raise UserError(f"{self.root}: not a finished diff directory (missing "
                                f"{needed.relative_to(self.root)})")
        return self
