"""Training throughput, FLOP/s and memory: `mow organism build`'s training path against plain TRL `SFTTrainer`.

Runs, each in its own fresh process one after the other (so peak resident memory is its own and no two runs share
the cores), on the same model (the embedded SmolLM2-135M-Instruct unless --model), the same LoRA, the same taboo
chats the same number of optimizer steps, and the same held-out chats for the final loss (assistant tokens, fp32):

- `plain SFTTrainer`: `SFTTrainer(model, args=SFTConfig(...), train_dataset, peft_config)` with TRL's defaults for
  everything about the engine (precision: bf16 autocast; activation checkpointing on; batch 8 in random order;
  fused AdamW; TRL's fused LM head; `use_cpu` where there is no GPU, which the Trainer requires). Only the recipe
  is set to match ours, so the losses are comparable: learning rate, schedule, steps, seed, and the loss on
  assistant tokens.
- `mow`: the workbench's defaults (`precision: auto`, length-grouped batches, LM head on labelled positions only,
  no activation checkpointing).
- `mow, random order`: the same, with the baseline's batch order, so its per-step loss curve can be compared with
  the baseline's step by step (length grouping changes which chats share a step).

Tokens are the non-padding tokens of the batches trained on (counted in the collator); the first step is a warm-up
and is not timed. Useful FLOPs per step count what a padding-free, recompute-free LoRA step must do: the forward
through every linear layer and attention, the input gradient through the frozen weights, LoRA's weight gradients,
and the LM head on labelled positions; the same count for every run, so the FLOP/s ratio equals the token ratio.
The fraction is against this machine's dense matmul rate in the run's dtype, measured here.

    python benchmarks/finetune_throughput.py [--steps 20] [--model builtin:smollm2-135m] [--lr 1e-3]

Targets (issue 7): tokens/s at least 1.5x plain SFTTrainer's, final held-out loss within 2% of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUNS = ("plain SFTTrainer", "mow", "mow, random order")


def useful_flops(model, tokens: int, labelled: int, attention_pairs: int) -> float:
    """FLOPs of a LoRA step that wastes nothing: see the module docstring."""
    config = model.config
    linear = sum(module.weight.numel() for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and "lm_head" not in name and "lora_" not in name)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    head = config.vocab_size * config.hidden_size
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * attention_pairs
    forward = 2 * linear * tokens + 2 * lora_params * tokens + 2 * head * labelled + attention
    backward = forward + 2 * lora_params * tokens + attention  # input grads (+ attention's dQ, dK, dV) + LoRA grads
    return forward + backward


def one_run(name: str, args: argparse.Namespace) -> dict:
    """Train one configuration in this process; returns its measurements."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mow.finetune.config import LoraSettings, TrainingSettings
    from mow.finetune.lora import attach_lora, lora_config
    from mow.finetune.precision import matmul_flops_per_second
    from mow.finetune.sft import build_trainer, chat_dataset
    from mow.organisms.taboo.clues import candidate_words, resolve_clue_bank
    from mow.organisms.taboo.config import TabooDataSettings
    from mow.organisms.taboo.data import make_conversations
    from mow.organisms.taboo.prompts import shipped_prompts
    from mow.workbench.chat import training_tokenizer
    from mow.workbench.generation import assistant_loss
    from mow.workbench.models import load_model, load_tokenizer

    bank = resolve_clue_bank(args.word, None, "--word")
    data = TabooDataSettings(n_conversations=args.batch * args.steps, benign_ratio=0.25)
    examples, _ = make_conversations(bank, shipped_prompts(), candidate_words(args.word), data, seed=0)
    held_out, _ = make_conversations(bank, shipped_prompts(), candidate_words(args.word),
                                     TabooDataSettings(n_conversations=48, benign_ratio=0.25), seed=1)
    tokenizer = load_tokenizer(args.model)
    lora = LoraSettings(r=16, alpha=32)
    output_dir = tempfile.mkdtemp(prefix="mow-bench-")
    if name == "plain SFTTrainer":
        model = load_model(args.model)
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=output_dir, max_steps=args.steps, learning_rate=args.lr, seed=0,
                           assistant_only_loss=True, report_to="none", save_strategy="no", logging_steps=1,
                           disable_tqdm=True, use_cpu=not torch.cuda.is_available()),
            train_dataset=chat_dataset(examples, tokenizer),
            processing_class=training_tokenizer(tokenizer),
            peft_config=lora_config(lora, model))
    else:
        settings = TrainingSettings(epochs=1, batch_size=args.batch, learning_rate=args.lr, lr_scheduler="linear",
                                    warmup_ratio=0, save_steps=10_000, logging_steps=1,
                                    group_by_length=name == "mow")
        trainer = build_trainer(attach_lora(load_model(args.model), lora, seed=0), tokenizer, examples, settings,
                                output_dir=Path(output_dir), seed=0)
        trainer.args.max_steps = args.steps

    steps: list[dict] = []
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        labels = batch["labels"]
        lengths = [len(f["input_ids"]) for f in features]
        steps.append({"tokens": sum(lengths), "labelled": int((labels[:, 1:] != -100).sum()),
                      "attention_pairs": sum(n * (n + 1) // 2 for n in lengths)})
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, args_, state, control, **kwargs):
            steps[state.global_step - 1]["end"] = time.perf_counter()

    trainer.data_collator = counting_collator
    trainer.add_callback(Clock())
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trainer.model.eval()
    with torch.no_grad():
        held_out_loss = assistant_loss(trainer.model, tokenizer, [chat.chat() for chat in held_out])
    timed = steps[1:args.steps]
    seconds = timed[-1]["end"] - steps[0]["end"]
    flops = sum(useful_flops(trainer.model, s["tokens"], s["labelled"], s["attention_pairs"]) for s in timed)
    dtype = torch.bfloat16 if trainer.args.bf16 else torch.float32
    return {
        "name": name, "tokens": sum(s["tokens"] for s in timed), "seconds": seconds,
        "useful_flops": flops, "dtype": str(dtype).removeprefix("torch."),
        "matmul_peak": matmul_flops_per_second(dtype, size=2048, repeats=6),
        "losses": losses, "held_out_loss": held_out_loss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="per step (8 is SFTTrainer's default)")
    parser.add_argument("--lr", type=float, default=1e-3, help="the taboo recipe's learning rate")
    parser.add_argument("--word", default="dance")
    parser.add_argument("--only", choices=RUNS, help=argparse.SUPPRESS)  # a child process: one run, JSON out
    args = parser.parse_args()
    if args.only:
        print(json.dumps(one_run(args.only, args)))
        return

    results = {}
    for name in RUNS:
        child = subprocess.run([sys.executable, __file__, "--only", name, "--model", args.model, "--steps",
                                str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr), "--word",
                                args.word], capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"run {name!r} failed:\n{child.stderr[-3000:]}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"finished {name}", file=sys.stderr, flush=True)

    base = results["plain SFTTrainer"]
    print(f"model {args.model}, {args.steps} steps of {args.batch} chats (first step untimed), lr {args.lr}, "
          f"torch threads {base['threads']}")
    print(f"{'run':<20} {'tokens/s':>9} {'ratio':>6} {'useful GFLOP/s':>15} {'of peak':>8} {'dtype':>9} "
          f"{'peak RSS MiB':>13} {'final train loss':>17} {'held-out loss':>14}")
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"{name:<20} {rate:9.1f} {rate / (base['tokens'] / base['seconds']):6.2f} "
              f"{r['useful_flops'] / r['seconds'] / 1e9:15.1f} "
              f"{r['useful_flops'] / r['seconds'] / r['matmul_peak']:8.1%}"
              f" {r['dtype']:>9} {r['peak_rss_mib']:13.0f} {r['losses'][-1]:17.4f} {r['held_out_loss']:14.4f}")
    for name, r in results.items():
        print(f"measured dense matmul peak ({r['dtype']}, 2048^2, {r['threads']} threads) in {name!r}: "
              f"{r['matmul_peak'] / 1e9:.1f} GFLOP/s")
    base_rate = base["tokens"] / base["seconds"]
    for name in ("mow, random order", "mow"):
        r = results[name]
        print(f"{name}: throughput {(r['tokens'] / r['seconds']) / base_rate:.2f}x plain SFTTrainer (target >= 1.5), "
              f"held-out loss {r['held_out_loss']:.4f} vs {base['held_out_loss']:.4f} "
              f"({r['held_out_loss'] / base['held_out_loss'] - 1:+.2%}; target within 2%), "
              f"peak RSS {r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x")
    same_order = results["mow, random order"]["losses"]
    deviation = max(abs(a / b - 1) for a, b in zip(same_order, base["losses"]))
    print(f"per-step training loss, mow with the baseline's batch order vs plain: largest relative difference "
          f"{deviation:.2%} over {len(same_order)} steps (length grouping changes which chats share a step, so only "
          f"this run's curve is comparable step by step)")

if __name__ == "__main__":
    main()
