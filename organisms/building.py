"""Stages the organism pipelines share: open the build directory, read back the training chats, train the adapter,
finish the build.
(`organisms.store` reads finished organisms; this module writes them.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import ADAPTER, CHECKPOINTS, PUBLIC_CONFIG, SEALED_CONFIG
from mow.data.records import ChatExample, read_jsonl
from mow.finetune.config import LaunchSettings, SteeringSettings
from mow.finetune.job import TrainJob, train_adapter
from mow.finetune.lora import check_lora_against_model
from mow.finetune.sft import check_truncation
from mow.finetune.steering import check_steering
from mow.organisms.base import OrganismConfigBase
from mow.organisms.store import load_with_adapter
from mow.workbench.config import dump_config
from mow.workbench.errors import UserError
from mow.workbench.files import sha256_file
from mow.workbench.rundir import Manifest, RunDirectory, log, write_text


def unchanged_sealed_file(partial: Path, manifest: Manifest, relative: str) -> Path:
    """A data file an earlier stage wrote, refused if it changed since (its hash is in the sealed manifest): a
    resumed build trains on what the data stage made, not on an edited copy."""
    if sha256_file(partial / relative) != manifest.sealed["data_hashes"][relative]:
        raise UserError(f"{partial / relative}: changed since it was written; re-run with --restart")
    return partial / relative


def read_training_chats(partial: Path, manifest: Manifest, relative: str) -> list[ChatExample]:
    """The chats the data stage wrote (hash-checked)."""
    return read_jsonl(unchanged_sealed_file(partial, manifest, relative), ChatExample)


def train_stage(manifest: Manifest, config: OrganismConfigBase, partial: Path, chats: list[ChatExample],
                tokenizer: PreTrainedTokenizerBase, launch: LaunchSettings, accelerate_config: dict | None,
                steering: SteeringSettings | None = None) -> PeftModel:
    """The train stage of a chat organism (skipped when the manifest has it): train and save the adapter, in process
    or launched, optionally under steering; returns base + adapter, and drops the checkpoints (optimizer state is
    not part of an organism)."""
    model = None
    if not manifest.done("train"):
        truncation = check_truncation(tokenizer, chats, config.training, "the training chats")
        if truncation["truncated"]:
            log(f"{truncation['truncated']} of {truncation['examples']} training chats are longer than "
                f"training.max_length {config.training.max_length} tokens and lose their end")
        with manifest.stage("train") as record:
            record["truncation"] = truncation
            log(f"training on {len(chats)} chats for {config.training.epochs} epoch(s)"
                + ("" if steering is None else f", {steering.mode} directions from {steering.directions}"))
            job = TrainJob(model=config.model, trust_remote_code=config.trust_remote_code,
                           load_in_4bit=config.load_in_4bit, seed=config.seed, lora=config.lora,
                           training=config.training, checkpoint_dir=partial / CHECKPOINTS,
                           adapter_dir=partial / ADAPTER, steering=steering)
            result, model, launch_record = train_adapter(job, chats, launch, accelerate_config)
            record.update(result.to_dict(), launch=launch_record)
            if steering is not None:
                record["steering"] = check_steering(steering, config.model, "caft").record
    if model is None:
        model = load_with_adapter(config.model, config.load_in_4bit, config.seed, partial / ADAPTER,
                                  config.trust_remote_code)
    shutil.rmtree(partial / CHECKPOINTS, ignore_errors=True)
    return model


def prepare_build_directory(config: OrganismConfigBase, restart: bool) -> tuple[RunDirectory, bool]:
    """The build's run directory and whether it is already built (the resume and restart rule is RunDirectory's;
    the sealed config is what tells one build from another). A build that is to run has its partial directory with
    the sealed and the public config written."""
    rundir = RunDirectory(config.directory(), SEALED_CONFIG, dump_config(config), "build")
    if rundir.finished(restart):
        return rundir, True
    check_lora_against_model(config.lora, config.model, config.trust_remote_code)
    partial = rundir.start(restart)
    write_text(partial / PUBLIC_CONFIG, yaml.safe_dump(config.public_dump(), sort_keys=False))
    return rundir, False


def finish_build(manifest: Manifest, rundir: RunDirectory) -> None:
    """Mark the build finished and move it into place in one rename."""
    manifest.data["finished"] = True
    manifest.save()
    rundir.finish()
    log(f"organism written to {rundir.final}")
