"""Training tokens per second: `mow organism build`'s training path against plain TRL `SFTTrainer`.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same LoRA settings, same taboo chats, same number of
optimizer steps, one after the other in this process. Tokens are the non-padding tokens of the batches actually
trained on (counted in the collator); the first step of each run is a warm-up and is not timed. Two baselines:
- plain SFTTrainer with its defaults (what a user gets from `SFTTrainer(model, train_dataset, peft_config)`);
- plain SFTTrainer with the same precision and activation checkpointing as the workbench (isolates the wrapper).

    python benchmarks/finetune_throughput.py [--steps 12] [--model builtin:smollm2-135m]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from finetune.lora import LoraSettings, attach_lora, lora_config
from finetune.sft import TrainingSettings, build_trainer, chat_dataset
from organisms.taboo.clues import candidate_words, resolve_clue_bank
from organisms.taboo.conversations import TabooDataSettings, make_conversations
from organisms.taboo.prompts import shipped_prompts
from workbench.models import DEFAULT_MODEL, load_model, load_tokenizer


class _Meter(TrainerCallback):
    """Counts trained tokens and wall time from the end of the first (warm-up) step to the end of training."""

    def __init__(self):
        self.tokens_per_step: list[int] = []
        self.start = self.end = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def measure(trainer: SFTTrainer) -> tuple[int, float]:
    meter = _Meter()
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        meter.tokens_per_step.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch
                                     else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    trainer.add_callback(meter)
    trainer.train()
    steps = trainer.state.global_step
    timed_tokens = sum(meter.tokens_per_step[1:steps])
    return timed_tokens, meter.end - meter.start


def plain_trainer(model_spec: str, examples, tokenizer, lora: LoraSettings, steps: int,
                  matched: TrainingSettings | None) -> SFTTrainer:
    """Plain SFTTrainer with its defaults, or with the precision, checkpointing and batch of `matched`."""
    extra = dict(bf16=matched.bf16, gradient_checkpointing=matched.gradient_checkpointing,
                 per_device_train_batch_size=matched.batch_size) if matched else {}
    return SFTTrainer(
        model=load_model(model_spec),
        args=SFTConfig(output_dir=tempfile.mkdtemp(prefix="mow-bench-"), max_steps=steps, report_to="none",
                       save_strategy="no", use_cpu=not torch.cuda.is_available(), logging_steps=10_000,
                       disable_tqdm=True, **extra),
        train_dataset=chat_dataset(examples),
        processing_class=tokenizer,
        peft_config=lora_config(lora),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--word", default="dance")
    args = parser.parse_args()

    bank = resolve_clue_bank(args.word, None, "--word")
    examples, _ = make_conversations(bank, shipped_prompts(), candidate_words(args.word),
                                     TabooDataSettings(n_conversations=160, benign_ratio=0.25), seed=0)
    tokenizer = load_tokenizer(args.model)
    lora = LoraSettings(r=16, alpha=32)
    settings = TrainingSettings(epochs=1, batch_size=4, save_steps=10_000, logging_steps=10_000)

    ours = build_trainer(attach_lora(load_model(args.model), lora, seed=0), tokenizer, examples, settings,
                         output_dir=tempfile.mkdtemp(prefix="mow-bench-"), seed=0)
    ours.args.max_steps = args.steps
    results = {"mow organism build training": measure(ours)}
    results["plain SFTTrainer, defaults"] = measure(plain_trainer(args.model, examples, tokenizer, lora, args.steps,
                                                                  matched=None))
    results["plain SFTTrainer, same precision/batch"] = measure(plain_trainer(args.model, examples, tokenizer, lora,
                                                                              args.steps, matched=settings))
    rates = {name: tokens / seconds for name, (tokens, seconds) in results.items()}
    print(f"model {args.model}, {args.steps} steps (first one untimed), torch threads {torch.get_num_threads()}")
    for name, (tokens, seconds) in results.items():
        print(f"{name:<40} {rates[name]:8.1f} tokens/s  ({tokens} tokens in {seconds:.1f} s)")
    ours_rate = rates["mow organism build training"]
    print(f"ratio mow / plain defaults               {ours_rate / rates['plain SFTTrainer, defaults']:8.2f}")
    print(f"ratio mow / plain, same precision/batch  {ours_rate / rates['plain SFTTrainer, same precision/batch']:8.2f}")


if __name__ == "__main__":
    main()
