"""BatchTopK crosscoder training: this project's trainer against the reference trainer, same activations, same run.

The reference is `BatchTopKCrossCoderTrainer` of science-of-finetuning/crosscoder_learning (the code behind Minder
et al. 2025), at the pinned commit below. It is fetched at run time (a GitHub tarball; or `--reference DIR`, a
checkout at that commit) and never committed; its two modules are imported from the checkout without running the
package's `__init__` (which needs nnsight). It needs `einops` and `zstandard` (`pip install -e ".[bench]"`).

Both trainers get the same normalised activations (each model scaled to mean squared norm d, as `mow diff` does; the
reference's own normaliser is left off), the same latents, k, batch size, token count and seed. Each keeps its own
algorithm and defaults, which differ as follows:
- ours: squared-error loss, Adam at `--lr` (default 1e-3), warmup 5% / decay over the last 20%, threshold EMA 0.99
  from the first step, dead after 50,000 silent tokens, auxiliary loss over the top 256 dead latents per token;
- reference: Euclidean-norm loss, Adam at its own 2e-4 / sqrt(F / 2^14), gradient clipping at 1, threshold EMA
  0.999; its warmup, threshold start and decay start (1000 steps and none by default, longer than these runs) are
  set to 5%, 5% and 80% of the steps; dead after 10M tokens, so its auxiliary loss never runs here.
Quality is measured the same way for both on held-out tokens (the last 10%) at inference (each model's learned
threshold): fraction of variance explained per model, L0 and the fraction of latents that never fire.

    python benchmarks/crosscoder_speed.py [--diff DIR] [--reference DIR] [--latents 1024 4096] [--epochs 4]

Without --diff the activations are those of the embedded model and the same model with a random-weight LoRA adapter
(r 16, all linear layers) at the middle layer over the shipped prompt sets; with --diff, a finished diff's activation
cache at its crosscoder layer.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
import types
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from diff_speed import make_adapter  # this folder is on the path of a script run from it

REFERENCE_REPO = "science-of-finetuning/crosscoder_learning"
REFERENCE_COMMIT = "b2363ed54590074ef4667ca6152094800a65f9aa"


def fetch_reference(destination: Path) -> Path:
    """The reference checkout at the pinned commit, downloaded from GitHub (raises OSError when unreachable)."""
    url = f"https://codeload.github.com/{REFERENCE_REPO}/tar.gz/{REFERENCE_COMMIT}"
    with urllib.request.urlopen(url, timeout=30) as response:
        payload = response.read()
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        archive.extractall(destination, filter="data")
    return next(destination.iterdir())


def import_reference(checkout: Path) -> types.ModuleType:
    """`dictionary_learning.trainers.crosscoder` from a checkout, with the package and subpackage registered as bare
    namespaces so their `__init__` files (and the dependencies those pull in) do not run."""
    root = checkout / "dictionary_learning"
    if not (root / "trainers" / "crosscoder.py").is_file():
        raise SystemExit(f"{checkout}: not a crosscoder_learning checkout (no dictionary_learning/trainers)")
    for name, path in (("dictionary_learning", root), ("dictionary_learning.trainers", root / "trainers")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    import importlib

    return importlib.import_module("dictionary_learning.trainers.crosscoder")


def embedded_activations(workdir: Path) -> tuple[torch.Tensor, int]:
    """(tokens, 2, d) raw activations of the embedded model and a random-LoRA copy, and the layer."""
    from peft import PeftModel

    from mow.diffing.cache import build_cache
    from mow.diffing.config import PromptSetSettings
    from mow.diffing.pair import ModelPair
    from mow.diffing.prompts import prompt_set_records, tokenize_sets
    from mow.workbench.models import load_model, load_tokenizer

    spec = "builtin:smollm2-135m"
    tokenizer = load_tokenizer(spec)
    tuned = PeftModel.from_pretrained(load_model(spec), make_adapter(workdir / "adapter", spec)).eval()
    pair = ModelPair(tuned, tokenizer, None, spec, "adapter")
    settings = PromptSetSettings(sets=["generic_chat", "generic_text"], max_items_per_set=10**6)
    sets = tokenize_sets(prompt_set_records(settings, None), tokenizer, settings.max_tokens_per_item)
    sequences = [s for rows in sets.values() for s in rows]
    layer = pair.n_layers // 2
    cache = build_cache(pair, sequences, workdir / "cache", [layer], token_budget=10**7, batch_size=8,
                        progress=False)
    return _all_tokens(cache, layer), layer


def diff_activations(directory: Path) -> tuple[torch.Tensor, int]:
    from mow.diffing.cache import ActivationCache
    from mow.diffing.layout import DiffLayout
    from mow.workbench.files import read_json

    layout = DiffLayout(directory)
    layer = int(read_json(layout.crosscoder_metrics, "crosscoder metrics")["layer"])
    return _all_tokens(ActivationCache(layout.cache), layer), layer


def _all_tokens(cache, layer: int) -> torch.Tensor:
    return torch.cat(list(cache.paired_batches(layer, 4096, seed=0))).float()


def held_out_quality(reconstruct: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                     x_norm: torch.Tensor, latents: int) -> dict:
    """FVE per model, L0 and never-firing fraction; `reconstruct` maps normalised (B, 2, d) to (x_hat, f)."""
    sse = torch.zeros(2, dtype=torch.float64)
    fired = torch.zeros(latents, dtype=torch.bool)
    active = 0
    with torch.no_grad():
        for x in x_norm.split(2048):
            x_hat, f = reconstruct(x)
            sse += (x - x_hat).double().pow(2).sum((0, 2))
            fired |= (f > 0).any(0)
            active += int((f > 0).sum())
    centred = x_norm.double() - x_norm.double().mean(0)
    fve = 1 - sse / centred.pow(2).sum((0, 2))
    return {"fve_base": fve[0].item(), "fve_tuned": fve[1].item(), "l0": active / len(x_norm),
            "dead": 1 - fired.float().mean().item()}


def train_ours(train: torch.Tensor, scale: torch.Tensor, latents: int, k: int, batch: int, epochs: int,
               lr: float, seed: int) -> tuple[float, Callable]:
    from mow.diffing.config import CrosscoderSettings
    from mow.diffing.crosscoder import train_crosscoder

    settings = CrosscoderSettings(latents=latents, k=k, batch_size=batch, epochs=epochs, learning_rate=lr, seed=seed)
    raw = train / scale[:, None]
    start = time.perf_counter()
    model, _ = train_crosscoder(lambda: raw.split(batch), train.shape[-1], settings, scale, progress=False)
    seconds = time.perf_counter() - start

    def reconstruct(x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = model._activations(x_norm, training=False)[0]
        return model.decode(f), f

    return seconds, reconstruct


def train_reference(module: types.ModuleType, train: torch.Tensor, latents: int, k: int, batch: int, epochs: int,
                    seed: int) -> tuple[float, Callable]:
    steps = epochs * -(-len(train) // batch)
    trainer = module.BatchTopKCrossCoderTrainer(
        steps=steps, activation_dim=train.shape[-1], dict_size=latents, k=k, layer=0, lm_name="benchmark",
        warmup_steps=max(1, steps // 20), threshold_start_step=max(1, steps // 20), decay_start=int(steps * 0.8),
        seed=seed, device="cpu")
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        for x in train.split(batch):
            trainer.update(step, x.clone())
            step += 1
    seconds = time.perf_counter() - start
    ae = trainer.ae.eval()

    def reconstruct(x_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = ae.encode(x_norm, use_threshold=True, normalize_activations=False)
        return ae.decode(f, denormalize_activations=False), f

    return seconds, reconstruct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diff", type=Path, help="a finished diff whose activation cache to use")
    parser.add_argument("--reference", type=Path, help=f"a checkout of {REFERENCE_REPO} at {REFERENCE_COMMIT[:12]}")
    parser.add_argument("--latents", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="our learning rate (the reference picks its own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        try:
            checkout = args.reference or fetch_reference(Path(tmp))
            reference = import_reference(checkout)
        except OSError as exc:
            print(f"reference not available ({exc}); pass --reference DIR, a checkout of {REFERENCE_REPO} at "
                  f"{REFERENCE_COMMIT}: only this project's figures follow")
        x, layer = diff_activations(args.diff) if args.diff else embedded_activations(Path(tmp))
    d = x.shape[-1]
    scale = (d / x.pow(2).sum(-1).mean(0)).sqrt()  # as the activation cache's scale(): mean squared norm d
    x_norm = x * scale[:, None]
    cut = int(0.9 * len(x_norm))
    train, held_out = x_norm[:cut], x_norm[cut:]
    print(f"{len(train)} training and {len(held_out)} held-out tokens, layer {layer}, d {d}, k {args.k}, batch "
          f"{args.batch}, {args.epochs} epochs, {args.threads} threads")
    for latents in args.latents:
        rows = {}
        seconds, reconstruct = train_ours(train, scale, latents, args.k, args.batch, args.epochs, args.lr, args.seed)
        rows["mow"] = (seconds, held_out_quality(reconstruct, held_out, latents))
        if reference is not None:
            seconds, reconstruct = train_reference(reference, train, latents, args.k, args.batch, args.epochs,
                                                   args.seed)
            rows["reference"] = (seconds, held_out_quality(reconstruct, held_out, latents))
        print(f"\n{latents} latents")
        print(f"  {'':<12}{'tokens/s':>10}{'FVE base':>10}{'FVE tuned':>11}{'L0':>8}{'dead':>8}")
        for name, (seconds, quality) in rows.items():
            print(f"  {name:<12}{len(train) * args.epochs / seconds:>10.0f}{quality['fve_base']:>10.3f}"
                  f"{quality['fve_tuned']:>11.3f}{quality['l0']:>8.1f}{quality['dead']:>8.3f}")
        if "reference" in rows:
            ratio = rows["reference"][0] / rows["mow"][0]
            print(f"  speed ratio mow / reference: {ratio:.2f}x (target >= 2 at equal or better FVE and dead)")


if __name__ == "__main__":
    main()
