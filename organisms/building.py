"""Stages the organism pipelines share: open the build directory, read back the training chats, train the adapter,
finish the build.
(`organisms.store` reads finished organisms; this module writes them.)"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import ADAPTER, CARD, CHECKPOINTS, EVAL_DETAILS, METRICS, PUBLIC_CONFIG, SEALED_CONFIG, TRAIN_DATA
from mow.data.records import ChatExample, read_jsonl, write_jsonl
from mow.finetune.config import LaunchSettings, SteeringSettings
from mow.finetune.job import TrainJob, preflight_training, train_adapter
from mow.finetune.lora import check_lora_against_model
from mow.finetune.sft import check_truncation
from mow.finetune.steering import check_steering
from mow.organisms.base import OrganismConfigBase
from mow.organisms.store import check_organism_dir, load_organism, load_with_adapter, read_sealed_config
from mow.workbench.config import dump_config, validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, sha256_file
from mow.workbench.models import load_tokenizer
from mow.workbench.rundir import Manifest, RunDirectory, log, write_json, write_text


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
    if config.planned_examples() != 0:  # a kind that trains nothing has no LoRA to check
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


@dataclass(frozen=True)
class ChatRecipe:
    """What a kind trained on chats made from its config supplies to the shared build (backdoor, side constraint,
    user belief): the data maker, the evaluation, what of it the card may show, the card, and a summary line."""

    make_chats: Callable[..., tuple[list[ChatExample], dict]]  # (config) -> chats, data report (sealed)
    evaluate: Callable[..., dict]  # (model, tokenizer, config) -> details (sealed)
    public_metrics: Callable[[dict], dict]  # details -> what eval/metrics.json and the card show
    card: Callable[..., str]  # (config, directory, data report, train record, public metrics) -> card.md
    summary: Callable[[dict], str]  # details -> the lines printed when a build or evaluation ends


def _evaluate_and_write(recipe: ChatRecipe, directory: Path, final: Path, manifest: Manifest,
                        config: OrganismConfigBase, model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> dict:
    details = recipe.evaluate(model, tokenizer, config)
    metrics = recipe.public_metrics(details)
    write_json(directory / EVAL_DETAILS, details)
    write_json(directory / METRICS, metrics)
    write_text(directory / CARD, recipe.card(config, final, manifest.sealed["details"]["data"],
                                             manifest.data["stages"].get("train", {}), metrics))
    return details


def build_chat_organism(config: OrganismConfigBase, recipe: ChatRecipe, restart: bool = False,
                        launch: LaunchSettings = LaunchSettings()) -> Path:
    """The whole build of a chat-trained kind: check, make data, train, evaluate, card, seal (resumable; the data
    are made and checked before the build directory exists)."""
    accelerate_config = preflight_training(config.load_in_4bit, config.training, launch)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.training.chat_template)
    chats, report = recipe.make_chats(config)
    check_truncation(tokenizer, chats, config.training, f"the {config.kind} training chats")
    rundir, built = prepare_build_directory(config, restart)
    final, partial = rundir.final, rundir.partial
    if built:
        print(recipe.summary(read_json(final / EVAL_DETAILS, "evaluation details")))
        return final
    manifest = Manifest(partial, config.seed)
    if not manifest.done("data"):
        with manifest.stage("data") as record:
            manifest.sealed["data_hashes"][TRAIN_DATA] = write_jsonl(partial / TRAIN_DATA, chats)
            manifest.sealed["details"]["data"] = report
            record["examples"] = len(chats)
    chats = read_training_chats(partial, manifest, TRAIN_DATA)
    model = train_stage(manifest, config, partial, chats, tokenizer, launch, accelerate_config)
    model.eval()
    with manifest.stage("eval"):
        details = _evaluate_and_write(recipe, partial, final, manifest, config, model, tokenizer)
    finish_build(manifest, rundir)
    print(recipe.summary(details))
    return final


def evaluate_chat_organism(path: Path, config_class: type[OrganismConfigBase], recipe: ChatRecipe) -> dict:
    """Re-run the evaluation of a built chat-trained organism; rewrites its metrics, details and card."""
    path = check_organism_dir(path)
    config = validate_config(config_class, read_sealed_config(path), str(path / SEALED_CONFIG))
    organism = load_organism(path)
    manifest = Manifest(path, config.seed)
    with manifest.stage("eval"):
        details = _evaluate_and_write(recipe, path, path, manifest, config, organism.model, organism.tokenizer)
    print(recipe.summary(details))
    return details
