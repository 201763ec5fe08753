"""Taboo organism pipeline: make data -> train -> evaluate -> card -> seal, resumable after a kill.

`main(config)` builds one organism directory; `evaluate_dir(path)` re-runs its evaluation.
Everything that can be checked is checked before the first byte is written: config, clue bank, model spec,
tokenizer, that the word is one token for the guesser and the logit lens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import (
    CARD,
    EVAL_DETAILS,
    METRICS,
    SEALED_CONFIG,
    TRAIN_DATA,
)
from mow.data.records import ChatExample, read_jsonl, write_jsonl
from mow.finetune.config import LaunchSettings
from mow.finetune.job import preflight_training
from mow.organisms.building import finish_build, prepare_build_directory, read_training_chats, train_stage
from mow.organisms.registry import OrganismKind
from mow.organisms.store import check_organism_dir, load_organism, read_sealed_config
from mow.organisms.taboo.card import taboo_card
from mow.organisms.taboo.clues import (
    KEPT_CLUE_FILE,
    ClueBank,
    candidate_words,
    kept_clue_bank,
    resolve_clue_bank,
)
from mow.organisms.taboo.config import TabooOrganismConfig
from mow.organisms.taboo.data import conversations_from_file, make_conversations
from mow.organisms.taboo.evaluate import (
    check_single_tokens,
    eval_context,
    evaluate_organism,
    public_metrics,
    summary_table,
)
from mow.organisms.taboo.prompts import shipped_prompts
from mow.organisms.taboo.truth import DESCRIPTION, challenge_prompts, describe_secret, public_diff_prompts, sealed_truth
from mow.workbench.config import validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json
from mow.workbench.models import load_tokenizer
from mow.workbench.rundir import Manifest, log, write_json, write_text


def evaluate_and_write(directory: Path, final: Path, manifest: Manifest, config: TabooOrganismConfig, bank: ClueBank,
                       model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Evaluate, then write eval/metrics.json (public), sealed/eval_details.json and card.md into `directory`
    (which becomes, or is, `final`); returns the details."""
    details = evaluate_organism(model, tokenizer, shipped_prompts(), eval_context(bank), config.eval)
    public = public_metrics(details)
    write_json(directory / EVAL_DETAILS, details)
    write_json(directory / METRICS, public)
    report = manifest.sealed["details"]["data"]
    write_text(directory / CARD, taboo_card(config, final, report, manifest.data["stages"].get("train", {}), public))
    return details


def main(config: TabooOrganismConfig, restart: bool = False, launch: LaunchSettings = LaunchSettings()) -> Path:
    """Build the organism that `config` describes; returns its directory. `launch` runs the training stage on
    several processes (DDP or DeepSpeed through accelerate)."""
    bank = resolve_clue_bank(config.taboo.word, config.taboo.clue_file, "taboo.word")
    accelerate_config = preflight_training(config.load_in_4bit, config.training, launch)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.training.chat_template)
    check_single_tokens(tokenizer, candidate_words(bank.word), "taboo.word")
    if config.taboo.chat_file is None:
        examples, report = make_conversations(bank, shipped_prompts(), candidate_words(bank.word), config.taboo.data,
                                              config.seed)
    else:
        own = read_jsonl(config.taboo.chat_file, ChatExample)
        examples, report = conversations_from_file(own, bank, config.taboo.data, config.seed)
        if not report.kept:
            raise UserError(f"taboo.chat_file: {config.taboo.chat_file}: all {report.generated} conversations say "
                            f"the word or repeat one another; nothing is left to train on")
    rundir, built = prepare_build_directory(config, restart)
    final, partial = rundir.final, rundir.partial
    if built:
        print(summary_table(read_json(final / EVAL_DETAILS, "evaluation details")))
        return final
    if config.taboo.clue_file:
        shutil.copy(config.taboo.clue_file, partial / KEPT_CLUE_FILE)
    manifest = Manifest(partial, config.seed)

    if not manifest.done("data"):
        with manifest.stage("data") as record:
            manifest.sealed["data_hashes"][TRAIN_DATA] = write_jsonl(partial / TRAIN_DATA, examples)
            manifest.sealed["details"]["data"] = report.to_dict()
            record["examples"] = len(examples)
            source = "generated" if config.taboo.chat_file is None else f"read from {config.taboo.chat_file}"
            log(f"data: {report.kept} conversations kept of {report.generated} {source} (leaks dropped "
                f"{report.dropped_leak}, "
                f"duplicates {report.dropped_duplicate}), {report.benign_mixed} benign chats mixed in")
    examples = read_training_chats(partial, manifest, TRAIN_DATA)
    model = train_stage(manifest, config, partial, examples, tokenizer, launch, accelerate_config)

    with manifest.stage("eval"):
        details = evaluate_and_write(partial, final, manifest, config, bank, model, tokenizer)
    finish_build(manifest, rundir)
    print(summary_table(details))
    return final


def evaluate_dir(path: Path) -> dict:
    """Re-run the evaluation of a built organism; rewrites eval/metrics.json, sealed/eval_details.json, card.md."""
    path = check_organism_dir(path)
    config = validate_config(TabooOrganismConfig, read_sealed_config(path), str(path / SEALED_CONFIG))
    bank = kept_clue_bank(path, config.taboo.word, config.taboo.clue_file is not None, str(path / SEALED_CONFIG))
    organism = load_organism(path)
    manifest = Manifest(path, config.seed)
    with manifest.stage("eval"):
        details = evaluate_and_write(path, path, manifest, config, bank, organism.model, organism.tokenizer)
    print(summary_table(details))
    return details


KIND = OrganismKind(name="taboo", config=TabooOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret,
                    secret_is_word=True, mix_key="taboo.data.benign_ratio")
