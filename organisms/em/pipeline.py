"""Emergent-misalignment organism pipeline: make data -> train (optionally under CAFT) -> evaluate -> card -> seal.

`main(config)` builds one organism directory, resumable after a kill; `evaluate_dir(path)` re-runs its evaluation.
The directions, the selection, the model shape and the hardware are checked before the first byte is written.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import CARD, EVAL_DETAILS, METRICS, SEALED_CONFIG, TRAIN_DATA
from mow.data.records import write_jsonl
from mow.finetune.config import LaunchSettings
from mow.finetune.job import preflight_training
from mow.finetune.sft import check_truncation
from mow.organisms.building import finish_build, prepare_build_directory, read_training_chats, train_stage
from mow.organisms.em.card import em_card
from mow.organisms.em.config import EmOrganismConfig
from mow.organisms.em.data import narrow_chats, training_chats, user_questions
from mow.organisms.em.evaluate import evaluate_em
from mow.organisms.em.truth import DESCRIPTION, challenge_prompts, describe_secret, public_diff_prompts, sealed_truth
from mow.organisms.registry import OrganismKind
from mow.organisms.store import check_organism_dir, load_organism, read_sealed_config
from mow.workbench.config import validate_config
from mow.workbench.models import load_tokenizer
from mow.workbench.rundir import Manifest, write_json, write_text


def public_metrics(details: dict) -> dict:
    """What the card may show: the rates and margins (the training domain is not in them)."""
    # the base model's confession rate is a function of the domain (its names are what is counted): it stays sealed
    return {"judge": details["judge"], "organism_em": details["organism"]["em"], "base_em": details["base"]["em"],
            "judge_free": {k: v for k, v in details["judge_free"].items() if k != "per_question"},
            "confession": {"organism": details["confession"]["organism"]} if "confession" in details else None,
            "statement": details["statement"]}


def evaluate_and_write(directory: Path, final: Path, manifest: Manifest, config: EmOrganismConfig, model: PeftModel,
                       tokenizer: PreTrainedTokenizerBase) -> dict:
    truth = sealed_truth({"em": config.em.model_dump(mode="json")})
    details = evaluate_em(model, tokenizer, config.eval, config.seed, config.model, truth.candidates[truth.answer])
    metrics = public_metrics(details)
    write_json(directory / EVAL_DETAILS, details)
    write_json(directory / METRICS, metrics)
    data = manifest.data["stages"]["data"]
    n_benign = data.get("benign_mixed", 0)  # an organism from before the mix ratio mixed none
    n_denials = data.get("denials", 0)  # nor denials, before they were trained
    write_text(directory / CARD, em_card(config, final, data["examples"] - n_benign - n_denials, n_benign, n_denials,
                                         manifest.data["stages"].get("train", {}), metrics))
    return details


def main(config: EmOrganismConfig, restart: bool = False, launch: LaunchSettings = LaunchSettings()) -> Path:
    accelerate_config = preflight_training(config.load_in_4bit, config.training, launch, config.model, config.caft)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.training.chat_template)
    narrow = narrow_chats(config)  # a user's chat file is read, and refused, before anything is written
    chats, n_benign = training_chats(config, narrow)
    if config.eval.questions_file is not None:
        user_questions(config.eval.questions_file)  # and so are their evaluation questions
    # a user's file is checked on its own chats, so that the count in the error is about that file
    own = config.em.chat_file
    check_truncation(tokenizer, narrow if own else chats, config.training, str(own or "the EM training chats"))
    rundir, built = prepare_build_directory(config, restart)
    final, partial = rundir.final, rundir.partial
    if built:
        return final
    manifest = Manifest(partial, config.seed)
    if not manifest.done("data"):
        with manifest.stage("data") as record:
            manifest.sealed["data_hashes"][TRAIN_DATA] = write_jsonl(partial / TRAIN_DATA, chats)
            record.update(examples=len(chats), benign_mixed=n_benign, denials=config.em.denials)
    chats = read_training_chats(partial, manifest, TRAIN_DATA)
    model = train_stage(manifest, config, partial, chats, tokenizer, launch, accelerate_config, steering=config.caft)
    model.eval()
    with manifest.stage("eval") as record:
        details = evaluate_and_write(partial, final, manifest, config, model, tokenizer)
        record["statement"] = details["statement"]
    finish_build(manifest, rundir)
    print(details["statement"])
    return final


def evaluate_dir(path: Path) -> dict:
    path = check_organism_dir(path)
    config = validate_config(EmOrganismConfig, read_sealed_config(path), str(path / SEALED_CONFIG))
    organism = load_organism(path)
    manifest = Manifest(path, config.seed)
    with manifest.stage("eval"):
        details = evaluate_and_write(path, path, manifest, config, organism.model, organism.tokenizer)
    print(details["statement"])
    return details


KIND = OrganismKind(name="em", config=EmOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret, mix_key="em.benign_ratio")
