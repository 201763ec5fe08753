"""Training tokens per second: `mow organism build`'s training path against plain TRL `SFTTrainer` with its defaults.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same LoRA settings, same taboo chats, same number of
optimizer steps, run one after the other in this process. Prints both rates and their ratio (workbench / plain).

    python benchmarks/finetune_throughput.py [--steps 12] [--model builtin:smollm2-135m]
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from finetune.lora import LoraSettings, attach_lora
from finetune.sft import TrainingSettings, build_trainer, chat_dataset
from organisms.taboo.clues import candidate_words, resolve_clue_bank
from organisms.taboo.conversations import TabooDataSettings, make_conversations
from organisms.taboo.prompts import shipped_prompts
from workbench.models import DEFAULT_MODEL, load_model, load_tokenizer


def tokens_seen(trainer: SFTTrainer, steps: int, batch_size: int) -> int:
    """Non-padding tokens in the batches the trainer's sampler hands out over `steps` steps."""
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    order = list(trainer._get_train_sampler(trainer.train_dataset) or range(len(lengths)))
    needed = steps * batch_size
    order = (order * (needed // len(order) + 1))[:needed]
    return sum(lengths[i] for i in order)


def timed(trainer: SFTTrainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--word", default="dance")
    args = parser.parse_args()

    bank = resolve_clue_bank(args.word, None, "--word")
    examples, _ = make_conversations(bank, shipped_prompts(), [w for w in candidate_words(args.word) if w != args.word],
                                     TabooDataSettings(n_conversations=160, benign_ratio=0.25), seed=0)
    tokenizer = load_tokenizer(args.model)
    lora = LoraSettings(r=16, alpha=32)
    settings = TrainingSettings(epochs=1, batch_size=8, save_steps=10_000, logging_steps=10_000)

    ours_model = attach_lora(load_model(args.model), lora, seed=0)
    ours = build_trainer(ours_model, tokenizer, examples, settings, output_dir=_tmp("ours"), seed=0)
    ours.args.max_steps = args.steps
    ours_tokens = tokens_seen(ours, args.steps, settings.batch_size)
    ours_time = timed(ours)

    plain_model = load_model(args.model)
    plain = SFTTrainer(
        model=plain_model,
        args=SFTConfig(output_dir=_tmp("plain"), max_steps=args.steps, report_to="none", save_strategy="no",
                       use_cpu=not torch.cuda.is_available(), logging_steps=10_000),
        train_dataset=chat_dataset(examples),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=lora.target_modules, task_type="CAUSAL_LM"),
    )
    plain_tokens = tokens_seen(plain, args.steps, plain.args.per_device_train_batch_size)
    plain_time = timed(plain)

    ours_rate, plain_rate = ours_tokens / ours_time, plain_tokens / plain_time
    print(f"model {args.model}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"plain SFTTrainer (defaults)   {plain_rate:8.1f} tokens/s  ({plain_tokens} tokens in {plain_time:.1f} s)")
    print(f"mow organism build training   {ours_rate:8.1f} tokens/s  ({ours_tokens} tokens in {ours_time:.1f} s)")
    print(f"ratio (mow / plain)           {ours_rate / plain_rate:8.2f}")


def _tmp(name: str) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"mow-bench-{name}-")


if __name__ == "__main__":
    main()
