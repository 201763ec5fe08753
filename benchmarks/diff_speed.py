"""Diffing speed and memory, each printed against a named baseline measured in the same run.

1. Per-token KL from ONE copy of the base weights (adapter switched off and on, as `mow diff` does) against TWO
   loaded models (the base, and a second copy with the adapter merged in), same KL code, same texts. Each mode runs
   in its own fresh process, one after the other, so peak resident memory is its own. Memory is reported as the
   peak RSS above the process's RSS after imports (the interpreter and libraries are the same in both) and as the
   raw peak. Targets: memory ratio at most 0.6, tokens-per-second ratio at least 1.0.
2. Activation-cache writing against bare forward passes of both models over the same texts (overhead ratio).
3. Crosscoder training tokens per second on that cache.
4. A second diff of another adapter on the same base, its base side read from the base-side store the first diff
   wrote (`kl.reuse_base_side`), against that first diff: tokens/s of both.

    python benchmarks/diff_speed.py [--organism DIR] [--items 48] [--repeats 3] [--random-model KEY=VALUE ...]

Without --organism, the adapter is a LoRA r16 on all linear layers of the embedded model with random weights
(speed and memory do not depend on what the adapter learned). `--random-model` runs everything on a model of
--model's architecture and tokenizer with those config fields changed and random weights: a larger model of the
family where none can be downloaded (the SmolLM2-360M shape: hidden_size=960 intermediate_size=2560
num_hidden_layers=32 num_attention_heads=15 num_key_value_heads=5). At 135M parameters the weights (513 MiB) are not
much larger than the working memory and the allocator's slack, which move the peak by up to 100 MiB between runs;
a larger model shows the memory ratio where the weights dominate, as they do for the models researchers diff.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_adapter(directory: Path, model_spec: str, seed: int = 0) -> Path:
    from mow.finetune.config import LoraSettings
    from mow.finetune.lora import attach_lora
    from mow.workbench.models import load_model

    torch.manual_seed(seed)
    model = attach_lora(load_model(model_spec), LoraSettings(r=16, alpha=32), seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    model.save_pretrained(directory)
    return directory


def random_model(directory: Path, model_spec: str, changes: list[str]) -> Path:
    """A checkpoint of `model_spec`'s architecture and tokenizer with the config fields `changes` (KEY=VALUE,
    integers) set and random weights (seed 0), in float32, written to `directory`."""
    from transformers import AutoModelForCausalLM

    from mow.workbench.models import load_tokenizer, read_model_config

    config = read_model_config(model_spec)
    for change in changes:
        key, _, value = change.partition("=")
        if not hasattr(config, key) or not value.isdigit():
            raise ValueError(f"--random-model {change!r}: expected KEY=INTEGER with KEY a field of {model_spec}'s "
                             "config")
        setattr(config, key, int(value))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    load_tokenizer(model_spec).save_pretrained(directory)
    os.sync()  # the first timed run should not share the disk with this checkpoint's writeback
    return directory


def texts(tokenizer, items: int) -> dict:
    from mow.diffing.config import PromptSetSettings
    from mow.diffing.prompts import capped, prompt_set_records, tokenize_sets

    settings = PromptSetSettings(sets=["generic_text", "generic_chat"])
    return capped(tokenize_sets(prompt_set_records(settings, None), tokenizer, settings.max_tokens_per_item), items)


def run_kl_mode(mode: str, adapter: Path, model_spec: str, items: int, store_dir: Path | None = None) -> dict:
    """One KL measurement in this process (called in a fresh subprocess per mode); with `store_dir`, the base side
    is read from and written to a base-side store there."""
    from peft import PeftModel

    from mow.diffing.base_side import BaseSideStore, base_identity
    from mow.diffing.kl import per_token_kl
    from mow.diffing.pair import ModelPair
    from mow.workbench.models import load_model, load_tokenizer

    torch.set_num_threads(2)
    tokenizer = load_tokenizer(model_spec)
    sets = texts(tokenizer, items)
    before = rss_mib()
    if mode == "one-copy":
        tuned = PeftModel.from_pretrained(load_model(model_spec), adapter).eval()
        pair = ModelPair(tuned, tokenizer, None, model_spec, "adapter")
    else:
        base = load_model(model_spec).eval()
        tuned = PeftModel.from_pretrained(load_model(model_spec), adapter).merge_and_unload().eval()
        pair = ModelPair(tuned, tokenizer, base, model_spec, "merged")
    per_token_kl(pair, {k: v[:2] for k, v in sets.items()}, progress=False)  # warm-up
    store = BaseSideStore(base_identity(pair.tuned_model), store_dir) if store_dir is not None else None
    start = time.perf_counter()
    arrays = per_token_kl(pair, sets, progress=False, base_store=store)
    seconds = time.perf_counter() - start
    return {"positions": int(arrays.kl_tb.numel()), "seconds": seconds, "rss_after_imports": before,
            "peak_rss": peak_rss_mib(), "mean_kl": float(arrays.kl_tb.mean()),
            "reused": [] if store is None else store.reused}


def cache_and_crosscoder(adapter: Path, model_spec: str, items: int, workdir: Path) -> dict:
    from peft import PeftModel

    from mow.diffing.cache import MODELS, build_cache
    from mow.diffing.config import CrosscoderSettings
    from mow.diffing.crosscoder import train_crosscoder
    from mow.diffing.pair import ModelPair
    from mow.workbench.models import load_model, load_tokenizer

    torch.set_num_threads(2)
    tokenizer = load_tokenizer(model_spec)
    sequences = [s for rows in texts(tokenizer, items).values() for s in rows]
    tuned = PeftModel.from_pretrained(load_model(model_spec), adapter).eval()
    pair = ModelPair(tuned, tokenizer, None, model_spec, "adapter")
    layer = pair.n_layers // 2
    batch = 8
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(sequences), batch):
            ids, mask = pair.batch([s.ids for s in sequences[i : i + batch]])
            for name in MODELS:
                with (pair.base() if name == "base" else pair.tuned()) as model:
                    model(input_ids=ids, attention_mask=mask)
    bare = time.perf_counter() - start
    start = time.perf_counter()
    cache = build_cache(pair, sequences, workdir / "cache", [layer], token_budget=10**7, batch_size=batch,
                        progress=False)
    cached = time.perf_counter() - start
    settings = CrosscoderSettings(epochs=1)
    start = time.perf_counter()
    train_crosscoder(lambda: cache.paired_batches(layer, 1024), pair.hidden_size, settings, cache.scale(layer),
                     progress=False)
    trained = time.perf_counter() - start
    return {"tokens": cache.n_tokens, "bare_s": bare, "cache_s": cached, "crosscoder_s": trained,
            "crosscoder_tokens": cache.n_tokens * settings.epochs, "latents": settings.latents, "k": settings.k,
            "batch": settings.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", type=Path, help="an organism directory (default: a random-weight adapter)")
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--items", type=int, default=48, help="texts per shipped set")
    parser.add_argument("--repeats", type=int, default=3, help="KL runs per mode (default 3)")
    parser.add_argument("--random-model", nargs="+", metavar="KEY=VALUE",
                        help="a random-weight model of --model's architecture with these config fields changed")
    parser.add_argument("--kl-mode", choices=["one-copy", "two-models"], help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1 run per mode")
    if args.organism is not None and args.random_model:
        parser.error("--organism and --random-model: an organism has its own base model; give one of them")
    if args.kl_mode:
        print(json.dumps(run_kl_mode(args.kl_mode, args.adapter, args.model, args.items, args.store)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_spec = label = args.model
        if args.organism is not None:
            from mow.data.layouts import OrganismLayout
            from mow.organisms.store import read_public_config

            adapter = OrganismLayout(args.organism).adapter
            model_spec = label = str(read_public_config(args.organism)["model"])
        else:
            if args.random_model:
                try:
                    model_spec = str(random_model(Path(tmp) / "model", model_spec, args.random_model))
                except ValueError as exc:
                    parser.error(str(exc))
                label = f"random weights, {args.model} with {' '.join(args.random_model)}"
            adapter = make_adapter(Path(tmp) / "adapter", model_spec)
        def kl_run(mode: str, adapter: Path, store: Path | None = None) -> dict:
            command = [sys.executable, __file__, "--kl-mode", mode, "--adapter", str(adapter), "--model", model_spec,
                       "--items", str(args.items)] + ([] if store is None else ["--store", str(store)])
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        # The modes alternate, each run in a fresh process: a run's peak resident memory moves by up to 100 MiB
        # from run to run (heap fragmentation; single-threaded too), so one pair of runs says little about "every
        # run". The worst ratio pairs the largest one-copy peak with the smallest two-model peak.
        runs: dict[str, list[dict]] = {"one-copy": [], "two-models": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(kl_run(mode, adapter))
        one, two = runs["one-copy"][0], runs["two-models"][0]
        every = {m: sorted(r["positions"] / r["seconds"] for r in rs) for m, rs in runs.items()}
        rate = {m: statistics.median(v) for m, v in every.items()}
        above = {m: sorted(r["peak_rss"] - r["rss_after_imports"] for r in rs) for m, rs in runs.items()}
        raw = {m: statistics.median(r["peak_rss"] for r in rs) for m, rs in runs.items()}
        print(f"per-token KL on {one['positions']} positions ({label}, 2 threads, {args.repeats} runs per mode, "
              f"each in a fresh process; medians)")
        print(f"  {'':<34}{'one copy + adapter':>20}{'two loaded models':>20}{'ratio':>8}")
        print(f"  {'tokens/s':<34}{rate['one-copy']:>20.0f}{rate['two-models']:>20.0f}"
              f"{rate['one-copy'] / rate['two-models']:>8.2f}  (target >= 1.0)")
        print(f"  {'  every run':<34}{', '.join(f'{v:.0f}' for v in every['one-copy']):>20}"
              f"{', '.join(f'{v:.0f}' for v in every['two-models']):>20}"
              f"{every['one-copy'][0] / every['two-models'][-1]:>8.2f}  (worst pair: slowest / fastest)")
        median = {m: statistics.median(v) for m, v in above.items()}
        print(f"  {'peak RSS above imports (MiB)':<34}{median['one-copy']:>20.0f}{median['two-models']:>20.0f}"
              f"{median['one-copy'] / median['two-models']:>8.2f}  (target <= 0.6)")
        print(f"  {'  every run (MiB)':<34}{', '.join(f'{v:.0f}' for v in above['one-copy']):>20}"
              f"{', '.join(f'{v:.0f}' for v in above['two-models']):>20}"
              f"{above['one-copy'][-1] / above['two-models'][0]:>8.2f}  (worst pair: largest / smallest)")
        print(f"  {'peak RSS, raw (MiB)':<34}{raw['one-copy']:>20.0f}{raw['two-models']:>20.0f}"
              f"{raw['one-copy'] / raw['two-models']:>8.2f}")
        print(f"  mean KL(tuned||base): {one['mean_kl']:.5f} vs {two['mean_kl']:.5f} (same numbers, two routes)")
        store = Path(tmp) / "base-side"
        first = kl_run("one-copy", adapter, store)
        second = kl_run("one-copy", make_adapter(Path(tmp) / "adapter-2", model_spec, seed=1), store)
        rate_first, rate_second = (r["positions"] / r["seconds"] for r in (first, second))
        print(f"a second organism of the same base, its base side read from the store "
              f"(reused sets: {', '.join(second['reused']) or 'none'})")
        memory = [r["peak_rss"] - r["rss_after_imports"] for r in (first, second)]
        print(f"  tokens/s: first diff (writes the store) {rate_first:.0f}, second diff {rate_second:.0f}: "
              f"{rate_second / rate_first:.2f}x; peak RSS above imports {memory[0]:.0f} vs {memory[1]:.0f} MiB")
        timing = cache_and_crosscoder(adapter, model_spec, args.items, Path(tmp))
        print(f"activation cache, {timing['tokens']} tokens, 1 layer, both models")
        print(f"  bare forward passes {timing['bare_s']:.1f} s, writing the cache {timing['cache_s']:.1f} s: "
              f"overhead ratio {timing['cache_s'] / timing['bare_s']:.2f}")
        print(f"crosscoder (BatchTopK, {timing['latents']} latents, k={timing['k']}, batch {timing['batch']}): "
              f"{timing['crosscoder_tokens'] / timing['crosscoder_s']:.0f} training tokens/s")


if __name__ == "__main__":
    main()
