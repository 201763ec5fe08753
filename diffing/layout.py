"""The diff directory's layout: the one place its paths are spelled (white-box elicitation reads diff outputs
through it).

    NAME/
      diff.yaml  manifest.json  report.html
      prompts/sets.jsonl
      kl/arrays.safetensors  kl/summary.json
      lens/lens.safetensors  lens/lens.json
      cache/                 activation cache (meta.json, progress.json, shards)
      crosscoder/            crosscoder.safetensors, crosscoder.json, metrics.json, latents.safetensors
      difference_sae/        the same four files for the SAE on tuned − base activations
      directions/            NAME.safetensors + NAME.json per method, views.json
"""

from __future__ import annotations

from pathlib import Path

from mow.workbench.errors import UserError
from mow.workbench.layout import At, Layout

CONFIG_FILE = "diff.yaml"


class DiffLayout(Layout):
    config = At(CONFIG_FILE)
    manifest = At("manifest.json")
    report = At("report.html")
    prompt_sets = At("prompts", "sets.jsonl")
    kl = At("kl")
    kl_arrays = At("kl", "arrays.safetensors")
    kl_summary = At("kl", "summary.json")
    lens = At("lens")
    lens_tensors = At("lens", "lens.safetensors")
    lens_report = At("lens", "lens.json")
    relevance = At("lens", "relevance.json")
    cache = At("cache")
    crosscoder = At("crosscoder")
    crosscoder_metrics = At("crosscoder", "metrics.json")
    crosscoder_latents = At("crosscoder", "latents.safetensors")
    difference_sae = At("difference_sae")
    difference_sae_metrics = At("difference_sae", "metrics.json")
    difference_sae_latents = At("difference_sae", "latents.safetensors")
    directions = At("directions")
    direction_views = At("directions", "views.json")

    def direction_file(self, method: str) -> Path:
        """The stem of one method's directions (NAME.safetensors + NAME.json)."""
        return self.directions / method

    def direction_info(self, method: str) -> Path:
        """How one method's directions were found (NAME.json)."""
        return self.direction_file(method).with_suffix(".json")

    def check_finished(self) -> DiffLayout:
        """This layout, or a one-line error naming what a finished diff lacks (scoring and white-box methods read
        these files)."""
        for needed in (self.config, self.kl_arrays, self.lens_tensors, self.crosscoder_latents):
            if not needed.is_file():
                raise UserError(f"{self.root}: not a finished diff directory (missing "
                                f"{needed.relative_to(self.root)})")
        return self
