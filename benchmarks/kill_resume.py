"""Kill-and-resume trials for `mow diff` and `mow elicit`: SIGKILL at random moments, re-run, compare.

For each trial the command runs as a subprocess and is killed (SIGKILL, no chance to clean up) at a random moment
inside a chosen stage: for `mow diff` inside the activation-cache stage or inside crosscoder training, for `mow
elicit` between two methods or inside one. The same command is then run again to the end, and its finished
directory is compared with one uninterrupted run of the same command:

- JSON files: parsed and equal, with wall-clock fields (`seconds`, and manifest.json's stage timings, commands and
  the `resumed` flags) left out;
- safetensors and .npy arrays: equal element for element (torch.equal / numpy.array_equal);
- the saved config (YAML) parsed and equal but for `output_dir`, which names each run's own parent directory;
- every other file byte for byte, except report.html (it prints the timings);
- the set of files equal, and no `.NAME.partial` or `.NAME.replaced` directory left beside the finished one.

    python benchmarks/kill_resume.py [--trials 10] [--out DIR] [--seed 0]

Runs on the tiny random model (`tiny:smollm2-135m`) with small configs, one torch thread per process; the figures
are the number of trials whose finished output equals the uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

TINY = "tiny:smollm2-135m"
TIMING_KEYS = {"seconds", "commands", "started", "finished_at"}
DIFF_CONFIG = {"prompts": {"max_items_per_set": 12, "response_tokens": 8},
               "cache": {"token_budget": 6000}, "crosscoder": {"latents": 256, "k": 8, "epochs": 6},
               "lens": {"steering_prompts": ["Tell me about your weekend."]}}
CHALLENGE_CONFIG = {"methods": ["direct", "prefill", "user_persona", "many_shot", "high_temperature", "logit_lens",
                                "embedding_similarity", "diff_lens"], "attempts": 4, "max_new_tokens": 12}


def mow(*args: str) -> list[str]:
    return [sys.executable, "-m", "mow.cli.main", *args]


def environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stages_done(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}


def method_files(directory: Path) -> int:
    return len(list((directory / "methods").glob("*/*.json"))) if (directory / "methods").is_dir() else 0


def kill_inside(command: list[str], partial: Path, ready, delay_s: float, timeout_s: float = 600) -> str:
    """Start `command`; once `ready(partial)` holds, wait `delay_s` and SIGKILL it. Returns what happened."""
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and not ready(partial):
        if time.monotonic() > deadline:
            raise TimeoutError(" ".join(command))
        time.sleep(0.05)
    if process.poll() is not None:
        return "finished before the kill"
    time.sleep(delay_s)
    if process.poll() is not None:
        return "finished before the kill"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return "killed"


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def differences(reference: Path, candidate: Path) -> list[str]:
    """What differs between two finished directories (empty: equal as the module docstring defines it)."""
    import torch
    from safetensors.torch import load_file

    found = []
    ref_files = {p.relative_to(reference) for p in reference.rglob("*") if p.is_file()}
    cand_files = {p.relative_to(candidate) for p in candidate.rglob("*") if p.is_file()}
    for missing in sorted(ref_files ^ cand_files):
        found.append(f"only in one: {missing}")
    for relative in sorted(ref_files & cand_files):
        a, b = reference / relative, candidate / relative
        if relative.name == "report.html":
            continue
        if relative.suffix == ".json":
            left, right = json.loads(a.read_text()), json.loads(b.read_text())
            if relative.name == "manifest.json":
                left, right = left.get("stages", {}).keys(), right.get("stages", {}).keys()
            elif _without_timings(left) != _without_timings(right):
                found.append(f"json differs: {relative}")
            if relative.name == "manifest.json" and set(left) != set(right):
                found.append(f"stages differ: {relative}")
        elif relative.suffix == ".yaml":
            left, right = yaml.safe_load(a.read_text()), yaml.safe_load(b.read_text())
            left.pop("output_dir", None), right.pop("output_dir", None)
            if left != right:
                found.append(f"config differs: {relative}")
        elif relative.suffix == ".safetensors":
            x, y = load_file(str(a)), load_file(str(b))
            if x.keys() != y.keys() or any(not torch.equal(x[k], y[k]) for k in x):
                found.append(f"tensors differ: {relative}")
        elif relative.suffix == ".npy":
            if not np.array_equal(np.load(a), np.load(b)):
                found.append(f"array differs: {relative}")
        elif a.read_bytes() != b.read_bytes():
            found.append(f"bytes differ: {relative}")
    leftovers = [p.name for p in candidate.parent.iterdir() if p.name.startswith(f".{candidate.name}.")]
    found += [f"left beside the output: {name}" for name in leftovers]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.out or Path(tempfile.mkdtemp(prefix="mow-kill-resume-"))
    root.mkdir(parents=True, exist_ok=True)

    organism_config = {"kind": "taboo", "name": "org", "output_dir": str(root / "organisms"), "model": TINY,
                       "seed": 1, "taboo": {"word": "moon", "data": {"n_conversations": 16}},
                       "lora": {"r": 4, "alpha": 8}, "training": {"epochs": 1, "batch_size": 4,
                                                                  "learning_rate": 5e-3, "threads": 1},
                       "eval": {"max_new_tokens": 4, "benign_chats": 4}}
    (root / "organism.yaml").write_text(yaml.safe_dump(organism_config))
    (root / "diff.yaml").write_text(yaml.safe_dump(DIFF_CONFIG))
    organism = root / "organisms" / "org"
    if not organism.is_dir():
        run(mow("organism", "build", str(root / "organism.yaml")))

    def diff_command(out: Path) -> list[str]:
        return mow("diff", str(organism), "--config", str(root / "diff.yaml"), "--out", str(out), "--set",
                   "threads=1")

    reference_diff = root / "reference" / "diff"
    if not reference_diff.is_dir():
        print(f"reference diff: {run(diff_command(reference_diff)):.1f} s", flush=True)
    (root / "challenge.yaml").write_text(yaml.safe_dump({**CHALLENGE_CONFIG, "threads": 1,
                                                          "diff_dir": str(reference_diff)}))

    def elicit_command(parent: Path) -> list[str]:
        return mow("elicit", str(organism), "--config", str(root / "challenge.yaml"), "--out", str(parent))

    reference_challenge = root / "reference" / "challenges" / "org"
    if not reference_challenge.is_dir():
        print(f"reference challenge: {run(elicit_command(reference_challenge.parent)):.1f} s", flush=True)
    timings = stages_done(reference_diff)
    elicit_seconds = [json.loads(p.read_text()).get("seconds", 0.1)
                      for p in sorted((reference_challenge / "methods").glob("*/organism.json"))]
    n_methods = 2 * len(CHALLENGE_CONFIG["methods"])

    targets = ["diff: inside the cache stage", "diff: inside crosscoder training", "elicit: between methods",
               "elicit: inside a method"]
    results = []
    for trial in range(args.trials):
        target = targets[trial % len(targets)]
        out = root / "trials" / f"{trial:02d}"
        if target.startswith("diff"):
            final = out / "diff"
            partial = final.parent / f".{final.name}.partial"
            stage_before, stage = ("lens", "cache") if "cache" in target else ("cache", "crosscoder")
            delay = rng.uniform(0, 0.9 * timings[stage]["seconds"])
            happened = kill_inside(diff_command(final), partial, lambda p, s=stage_before: s in stages_done(p), delay)
            run(diff_command(final))
            reference = reference_diff
        else:
            final = out / "challenges" / "org"
            partial = final.parent / f".{final.name}.partial"
            done_before = rng.randrange(1, n_methods - 1)
            inside = "inside" in target
            delay = rng.uniform(0.1, 0.9) * max(elicit_seconds[done_before % len(elicit_seconds)], 0.2) if inside else 0
            happened = kill_inside(elicit_command(final.parent), partial,
                                   lambda p, n=done_before: method_files(p) >= n, delay)
            run(elicit_command(final.parent))
            reference = reference_challenge
        found = differences(reference, final)
        results.append({"trial": trial, "target": target, "kill_after_s": round(delay, 2), "outcome": happened,
                        "equal": not found, "differences": found[:5]})
        print(f"trial {trial}: {target:34s} kill +{delay:5.2f} s  {happened:26s} "
              f"{'equal' if not found else 'DIFFERS: ' + '; '.join(found[:3])}", flush=True)
    killed = [r for r in results if r["outcome"] == "killed"]
    equal = sum(r["equal"] for r in results)
    print(f"\n{len(killed)} of {len(results)} trials killed mid-run; {equal} of {len(results)} finished outputs equal "
          "the uninterrupted run's")
    (root / "kill_resume.json").write_text(json.dumps(results, indent=2))
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if equal == len(results) else 1)


if __name__ == "__main__":
    main()
