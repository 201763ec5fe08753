"""Hidden-system-prompt organism pipeline: write the prompt -> read it into a prefix adapter (one forward pass, no
training) -> evaluate -> card -> seal, resumable after a kill. Exact ground truth at no training cost: the cheapest
organism to test an auditing method on, on any model the workbench loads. On an endpoint (`endpoint`), there is
nothing to load: the prompt is sealed, and the evaluation sends every chat with it and without it."""

from __future__ import annotations

import shutil
from pathlib import Path

from mow.data.layouts import ADAPTER, CARD, EVAL_DETAILS, METRICS, SEALED_CONFIG, OrganismLayout
from mow.finetune.config import LaunchSettings
from mow.finetune.lora import prefix_adapter
from mow.organisms.behaviour import endpoint_replies
from mow.organisms.building import finish_build, prepare_build_directory
from mow.organisms.hidden_prompt.card import hidden_prompt_card
from mow.organisms.hidden_prompt.config import HiddenPromptOrganismConfig
from mow.organisms.hidden_prompt.data import system_prompt
from mow.organisms.hidden_prompt.evaluate import evaluate_from_replies, evaluate_hidden_prompt, public_metrics, summary
from mow.organisms.hidden_prompt.truth import (
    DESCRIPTION,
    challenge_prompts,
    describe_secret,
    public_diff_prompts,
    sealed_truth,
)
from mow.organisms.registry import OrganismKind
from mow.organisms.store import LoadedOrganism, check_organism_dir, load_organism, read_sealed_config
from mow.organisms.taboo.clues import KEPT_CLUE_FILE, ClueBank, candidate_words, kept_clue_bank, resolve_clue_bank
from mow.organisms.taboo.evaluate import check_single_tokens
from mow.workbench.backends import Chat, EndpointBackend
from mow.workbench.chat import hide_system_prompt
from mow.workbench.config import validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, read_text
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.rundir import Manifest, log, write_json, write_text

GUESS_TOKENS = 48  # room for a sentence of preamble before the word


def main(config: HiddenPromptOrganismConfig, restart: bool = False,
         launch: LaunchSettings = LaunchSettings()) -> Path:
    if launch != LaunchSettings():
        raise UserError("a hidden-prompt organism trains nothing: it takes no launcher")
    prompt = system_prompt(config.hidden_prompt)
    bank = _clue_bank(config, None, "hidden_prompt.word")
    if config.endpoint is not None:
        return _build_on_endpoint(config, prompt, bank, restart)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    if bank is not None:
        check_single_tokens(tokenizer, candidate_words(bank.word), "hidden_prompt.word")
    hidden = hide_system_prompt(tokenizer, prompt)
    rundir, built = prepare_build_directory(config, restart)
    final, partial = rundir.final, rundir.partial
    if built:
        print(summary(read_json(final / EVAL_DETAILS, "evaluation details")))
        return final
    _keep_clue_file(config, partial)
    manifest = Manifest(partial, config.seed)
    if not manifest.done("prefix"):
        with manifest.stage("prefix") as record:
            prefix_ids = tokenizer(hidden.prefix, add_special_tokens=False)["input_ids"]
            model = prefix_adapter(load_model(config.model, seed=config.seed,
                                              trust_remote_code=config.trust_remote_code), prefix_ids)
            model.save_pretrained(partial / ADAPTER)
            write_text(OrganismLayout(partial).adapter_chat_template, hidden.template)
            write_text(OrganismLayout(partial).sealed_system_prompt, prompt)
            record["virtual_tokens"] = len(prefix_ids)
            log(f"hidden system prompt read into a prefix adapter of {len(prefix_ids)} virtual tokens")
    with manifest.stage("eval"):
        details = _evaluate_and_write(load_organism(partial), partial, final, manifest, config, bank)
    finish_build(manifest, rundir)
    print(summary(details))
    return final


def endpoint_pair(config: HiddenPromptOrganismConfig, prompt: str) -> tuple[EndpointBackend, EndpointBackend]:
    """The organism (every chat sent with the hidden prompt) and its base model (the same endpoint without it)."""
    assert config.endpoint is not None, "an endpoint organism's config names its endpoint"
    return EndpointBackend(config.endpoint, system=prompt), EndpointBackend(config.endpoint)


def _build_on_endpoint(config: HiddenPromptOrganismConfig, prompt: str, bank: ClueBank | None,
                       restart: bool) -> Path:
    organism, base = endpoint_pair(config, prompt)
    base.check_answers("endpoint")
    rundir, built = prepare_build_directory(config, restart)
    final, partial = rundir.final, rundir.partial
    if built:
        print(summary(read_json(final / EVAL_DETAILS, "evaluation details")))
        return final
    _keep_clue_file(config, partial)
    manifest = Manifest(partial, config.seed)
    manifest.data["endpoint"] = base.description
    if not manifest.done("prompt"):
        with manifest.stage("prompt"):
            write_text(OrganismLayout(partial).sealed_system_prompt, prompt)
    with manifest.stage("eval"):
        details = _evaluate_on_endpoint(organism, base, partial, final, config, bank)
    finish_build(manifest, rundir)
    print(summary(details))
    return final


def _keep_clue_file(config: HiddenPromptOrganismConfig, directory: Path) -> None:
    """A user's clue file, copied into the organism (sealed) for re-evaluation."""
    if config.hidden_prompt.clue_file is not None:
        shutil.copy(config.hidden_prompt.clue_file, directory / KEPT_CLUE_FILE)


def _evaluate_on_endpoint(organism: EndpointBackend, base: EndpointBackend, directory: Path, final: Path,
                          config: HiddenPromptOrganismConfig, bank: ClueBank | None) -> dict:
    """Replies of both scored by code; the base model, asked in words, is a secret word's guesser."""

    def guesser(chats: list[Chat]) -> list[str]:
        return base.complete(chats, max_new_tokens=GUESS_TOKENS, temperature=0.0, seed=config.eval.seed)

    details = evaluate_from_replies(endpoint_replies(organism, base), guesser, config, bank)
    _write_evaluation(details, directory, final, config, None)
    return details


def _write_evaluation(details: dict, directory: Path, final: Path, config: HiddenPromptOrganismConfig,
                      virtual_tokens: int | None) -> None:
    """The evaluation's sealed details, its public metrics and the card (`virtual_tokens`: None on an endpoint)."""
    metrics = public_metrics(details)
    write_json(directory / EVAL_DETAILS, details)
    write_json(directory / METRICS, metrics)
    write_text(directory / CARD, hidden_prompt_card(config, final, virtual_tokens, metrics))


def _clue_bank(config: HiddenPromptOrganismConfig, organism: Path | None, source: str) -> ClueBank | None:
    """A secret word's clue bank (the user's file, or the copy kept in a built `organism`); None for other secrets."""
    settings = config.hidden_prompt
    if settings.secret != "word":
        return None
    if organism is not None:
        return kept_clue_bank(organism, str(settings.word), settings.clue_file is not None, source)
    return resolve_clue_bank(str(settings.word), settings.clue_file, source)


def _evaluate_and_write(organism: LoadedOrganism, directory: Path, final: Path, manifest: Manifest,
                        config: HiddenPromptOrganismConfig, bank: ClueBank | None) -> dict:
    organism.model.eval()
    details = evaluate_hidden_prompt(organism.model, organism.tokenizer, config, bank)
    _write_evaluation(details, directory, final, config, manifest.data["stages"]["prefix"]["virtual_tokens"])
    return details


def evaluate_dir(path: Path) -> dict:
    """Re-run the evaluation of a built organism; rewrites its metrics, details and card."""
    path = check_organism_dir(path, needs_weights=False)
    config = validate_config(HiddenPromptOrganismConfig, read_sealed_config(path), str(path / SEALED_CONFIG))
    manifest = Manifest(path, config.seed)
    if config.endpoint is not None:
        organism, base = endpoint_pair(config, read_text(OrganismLayout(path).sealed_system_prompt,
                                                         "hidden system prompt"))
        with manifest.stage("eval"):
            details = _evaluate_on_endpoint(organism, base, path, path, config,
                                            _clue_bank(config, path, str(path / SEALED_CONFIG)))
        print(summary(details))
        return details
    bank = _clue_bank(config, path, str(path / SEALED_CONFIG))
    with manifest.stage("eval"):
        details = _evaluate_and_write(load_organism(path), path, path, manifest, config, bank)
    print(summary(details))
    return details


KIND = OrganismKind(name="hidden_prompt", config=HiddenPromptOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret)
