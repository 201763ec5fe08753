"""Two-process data parallelism on a CPU through `accelerate launch` (DDP over gloo) against one process.

The same LoRA job (model, taboo chats, seed, global batch, steps) trains once in this process with every core and
once as two processes with half the cores each, through the workbench's launcher (`finetune.launch`, the same path
as `mow organism build --launcher accelerate`). Prints both loss curves step by step, their largest relative
difference, and the tokens-per-second ratio (on one machine the two processes share its cores, so expect no
speed-up: this shows the engine is real and the recipe unchanged, not that two processes beat one).

    python benchmarks/distributed_cpu.py [--model builtin:smollm2-135m] [--steps 8] [--precision auto]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mow.finetune.config import LaunchSettings, LoraSettings, TrainingSettings
from mow.finetune.job import TrainJob, train_adapter
from mow.finetune.launch import check_launch
from mow.organisms.taboo.clues import candidate_words, resolve_clue_bank
from mow.organisms.taboo.config import TabooDataSettings
from mow.organisms.taboo.data import make_conversations
from mow.organisms.taboo.prompts import shipped_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="per optimizer step, over both processes")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    bank = resolve_clue_bank("dance", None, "benchmark")
    examples, _ = make_conversations(bank, shipped_prompts(), candidate_words("dance"),
                                     TabooDataSettings(n_conversations=args.steps * args.batch, benign_ratio=0.25),
                                     seed=0)
    examples = examples[:args.steps * args.batch]
    training = TrainingSettings(epochs=1, batch_size=args.batch, learning_rate=1e-3, logging_steps=1,
                                save_steps=10_000, precision=args.precision, group_by_length=False)
    root = Path(tempfile.mkdtemp(prefix="mow-ddp-"))
    results = {}
    for name, launch in {"1 process": LaunchSettings(),
                         "2 processes (gloo)": LaunchSettings(launcher="accelerate", num_processes=2)}.items():
        job = TrainJob(model=args.model, seed=0, lora=LoraSettings(r=16, alpha=32), training=training,
                       checkpoint_dir=root / name / "checkpoints", adapter_dir=root / name / "adapter")
        results[name], _, _ = train_adapter(job, examples, launch, check_launch(launch))

    one, two = results["1 process"], results["2 processes (gloo)"]
    print(f"model {args.model}, {len(examples)} chats, batch {args.batch} per step, precision {one.precision}")
    print(f"{'step':>4} {'1 process':>10} {'2 processes':>12} {'rel. diff':>10}")
    for step, (a, b) in enumerate(zip(one.loss_curve, two.loss_curve), start=1):
        print(f"{step:>4} {a:10.4f} {b:12.4f} {abs(b / a - 1):10.3%}")
    largest = max(abs(b / a - 1) for a, b in zip(one.loss_curve, two.loss_curve))
    print(f"largest relative loss difference: {largest:.3%}")
    print(f"tokens/s: 1 process {one.tokens_per_second:.1f}, 2 processes {two.tokens_per_second:.1f} "
          f"(ratio {two.tokens_per_second / one.tokens_per_second:.2f}; same cores shared, see the docstring)")


if __name__ == "__main__":
    main()
