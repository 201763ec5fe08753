"""One training run of an adapter, in this process or on every rank of an `accelerate launch`.

The pipelines call `train_adapter`: it trains in process, or writes the job (settings and examples) and launches
`mow.finetune.worker` on N processes through `mow.finetune.launch`, then reads the result rank 0 wrote. Either way the
adapter ends up in `adapter_dir`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from peft import PeftModel
from pydantic import Field

from mow.data.records import ChatExample
from mow.finetune.config import LaunchSettings, LoraSettings, SteeringSettings, TrainingSettings
from mow.finetune.launch import check_launch, run_launch
from mow.finetune.locality import LocalityTerm
from mow.finetune.lora import attach_lora
from mow.finetune.sft import TokenExample, TrainResult, check_training_settings, sft_config, split_examples, train
from mow.finetune.steering import check_steering, resolve_steering
from mow.workbench.config import Seed, StrictModel
from mow.workbench.errors import UserError
from mow.workbench.models import load_model, load_tokenizer, quantization_config


class TrainJob(StrictModel):
    """Everything a worker process needs to train one adapter; written as JSON for `accelerate launch`."""

    model: str
    trust_remote_code: bool = False
    load_in_4bit: bool = False
    seed: Seed = 0
    lora: LoraSettings
    training: TrainingSettings
    checkpoint_dir: Path
    adapter_dir: Path
    steering: SteeringSettings | None = Field(None, description="directions ablated or added during training")
    locality: LocalityTerm | None = Field(None, description="KL to the base model on these texts, added to the loss")
    # Set for a launch only: where the workers read the examples and rank 0 writes the result.
    examples_path: Path | None = Field(None, description="jsonl: chat examples, or token examples (input_ids, labels)")
    examples_kind: Literal["chat", "token"] | None = None
    result_path: Path | None = None


def write_examples(path: Path, examples: list[ChatExample] | list[TokenExample]) -> str:
    """Write the examples a job trains on; returns their kind ('chat' or 'token')."""
    chat_examples, token_examples = split_examples(examples)
    chats = not token_examples
    rows = ([ex.model_dump(mode="json") for ex in chat_examples] if chats
            else [{"input_ids": ex.input_ids, "labels": ex.labels} for ex in token_examples])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return "chat" if chats else "token"


def read_examples(job: TrainJob) -> list[ChatExample] | list[TokenExample]:
    if job.examples_path is None:
        raise ValueError("this job has no examples file: examples_path is set for a launch only")
    rows = [json.loads(line) for line in job.examples_path.read_text(encoding="utf-8").splitlines() if line]
    if job.examples_kind == "chat":
        return [ChatExample.model_validate(row) for row in rows]
    return [TokenExample(row["input_ids"], row["labels"]) for row in rows]


def run_job(job: TrainJob, examples: list[ChatExample] | list[TokenExample]) -> tuple[TrainResult, PeftModel]:
    """Train one adapter in this process (one rank of a launch, or the only process) and save it."""
    # The SFTConfig comes first: under ZeRO-3 it is what makes from_pretrained partition the weights as they load.
    args = sft_config(job.training, job.checkpoint_dir, job.seed, len(examples),
                      assistant_only_loss=isinstance(examples[0], ChatExample))
    tokenizer = load_tokenizer(job.model, job.trust_remote_code, job.training.chat_template)
    base = load_model(job.model, load_in_4bit=job.load_in_4bit, seed=job.seed, trust_remote_code=job.trust_remote_code)
    plan = None
    if job.steering is not None:
        plan = resolve_steering(job.steering, base.config.hidden_size, base.config.num_hidden_layers)
    model = attach_lora(base, job.lora, job.seed, job.training.gradient_checkpointing)
    result = train(model, tokenizer, examples, job.training, job.checkpoint_dir, job.seed,
                   adapter_dir=job.adapter_dir, args=args, steering=plan, locality=job.locality)
    return result, model


def preflight_training(load_in_4bit: bool, training: TrainingSettings, launch: LaunchSettings,
                       model: str | None = None, steering: SteeringSettings | None = None) -> dict | None:
    """Every check of the training hardware and launch that can run before a model loads (QLoRA, precision,
    optimizer, processes against devices, launch configs, steering directions against the model's shape); returns
    the resolved accelerate config of a launch."""
    quantization_config(load_in_4bit)
    if steering is not None:
        if model is None:
            raise ValueError("preflight_training: checking steering directions needs the model spec")
        check_steering(steering, model)
    check_training_settings(training)
    accelerate_config = check_launch(launch)
    if launch.distributed and training.batch_size % launch.num_processes:
        raise UserError(f"training.batch_size {training.batch_size} does not split evenly over --num-processes "
                        f"{launch.num_processes} (it is the batch per optimizer step over all processes)")
    return accelerate_config


def train_adapter(job: TrainJob, examples: list[ChatExample] | list[TokenExample], launch: LaunchSettings,
                  accelerate_config: dict | None) -> tuple[TrainResult, PeftModel | None, dict]:
    """Train and save one adapter; returns the result, the trained model where it is in this process (None after a
    launch: load it from `job.adapter_dir`), and what to record about the launch."""
    if not launch.distributed:
        result, model = run_job(job, examples)
        return result, model, {"launcher": "none"}
    if accelerate_config is None:
        raise ValueError("a distributed launch needs its resolved accelerate config (from preflight_training)")
    job_dir = job.checkpoint_dir / "launch"
    kind = write_examples(job_dir / "examples.jsonl", examples)
    job = job.model_copy(update={"examples_path": job_dir / "examples.jsonl", "examples_kind": kind,
                                 "result_path": job_dir / "result.json"})
    written = run_launch(accelerate_config, job_dir, json.loads(job.model_dump_json()), launch)
    record = {"launcher": launch.launcher, "accelerate_config": accelerate_config}
    return TrainResult(**written), None, record
