"""LoRA supervised fine-tuning through TRL's SFTTrainer: the one module that touches TRL.

Chat examples: loss on assistant tokens only, on every assistant turn (via a training chat template with generation
markers). Token examples (already tokenized, with labels of -100 where no loss is taken) train as given: plain causal
LM loss on documents, for instance. Checkpoints go to a directory; training again with the same directory resumes
from the last checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import SFTConfig, SFTTrainer

from mow.data.records import ChatExample
from mow.finetune.config import TrainingSettings
from mow.finetune.labelled_loss import add_labelled_loss_head, supports_labelled_loss
from mow.finetune.locality import LocalityTerm, locality_kl
from mow.finetune.precision import resolve_precision
from mow.finetune.steering import SteeringPlan, steered
from mow.workbench.chat import fit_messages, training_tokenizer
from mow.workbench.errors import UserError
from mow.workbench.files import read_json


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    runtime_s: float
    trained_tokens: int
    tokens_per_second: float
    resumed_from: str | None
    precision: str
    processes: int
    loss_curve: list[float]  # the logged training loss, every `logging_steps` steps
    locality_kl_curve: list[float] = field(default_factory=list)  # logged locality KL (nats per position), if any

    def to_dict(self) -> dict:
        return asdict(self)


def chat_dataset(examples: list[ChatExample], tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """The chats as TRL reads them, each fitted to the tokenizer's template (`workbench.chat.fit_messages`)."""
    return Dataset.from_list([{"messages": fit_messages(tokenizer, ex.chat())} for ex in examples])


@dataclass(frozen=True)
class TokenExample:
    """One tokenized training sequence; `labels` is `input_ids` with -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


def token_dataset(examples: list[TokenExample]) -> Dataset:
    return Dataset.from_list([{"input_ids": ex.input_ids, "labels": ex.labels} for ex in examples])


def check_truncation(tokenizer: PreTrainedTokenizerBase, examples: list[ChatExample], settings: TrainingSettings,
                     source: str) -> dict:
    """How many chats are longer than `max_length` tokens and would lose their end (TRL cuts them without a word):
    a report for the build output and manifest, and an error above `max_truncated_fraction`."""
    if not examples:
        return {"examples": 0, "truncated": 0, "max_length": settings.max_length, "longest": 0}
    encoded = tokenizer.apply_chat_template([fit_messages(tokenizer, ex.chat()) for ex in examples], tokenize=True,
                                            return_dict=True)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    cut = sum(length > settings.max_length for length in lengths)
    report = {"examples": len(lengths), "truncated": cut, "max_length": settings.max_length,
              "longest": max(lengths, default=0)}
    if lengths and cut / len(lengths) > settings.max_truncated_fraction:
        raise UserError(f"{source}: {cut} of {len(lengths)} chats are longer than training.max_length "
                        f"{settings.max_length} tokens (longest {report['longest']}) and would be cut, above "
                        f"training.max_truncated_fraction {settings.max_truncated_fraction}; raise one of them")
    return report


def split_examples(examples: list[ChatExample] | list[TokenExample]) -> tuple[list[ChatExample], list[TokenExample]]:
    """The examples as (chats, token sequences), one of the two empty (both for no examples); a mix is an error."""
    chats = [ex for ex in examples if isinstance(ex, ChatExample)]
    tokens = [ex for ex in examples if isinstance(ex, TokenExample)]
    if len(chats) != len(examples) and len(tokens) != len(examples):
        raise TypeError("train on chat examples or on token examples, not a mix")
    return chats, tokens


def world_size() -> int:
    """Processes of the launch this process belongs to (1 outside `accelerate launch`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


def check_training_settings(settings: TrainingSettings) -> None:
    """What the hardware must offer for these settings; a one-line error naming what to change."""
    resolve_precision(settings.precision)
    if settings.optimizer in EIGHT_BIT_OPTIMIZERS:
        if not torch.cuda.is_available():
            raise UserError(f"training.optimizer: {settings.optimizer} (bitsandbytes) needs a CUDA GPU (none found); "
                            "use adamw_torch_fused")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(f"training.optimizer: {settings.optimizer} needs bitsandbytes; "
                            "run: pip install -e '.[gpu]', or use adamw_torch_fused")


def sft_config(settings: TrainingSettings, output_dir: Path, seed: int, n_examples: int,
               assistant_only_loss: bool = True) -> SFTConfig:
    """The SFTConfig for `settings`. Create it before loading the model: under DeepSpeed ZeRO-3 its creation is what
    lets `from_pretrained` partition the weights as they load."""
    precision = resolve_precision(settings.precision)
    processes = world_size()
    steps_per_epoch = math.ceil(n_examples / (settings.batch_size * settings.grad_accum))
    total_steps = max(1, math.ceil(steps_per_epoch * settings.epochs))
    interactive = sys.stderr.isatty()
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size // processes,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=math.ceil(settings.warmup_ratio * total_steps),
        weight_decay=settings.weight_decay,
        max_length=settings.max_length,
        assistant_only_loss=assistant_only_loss,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=settings.logging_steps,
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        optim=settings.optimizer,
        padding_free=settings.padding_free,
        activation_checkpointing=settings.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every LoRA parameter takes part in every forward
        disable_tqdm=not interactive,  # off a terminal the Trainer prints one log line per logging step instead
    )


class WorkbenchSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss, on a CPU, projects only labelled positions through the LM head, whose training steps
    run under a steering plan (concept ablation or addition) when one is given, and whose loss adds a locality term
    (KL to the base model on a fixed set of texts, `finetune.locality`) when one is given.

    Everything else (data preparation, assistant masks, the optimizer, DDP and DeepSpeed) is TRL's and the
    Trainer's. On other devices, or where the head rescales its logits in ways `labelled_loss` does not reproduce, the
    loss is TRL's own."""

    def __init__(self, *args, labelled_positions_head: bool = True, steering: SteeringPlan | None = None,
                 locality: LocalityTerm | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.steering = steering
        self.locality = locality
        causal_lm = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        self.labelled_positions_head = (labelled_positions_head and self.args.device.type == "cpu"
                                        and supports_labelled_loss(causal_lm))
        if self.labelled_positions_head:
            add_labelled_loss_head(causal_lm)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The hooks stay through the backward: gradient checkpointing re-runs the layers' forwards there.
        with steered(model, self.steering):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.labelled_positions_head:
            loss = self._labelled_loss(model, inputs, num_items_in_batch)
        else:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.locality is not None:
            loss = loss + self._locality_loss(model, self.locality, num_items_in_batch)
        return loss

    def _locality_loss(self, model, locality: LocalityTerm, num_items_in_batch) -> torch.Tensor:
        """The weighted locality KL of this step's locality batch, scaled as the Trainer scales the loss for
        gradient accumulation. Under DDP each rank reads the same batch and the gradients average to one copy."""
        peft_model = self.accelerator.unwrap_model(model)  # a second forward through the DDP wrapper is not allowed
        batch = locality.batch(self.state.global_step, self.processing_class.pad_token_id, self.args.device)
        kl = locality_kl(peft_model, batch)
        self._metrics["train"]["locality_kl"].append(kl.item())
        scaled_for_accumulation = self.loss_is_scaled_for_ga
        if scaled_for_accumulation is None:
            scaled_for_accumulation = (self.model_accepts_loss_kwargs and num_items_in_batch is not None
                                       ) or self.compute_loss_func is not None
        # The Trainer divides an unscaled loss by the accumulation steps; a scaled one is already a share of the step.
        share = 1 / self.current_gradient_accumulation_steps if scaled_for_accumulation else 1
        return locality.weight * share * kl

    def _labelled_loss(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**forward_inputs, labelled_loss_labels=inputs["labels"], num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer: DDP averages the gradients across ranks
        labelled = self.accelerator.gather_for_metrics(outputs.labelled_tokens).sum()
        correct = self.accelerator.gather_for_metrics(outputs.correct_tokens).sum()
        self._metrics["train"]["mean_token_accuracy"].append((correct / labelled.clamp(min=1)).item())
        return loss


def build_trainer(model: PeftModel, tokenizer: PreTrainedTokenizerBase,
                  examples: list[ChatExample] | list[TokenExample], settings: TrainingSettings, output_dir: Path,
                  seed: int, args: SFTConfig | None = None, steering: SteeringPlan | None = None,
                  locality: LocalityTerm | None = None) -> SFTTrainer:
    """The trainer for `examples`; pass `args` where the SFTConfig had to exist before the model (DeepSpeed)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    chat_examples, token_examples = split_examples(examples)
    chats = not token_examples
    too_long = [len(ex.input_ids) for ex in token_examples if len(ex.input_ids) > settings.max_length]
    if too_long:
        raise ValueError(f"{len(too_long)} token examples exceed max_length {settings.max_length} "
                         f"(longest {max(too_long)}): split them before training, never truncate")
    if locality is not None and max(map(len, locality.sequences)) > settings.max_length:
        raise ValueError(f"a locality text exceeds max_length {settings.max_length}: split it before training")
    return WorkbenchSFTTrainer(
        model=model,
        args=args or sft_config(settings, output_dir, seed, len(examples), assistant_only_loss=chats),
        train_dataset=chat_dataset(chat_examples, tokenizer) if chats else token_dataset(token_examples),
        processing_class=training_tokenizer(tokenizer),
        labelled_positions_head=settings.labelled_positions_head,
        steering=steering,
        locality=locality,
    )


def save_adapter(trainer: SFTTrainer, directory: Path) -> None:
    """Rank 0 writes the adapter (safetensors). Under DeepSpeed ZeRO-3 each rank holds a shard of every parameter,
    so the LoRA parameters (only those: the frozen base is never gathered) are gathered first, on every rank."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    main_process = trainer.accelerator.is_main_process
    if trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled():
        import deepspeed  # optional ([gpu] extra): only under ZeRO-3

        trainable = [p for p in model.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if main_process:
                model.save_pretrained(directory, safe_serialization=True)
    elif main_process:
        model.save_pretrained(directory, safe_serialization=True)
    trainer.accelerator.wait_for_everyone()


def trained_token_count(trainer: SFTTrainer, epochs: float) -> int:
    """Non-padding tokens the forward passes see over the run (what tokens-per-second counts)."""
    per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    return int(per_epoch * epochs)


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer state was written (the Trainer writes it last), or None.

    A kill in the middle of saving leaves a checkpoint without it; that one is skipped, not resumed from."""
    def complete(path: Path) -> bool:
        try:
            read_json(path / "trainer_state.json", "checkpoint trainer state")
        except (OSError, ValueError):
            return False
        return path.name.split("-")[-1].isdigit()

    found = [p for p in checkpoint_dir.glob("checkpoint-*") if complete(p)]
    return max(found, key=checkpoint_step, default=None)


def train(model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: list[ChatExample] | list[TokenExample],
          settings: TrainingSettings, checkpoint_dir: Path, seed: int, adapter_dir: Path | None = None,
          args: SFTConfig | None = None, steering: SteeringPlan | None = None,
          locality: LocalityTerm | None = None) -> TrainResult:
    """Train the adapter in place and save it to `adapter_dir` (if given); resumes from the newest checkpoint in
    `checkpoint_dir` if there is one. Under `accelerate launch` every rank calls this; rank 0 saves. `steering`
    ablates or adds directions in the residual stream during the training steps only; `locality` adds a KL term to
    the base model on its texts."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(model, tokenizer, examples, settings, checkpoint_dir, seed, args=args, steering=steering,
                            locality=locality)
    last = last_complete_checkpoint(checkpoint_dir)
    if last and trainer.accelerator.is_main_process:
        print(f"resuming from {last.name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    runtime = time.perf_counter() - start
    done_fraction = 1.0
    if last:
        done_fraction = 1 - checkpoint_step(last) / max(1, trainer.state.max_steps)
    tokens = int(trained_token_count(trainer, settings.epochs) * done_fraction)
    if adapter_dir is not None:
        save_adapter(trainer, adapter_dir)
    return TrainResult(steps=trainer.state.global_step, train_loss=float(output.training_loss), runtime_s=runtime,
                       trained_tokens=tokens, tokens_per_second=tokens / max(runtime, 1e-9),
                       resumed_from=last.name if last else None,
                       precision="bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
                       processes=trainer.accelerator.num_processes,
                       loss_curve=[entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
                       locality_kl_curve=[entry["locality_kl"] for entry in trainer.state.log_history
                                          if "locality_kl" in entry])
