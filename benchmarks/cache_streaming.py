"""Streaming an activation cache from disk: crosscoder training tokens/s on a cache that is not in the page cache
(as a cache larger than memory never is), with the next block prefetched and without, against the same training on
the same cache when it is in the page cache (the named baseline: training whose reads cost only a copy).

    python benchmarks/cache_streaming.py --diff runs/diffs/NAME [--copies 40] [--latents 1024] [--repeats 2]

The diff's cache is tiled `--copies` times into a temporary cache (the demo's 12,000 tokens x 40 at d = 576 in
float32: 2.2 GB for base and tuned), so that no block is one the kernel still holds from reading an earlier one.
A cold run drops the page cache first (`echo 1 > /proc/sys/vm/drop_caches`, which needs root; without it the script
says so and measures the warm run alone). One epoch each, so every block is read once, as in every epoch over a
cache larger than memory. Runs alternate (cold with prefetch, cold without, warm) `--repeats` times in this process;
medians and every run are printed. Target: cold with prefetch at least 0.95 of warm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mow.diffing.cache import MODELS, ActivationCache
from mow.diffing.config import CrosscoderSettings
from mow.diffing.crosscoder import train_crosscoder
from mow.diffing.layout import DiffLayout


def tiled_cache(source: ActivationCache, layer: int, copies: int, directory: Path) -> ActivationCache:
    """The source cache's rows repeated `copies` times, same meta (token count multiplied), in `directory`."""
    n = source.n_tokens
    for name in [f"{model}_L{layer}" for model in MODELS] + ["tokens", "positions"]:
        rows = np.load(source.directory / f"{name}.npy", mmap_mode="r")[:n]
        out = np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=rows.dtype,
                                        shape=(n * copies, *rows.shape[1:]))
        for copy in range(copies):
            out[copy * n : (copy + 1) * n] = rows
        out.flush()
        del out
    meta = {**source.meta, "layers": [layer], "n_tokens": n * copies, "token_budget": n * copies,
            "normalization": {str(layer): source.meta["normalization"][str(layer)]}}
    (directory / "meta.json").write_text(json.dumps(meta))
    return ActivationCache(directory)


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def train_once(cache: ActivationCache, layer: int, settings: CrosscoderSettings, prefetch: bool) -> float:
    """Tokens per second of one epoch of crosscoder training streamed from `cache`."""
    start = time.perf_counter()
    train_crosscoder(lambda: cache.paired_batches(layer, settings.batch_size, settings.seed, prefetch=prefetch),
                     int(cache.meta["d"]), settings, cache.scale(layer), progress=False, tokens=cache.n_tokens)
    return cache.n_tokens / (time.perf_counter() - start)


def read_speed(cache: ActivationCache, layer: int) -> float:
    """MB/s of reading both models' arrays in order; called right after the page cache is dropped, it is the
    disk's cold streaming speed (for context)."""
    start = time.perf_counter()
    size = 0
    for model in MODELS:
        path = cache.directory / f"{model}_L{layer}.npy"
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                size += len(chunk)
    return size / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diff", type=Path, required=True, help="a finished `mow diff` directory with a cache")
    parser.add_argument("--copies", type=int, default=40, help="times the cache is tiled (default 40)")
    parser.add_argument("--latents", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (default 2)")
    parser.add_argument("--workdir", type=Path, help="where the tiled cache goes (default: a temporary directory)")
    args = parser.parse_args()
    if args.copies < 1 or args.repeats < 1:
        parser.error(f"--copies {args.copies}, --repeats {args.repeats}: each must be at least 1")
    source = ActivationCache(DiffLayout(args.diff).cache)
    if not source.complete:
        parser.error(f"--diff {args.diff}: its activation cache is not complete")
    layer = source.layers[0]
    torch.set_num_threads(2)
    settings = CrosscoderSettings(latents=args.latents, epochs=1)
    workdir = Path(tempfile.mkdtemp(prefix="mow-stream-", dir=args.workdir))
    try:
        cache = tiled_cache(source, layer, args.copies, workdir)
        gigabytes = sum((workdir / f"{m}_L{layer}.npy").stat().st_size for m in MODELS) / 1e9
        print(f"cache: {cache.n_tokens:,} tokens x d {cache.meta['d']} ({cache.meta['dtype']}), layer {layer}, "
              f"{gigabytes:.2f} GB for base and tuned; crosscoder {args.latents} latents, k {settings.k}, "
              f"batch {settings.batch_size}, 1 epoch")
        can_drop = drop_page_cache()
        if not can_drop:
            print("cannot drop the page cache (needs root): cold runs skipped")
        else:
            print(f"disk, cold sequential read: {read_speed(cache, layer):,.0f} MB/s")
        train_once(source, layer, settings, prefetch=True)  # warm-up (thread pools, allocator), not counted
        runs: dict[str, list[float]] = {"cold, prefetch": [], "cold, no prefetch": [], "warm": []}
        for _ in range(args.repeats):
            for mode in runs:
                if mode.startswith("cold"):
                    if not can_drop:
                        continue
                    drop_page_cache()
                else:  # warm: every page of the cache read into the page cache first
                    for model in MODELS:
                        np.load(workdir / f"{model}_L{layer}.npy", mmap_mode="r").sum()
                runs[mode].append(train_once(cache, layer, settings, prefetch=mode != "cold, no prefetch"))
                print(f"  {mode}: {runs[mode][-1]:,.0f} tokens/s")
        warm = statistics.median(runs["warm"])
        print(f"\ncrosscoder training tokens/s (median of {args.repeats}), against warm {warm:,.0f}:")
        for mode, speeds in runs.items():
            if speeds:
                median = statistics.median(speeds)
                print(f"  {mode:18s} {median:8,.0f}  ratio {median / warm:.2f}  runs "
                      + ", ".join(f"{s:,.0f}" for s in speeds))
        if runs["cold, prefetch"]:
            ratio = statistics.median(runs["cold, prefetch"]) / warm
            print(f"target: cold with prefetch >= 0.95 of warm: {ratio:.2f} ({'met' if ratio >= 0.95 else 'missed'})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
