"""SDF organism pipeline: documents -> training mix -> train -> scaling runs -> evaluate -> card and report -> seal.

Resumable after a kill: the corpus stages append as they go, training resumes from its last checkpoint, each
scaling run and the evaluation are manifest stages. Both universes and the corpus live under `sealed/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.data.layouts import ADAPTER, CARD, CHECKPOINTS, EVAL_DETAILS, METRICS, SEALED_CONFIG, sealed_relative
from mow.data.universes import UniversePair, load_universe_pair, resolve_universe
from mow.finetune.config import LaunchSettings
from mow.finetune.job import TrainJob, preflight_training, train_adapter
from mow.organisms.building import finish_build, prepare_build_directory, unchanged_sealed_file
from mow.organisms.registry import OrganismKind
from mow.organisms.sdf.card import sdf_card
from mow.organisms.sdf.config import SdfOrganismConfig
from mow.organisms.sdf.corpus import build_corpus, make_generator
from mow.organisms.sdf.data import training_examples
from mow.organisms.sdf.evaluate import distinguish_only, evaluate_sdf, public_metrics
from mow.organisms.sdf.locality import locality_term, locality_texts
from mow.organisms.sdf.report import sdf_report, summary_table
from mow.organisms.sdf.truth import DESCRIPTION, challenge_prompts, describe_secret, public_diff_prompts, sealed_truth
from mow.organisms.store import check_organism_dir, load_organism, load_with_adapter, read_sealed_config
from mow.workbench.backends import Backend, make_backend
from mow.workbench.config import validate_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, read_jsonl, sha256_file
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.rundir import Manifest, log, write_json, write_text

UNIVERSE = sealed_relative("universe.yaml")
CORPUS = sealed_relative("corpus.jsonl")
CORPUS_WORK = sealed_relative("corpus")
LOCALITY = sealed_relative("locality.jsonl")
REPORT = sealed_relative("report.html")


def train_on_documents(config: SdfOrganismConfig, tokenizer: PreTrainedTokenizerBase, documents: list[str],
                       anchors: list[str], locality: list[str], checkpoints: Path, adapter_dir: Path, record: dict,
                       launch: LaunchSettings, accelerate_config: dict | None) -> PeftModel:
    """A new adapter on the base model, trained on `documents` (plus the mix, and with the KL term on the
    `locality` texts where there are any) and saved to `adapter_dir`; returns the trained model."""
    examples, mix = training_examples(documents, tokenizer, config.sdf.mix, config.training.max_length, config.seed,
                                      anchors)
    term = None
    if locality:
        term = locality_term(locality, tokenizer, config.sdf.locality, config.training.max_length, config.seed)
    log(f"training on {mix.document_chunks} document chunks, {mix.generic_texts} generic texts, "
        f"{mix.anchor_passages} anchor passages and {mix.chats} chats ({mix.tokens} tokens)"
        + (f", KL to base on {len(term.sequences)} locality texts (weight {term.weight:g})" if term else ""))
    job = TrainJob(model=config.model, load_in_4bit=config.load_in_4bit, seed=config.seed, lora=config.lora,
                   training=config.training, checkpoint_dir=checkpoints, adapter_dir=adapter_dir, locality=term)
    result, model, launch_record = train_adapter(job, examples, launch, accelerate_config)
    record.update(result.to_dict(), mix=mix.to_dict(), launch=launch_record,
                  locality_texts=len(term.sequences) if term else 0)
    if model is None:
        model = load_with_adapter(config.model, config.load_in_4bit, config.seed, adapter_dir,
                                  config.trust_remote_code)
    return model


def read_corpus(path: Path) -> list[dict]:
    return read_jsonl(path, "document corpus")


def write_sealed_rows(manifest: Manifest, directory: Path, relative: str, rows: list[dict]) -> None:
    """Write `rows` as jsonl to `directory / relative` and record its hash in the sealed manifest."""
    write_text(directory / relative, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    manifest.sealed["data_hashes"][relative] = sha256_file(directory / relative)


def read_sealed_rows(manifest: Manifest, directory: Path, relative: str) -> list[dict]:
    """The rows `write_sealed_rows` wrote (hash-checked: a resumed build trains on them)."""
    return read_corpus(unchanged_sealed_file(directory, manifest, relative))


def main(config: SdfOrganismConfig, restart: bool = False, launch: LaunchSettings = LaunchSettings()) -> Path:
    """Build the organism that `config` describes; returns its directory. `launch` runs the training stages on
    several processes (DDP or DeepSpeed through accelerate)."""
    pair = resolve_universe(config.sdf.universe, "sdf.universe")
    if config.sdf.mix.anchor_ratio and not pair.anchors:
        raise UserError(f"sdf.mix.anchor_ratio: {config.sdf.mix.anchor_ratio:g} anchor passages per document, but "
                        f"the universe pair {config.sdf.universe} has no `anchors`; add some or set it to 0")
    if config.sdf.locality.weight and not pair.anchors:
        raise UserError(f"sdf.locality.weight: {config.sdf.locality.weight:g}, but the universe pair "
                        f"{config.sdf.universe} has no `anchors` to build locality texts from; add some or set it to 0")
    accelerate_config = preflight_training(config.load_in_4bit, config.training, launch)
    if launch.num_machines > 1 and config.sdf.scaling_documents:
        raise UserError(f"sdf.scaling_documents: {config.sdf.scaling_documents}: a multi-machine launch trains one "
                        "adapter per build; set sdf.scaling_documents: [] for it")
    generator = make_generator(config.sdf.corpus, config.model)
    judge = make_backend(config.eval.judge, config.model)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.training.chat_template)
    rundir, built = prepare_build_directory(config, restart)
    final, partial = rundir.final, rundir.partial
    if built:
        print(summary_table(read_json(final / EVAL_DETAILS, "evaluation details")))
        return final
    write_text(partial / UNIVERSE, yaml.safe_dump(pair.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    manifest = Manifest(partial, config.seed)

    if not manifest.done("corpus"):
        with manifest.stage("corpus") as record:
            log(f"writing {config.sdf.corpus.documents} documents with the {generator.description} generator")
            corpus, report = build_corpus(pair, config.sdf.corpus, generator, partial / CORPUS_WORK, config.seed)
            if not corpus:
                raise UserError(f"sdf.corpus: every document was filtered out ({report['filters']['dropped']})")
            write_sealed_rows(manifest, partial, CORPUS, corpus)
            manifest.sealed["details"]["corpus"] = report
            record["documents"] = len(corpus)
            log(f"corpus: {len(corpus)} documents kept of {report['stages']['documents']} "
                f"(dropped {report['filters']['dropped']})")
    documents = [row["text"] for row in read_sealed_rows(manifest, partial, CORPUS)]

    locality: list[str] = []
    if config.sdf.locality.weight:
        if not manifest.done("locality"):
            with manifest.stage("locality") as record:
                base = load_model(config.model, load_in_4bit=config.load_in_4bit, seed=config.seed,
                                  trust_remote_code=config.trust_remote_code)
                texts = locality_texts(base, tokenizer, pair.anchors, config.sdf.locality, config.seed)
                del base
                write_sealed_rows(manifest, partial, LOCALITY, [{"text": text} for text in texts])
                record["texts"] = len(texts)
                log(f"locality: {len(pair.anchors)} anchors and {len(texts) - len(pair.anchors)} base-model "
                    "continuations")
        locality = [row["text"] for row in read_sealed_rows(manifest, partial, LOCALITY)]

    for size in [n for n in config.sdf.scaling_documents if n < len(documents)]:
        stage = f"scaling-{size}"
        if not manifest.done(stage):
            with manifest.stage(stage) as record:
                log(f"scaling run: {size} documents")
                checkpoints = partial / f"{CHECKPOINTS}-{size}"
                model = train_on_documents(config, tokenizer, documents[:size], pair.anchors, locality, checkpoints,
                                           checkpoints / ADAPTER, record, launch, accelerate_config)
                record["documents"] = size
                record["belief"] = distinguish_only(model, tokenizer, pair, config.eval, model.disable_adapter)
            shutil.rmtree(partial / f"{CHECKPOINTS}-{size}", ignore_errors=True)

    if not manifest.done("train"):
        with manifest.stage("train") as record:
            model = train_on_documents(config, tokenizer, documents, pair.anchors, locality, partial / CHECKPOINTS,
                                       partial / ADAPTER, record, launch, accelerate_config)
            record["documents"] = len(documents)
    else:
        model = load_with_adapter(config.model, config.load_in_4bit, config.seed, partial / ADAPTER,
                                  config.trust_remote_code)
    shutil.rmtree(partial / CHECKPOINTS, ignore_errors=True)  # optimizer state is not part of an organism

    with manifest.stage("eval"):
        details = evaluate_and_write(partial, final, manifest, config, pair, model, tokenizer, judge)
    finish_build(manifest, rundir)
    print(summary_table(details))
    return final


def scaling_points(manifest: Manifest) -> list[dict]:
    stages = manifest.data["stages"]
    points = [{"documents": s["documents"], "belief": s["belief"]} for name, s in stages.items()
              if name.startswith("scaling-") and s.get("done")]
    return sorted(points, key=lambda p: p["documents"])


def evaluate_and_write(directory: Path, final: Path, manifest: Manifest, config: SdfOrganismConfig,
                       pair: UniversePair, model: PeftModel, tokenizer: PreTrainedTokenizerBase,
                       judge: Backend) -> dict:
    """Evaluate; write eval/metrics.json (public), sealed/eval_details.json, sealed/report.html and card.md."""
    details = evaluate_sdf(model, tokenizer, pair, config.eval, judge)
    details["scaling"] = scaling_points(manifest) + [{"documents": manifest.data["stages"]["train"]["documents"],
                                                      "belief": details["mcq_distinguish"]}]
    write_json(directory / EVAL_DETAILS, details)
    public = public_metrics(details)
    write_json(directory / METRICS, public)
    corpus_report = manifest.sealed["details"]["corpus"]
    train_record = manifest.data["stages"]["train"]
    write_text(directory / REPORT, sdf_report(final.name, config, pair, details, corpus_report, train_record,
                                              read_corpus(directory / CORPUS)))
    write_text(directory / CARD, sdf_card(config, final, corpus_report, train_record, public))
    return details


def evaluate_dir(path: Path) -> dict:
    """Re-run the evaluation of a built organism; rewrites its metrics, details, report and card."""
    path = check_organism_dir(path)
    config = validate_config(SdfOrganismConfig, read_sealed_config(path), str(path / SEALED_CONFIG))
    pair = load_universe_pair(path / UNIVERSE, str(path))
    organism = load_organism(path)
    manifest = Manifest(path, config.seed)
    judge = make_backend(config.eval.judge, config.model)
    with manifest.stage("eval"):
        details = evaluate_and_write(path, path, manifest, config, pair, organism.model, organism.tokenizer, judge)
    print(summary_table(details))
    return details


KIND = OrganismKind(name="sdf", config=SdfOrganismConfig, build=main, evaluate=evaluate_dir,
                    diff_prompts=public_diff_prompts, challenge_prompts=challenge_prompts, sealed_truth=sealed_truth,
                    description=DESCRIPTION, describe_secret=describe_secret,
                    mix_key="sdf.mix.generic_text_ratio")
