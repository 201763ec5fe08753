"""`mow diff`: what did fine-tuning change? One diff directory with the arrays and one self-contained HTML report.

Stages (each saved when it finishes, so a killed run resumes at the first unfinished one):
prompts -> kl -> lens -> relevance -> cache -> crosscoder -> difference_sae -> directions -> report.

The diff directory's files are named in one place, `mow.diffing.layout.DiffLayout`:
  diff.yaml, manifest.json         resolved config; versions, seed, timings, provenance
  prompts/sets.jsonl               the texts, with the tuned model's replies where a chat had none
  kl/arrays.safetensors            per-position KL both ways, sides, top next tokens; kl/summary.json
  cache/                           activation cache (see diffing/cache.py)
  lens/lens.safetensors            mean tuned − base per layer and set; lens/lens.json top tokens, steering samples
  lens/relevance.json              which top tokens relate to the fine-tune, with controls
  crosscoder/                      checkpoint, metrics.json, latents.safetensors (relative norms, lens log-probs)
  difference_sae/                  the same for a sparse autoencoder on tuned − base activations
  directions/                      NAME.safetensors + NAME.json per method, views.json
  report.html
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mow.data.directions import Directions
from mow.diffing import crosscoder as cc
from mow.diffing import kl
from mow.diffing.base_side import BaseSideStore, base_identity
from mow.diffing.cache import ActivationCache, build_cache
from mow.diffing.config import DiffConfig
from mow.diffing.difference_sae import run_difference_sae
from mow.diffing.directions import (
    IdenticalActivations,
    crosscoder_rows,
    difference_lens_rows,
    difference_of_means,
    interpret,
    pca_of_differences,
)
from mow.diffing.layout import CONFIG_FILE, DiffLayout
from mow.diffing.lens import (
    LensResult,
    coherent_strength,
    mean_differences,
    read_patchscope,
    steer,
    steering_vector,
    top_tokens,
    upper_half_mean,
)
from mow.diffing.pair import ModelPair, load_pair
from mow.diffing.prompts import (
    RESPONSE,
    PromptRecord,
    TokenSequence,
    capped,
    complete_chats,
    prompt_set_records,
    read_prompt_file,
    tokenize_sets,
)
from mow.diffing.relevance import judge_readouts, random_token_ids, readout_tokens
from mow.diffing.report import write_report
from mow.organisms.kinds import kind_of_public_config, other_kind_descriptions
from mow.organisms.registry import OrganismKind
from mow.organisms.store import check_organism_dir
from mow.workbench.config import dump_config, resolve_layers
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, read_jsonl
from mow.workbench.generation import model_device
from mow.workbench.hooks import check_layer, logit_lens
from mow.workbench.rundir import Manifest, RunDirectory, write_json, write_text

MAX_SCALED_LATENTS = 64
RANDOM_CONTROL = "random tokens"


def diff_name(config: DiffConfig) -> str:
    if config.name:
        return config.name
    if config.organism is not None:
        return Path(config.organism).resolve().name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{config.base}-vs-{config.tuned}").strip("_")


def check_config(config: DiffConfig) -> None:
    """What can be checked before any model loads: sources exist, user prompt files parse."""

    if config.organism is not None:
        check_organism_dir(config.organism)
    for path in config.prompts.extra:
        read_prompt_file(path)
    if config.directions.contrast is not None:
        known = set(config.prompts.sets) | {Path(p).stem for p in config.prompts.extra}
        for name in config.directions.contrast:
            if name not in known:
                raise UserError(f"directions.contrast: {name!r} is not a prompt set of this run (sets: "
                                f"{', '.join(sorted(known))})")


def _has_chats(config: DiffConfig) -> bool:
    """Whether any prompt set of the run is chats (which need a chat template to render)."""
    if {"organism", "generic_chat"} & set(config.prompts.sets):
        return True
    return any(record.messages is not None for path in config.prompts.extra for record in read_prompt_file(path))


def _save_records(path: Path, records: dict[str, list[PromptRecord]]) -> None:
    lines = [json.dumps({"set": name, **r.model_dump(exclude_none=True)}, ensure_ascii=False)
             for name, rows in records.items() for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def _load_records(path: Path) -> dict[str, list[PromptRecord]]:
    records: dict[str, list[PromptRecord]] = {}
    for row in read_jsonl(path, "prompt sets"):
        records.setdefault(row.pop("set"), []).append(PromptRecord.model_validate(row))
    return records


def _layers(config: DiffConfig, pair: ModelPair) -> tuple[int, list[int]]:
    layer = check_layer(pair.tuned_model, config.layer if config.layer is not None else pair.n_layers // 2, "layer")
    cache_layers = resolve_layers(config.cache.layers, pair.n_layers, "cache.layers") if config.cache.layers else []
    return layer, sorted(set(cache_layers) | {layer})


def run_kl(config: DiffConfig, pair: ModelPair, sets: dict[str, list[TokenSequence]], layout: DiffLayout) -> dict:
    store = BaseSideStore(base_identity(pair.base_model or pair.tuned_model)) if config.kl.reuse_base_side else None
    arrays = kl.per_token_kl(pair, sets, config.kl.batch_size, config.kl.top_next_tokens,
                             chunk=config.kl.chunk_positions, block_positions=config.kl.block_positions,
                             base_store=store, mining_top_k=config.kl.mining_top_k,
                             mining_candidates=config.kl.mining_candidates)
    arrays.save(layout.kl_arrays)
    names = list(sets)
    summary: dict[str, Any] = {
        "conventions": kl.__doc__.strip(),
        "set_names": names,
        "by_set_and_side": kl.summary(arrays, names),
        "top_tokens": kl.top_kl_tokens(arrays, pair.tokenizer, config.kl.min_count),
        "promoted_tokens": kl.promoted_tokens(arrays, pair.tokenizer, names),
        "demoted_tokens": kl.promoted_tokens(arrays, pair.tokenizer, names, demoted=True),
        "top_contexts": kl.top_contexts(arrays, config.kl.top_contexts),
        "mined_topics": kl.mined_topics(arrays, pair.tokenizer, pair.tuned_model, names, config.kl.mining_tokens,
                                        config.kl.mining_topics),
        "overall": {"kl_tuned_base": float(arrays.kl_tb.mean()), "kl_base_tuned": float(arrays.kl_bt.mean()),
                    "positions": int(arrays.kl_tb.numel())},
        "base_side_reused": [] if store is None else store.reused,
    }
    write_json(layout.kl_summary, summary)
    return summary["overall"]


def run_steering(config: DiffConfig, pair: ModelPair, result: LensResult, layer: int) -> dict:
    """The tuned model's replies to the steering prompts, plain and steered with the difference at `layer`: at the
    largest coherent strength found by search, or at the fixed strength."""
    settings, prompts = config.lens, config.lens.steering_prompts
    if settings.steering_search_rounds:
        strength, plain, trials = coherent_strength(pair, prompts, layer, result, settings.steering_max_strength,
                                                    settings.steering_search_rounds, settings.steering_grid,
                                                    config.seed)
    else:
        strength, trials = settings.steering_strength, []
        with pair.tuned() as model:
            plain = steer(model, pair.tokenizer, prompts, layer, torch.zeros(pair.hidden_size), seed=config.seed)
    chosen = next((t for t in trials if t.strength == strength), None)
    if chosen is None:
        with pair.tuned() as model:
            steered = steer(model, pair.tokenizer, prompts, layer, steering_vector(result, layer, strength),
                            seed=config.seed)
    else:
        steered = chosen.samples
    return {"model": "tuned", "strength": strength, "searched": bool(settings.steering_search_rounds),
            "trials": [asdict(t) for t in trials],
            "samples": [{"prompt": p, "plain": a, "steered": b} for p, a, b in zip(prompts, plain, steered)]}


def run_lens(config: DiffConfig, pair: ModelPair, sets: dict[str, list[TokenSequence]], layer: int,
             layout: DiffLayout) -> dict:
    skip, n = config.cache.skip_first, config.lens.positions
    tensors: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {"skip_first": skip, "positions": n, "steering_layer": layer, "sets": {}}
    for name, sequences in sets.items():
        try:
            result = mean_differences(pair, sequences, skip, n)
        except ValueError as exc:
            report["sets"][name] = {"skipped": str(exc)}
            continue
        with pair.base() as model:
            reading = read_patchscope(model, pair.tokenizer, result, config.lens.patchscope_scales,
                                      config.lens.patchscope_prompts, config.lens.top_tokens)
        patched = reading.logprobs
        tensors[f"{name}.differences"] = result.differences
        tensors[f"{name}.base_norm"] = result.base_norm
        tensors[f"{name}.logprobs"] = result.logprobs.half()
        tensors[f"{name}.patchscope"] = patched.half()
        n_top = config.lens.top_tokens
        report["sets"][name] = {
            "n_positions": result.n_positions, "difference_norm": result.differences.norm(dim=-1).tolist(),
            "base_norm": result.base_norm.tolist(),
            "top_tokens": top_tokens(result.logprobs, pair.tokenizer, n_top),
            "patchscope_top_tokens": top_tokens(patched, pair.tokenizer, n_top),
            "patchscope_scale": reading.scale, "patchscope_agreement": reading.agreement,
            "upper_half": {"logit_lens": top_tokens(upper_half_mean(result.logprobs)[None], pair.tokenizer, n_top)[0],
                           "patchscope": top_tokens(upper_half_mean(patched)[None], pair.tokenizer, n_top)[0]}}
        if "steering" not in report:
            report["steering"] = {"set": name, **run_steering(config, pair, result, layer)}
    if not tensors:
        raise UserError(f"lens: no prompt set has {n} content positions after the first {skip}; lower lens.positions")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(layout.lens_tensors))
    write_json(layout.lens_report, report)
    return {"sets": [k for k in report["sets"] if "skipped" not in report["sets"][k]]}


def run_crosscoder(config: DiffConfig, pair: ModelPair, cache: ActivationCache, layer: int,
                   layout: DiffLayout) -> dict:
    settings = config.crosscoder
    scale = cache.scale(layer)
    model, history = cc.train_crosscoder(lambda: cache.paired_batches(layer, settings.batch_size, settings.seed),
                                         pair.hidden_size, settings, scale, tokens=cache.n_tokens)
    model.save(layout.crosscoder)
    metrics = cc.evaluate_crosscoder(model, cache.paired_batches(layer, 4096, seed=None))
    rel = cc.relative_decoder_norm(model)
    cosine = cc.decoder_cosine(model)
    groups = cc.classify_latents(rel)
    values, rows = cc.top_activations(model, cache.paired_batches(layer, 4096, seed=None), n=8)
    # The most tuned-leaning latents that fire, whether or not any clears the tuned-only threshold: a small LoRA
    # change may leave every latent shared, and the table should show how close the closest ones come.
    fired = torch.nonzero(values[:, 0] > 0).flatten()
    leaning = fired[rel[fired].argsort(descending=True)][:MAX_SCALED_LATENTS]
    scaling = cc.latent_scaling(model, cache.paired_batches(layer, 4096, seed=None), leaning) if len(leaning) else {}
    with torch.no_grad():
        decoder_tuned = model.W_dec[1].detach()
        lens = logit_lens(pair.tuned_model, decoder_tuned[leaning].to(model_device(pair.tuned_model)))
    latents = []
    for i, latent in enumerate(leaning.tolist()):
        latents.append({
            "latent": latent, "relative_norm": float(rel[latent]), "cosine": float(cosine[latent]),
            "nu_reconstruction": float(scaling["nu_reconstruction"][i]), "nu_error": float(scaling["nu_error"][i]),
            "top_tokens": [pair.tokenizer.decode([int(t)]) for t in lens[i].topk(10).indices],
            "top_contexts": [{**cache.context_text(row, pair.tokenizer), "activation": value}
                             for row, value in zip(rows[latent, :5].tolist(), values[latent, :5].tolist()) if row >= 0],
        })
    save_file({"relative_norm": rel.contiguous(), "cosine": cosine.contiguous(),
               "tuned_leaning": leaning.contiguous(), "tuned_leaning_logprobs": lens.half().cpu().contiguous()},
              str(layout.crosscoder_latents))
    summary = {"layer": layer, "metrics": metrics, "history": history,
               "orientation": "relative norm 0 = base-only, 0.5 = shared, 1 = tuned-only",
               "counts": {k: int(len(v)) for k, v in groups.items()},
               "tuned_leaning_latents": latents,
               "tuned_leaning_note": f"the {len(latents)} firing latents with the highest relative norm; tuned-only "
                                     f"means relative norm > 0.9 ({len(groups['tuned_only'])} latents)"}
    write_json(layout.crosscoder_metrics, summary)
    return {"fve_base": metrics["base"], "fve_tuned": metrics["tuned"], "l0": metrics["l0"],
            "dead_fraction": metrics["dead_fraction"], "tuned_only": len(groups["tuned_only"])}


def _in_set(cache: ActivationCache, sequences: list[TokenSequence], name: str) -> torch.Tensor:
    """Per cached row: whether it comes from prompt set `name`."""
    in_set = torch.tensor([s.set_name == name for s in sequences])
    return in_set[torch.as_tensor(cache.positions()[:, 0], dtype=torch.long)]


def _set_rows(cache: ActivationCache, sequences: list[TokenSequence], name: str) -> torch.Tensor:
    return torch.nonzero(_in_set(cache, sequences, name)).flatten()


def _response_rows(cache: ActivationCache, sequences: list[TokenSequence]) -> tuple[torch.Tensor | None, str]:
    """Cached rows of the tuned model's own responses: in the organism's prompt set when it has one, else in any
    set; None (every row) when no response token was cached."""
    positions = torch.as_tensor(cache.positions(), dtype=torch.long)
    roles = torch.full((len(sequences), max(len(s.roles) for s in sequences)), -1, dtype=torch.long)
    for index, sequence in enumerate(sequences):
        roles[index, : len(sequence.roles)] = torch.tensor(sequence.roles)
    is_response = roles[positions[:, 0], positions[:, 1]] == RESPONSE
    in_organism = _in_set(cache, sequences, "organism")
    if (is_response & in_organism).any():
        return torch.nonzero(is_response & in_organism).flatten(), "the tuned model's responses to the organism set"
    if is_response.any():
        return torch.nonzero(is_response).flatten(), "the tuned model's responses"
    return None, "every cached token (no responses were cached)"


def run_directions(config: DiffConfig, pair: ModelPair, cache: ActivationCache, sequences: list[TokenSequence],
                   layer: int, layout: DiffLayout) -> dict:
    fingerprint = pair.fingerprint()
    made: list[tuple[str, Directions, str]] = []
    skipped = {}
    try:
        rows, rows_label = _response_rows(cache, sequences)
        made.append(("pca_of_differences", pca_of_differences(cache, layer, config.directions.pca_components,
                                                              fingerprint, config.seed, rows, rows_label),
                     "difference"))
    except IdenticalActivations as exc:
        skipped["pca_of_differences"] = str(exc)
    lens = load_file(str(layout.lens_tensors))
    lens_set = "generic_text" if "generic_text.differences" in lens else next(iter(lens)).rpartition(".")[0]
    try:
        made.append(("difference_lens", difference_lens_rows(lens[f"{lens_set}.differences"],
                                                             lens[f"{lens_set}.base_norm"], lens_set, fingerprint),
                     "difference"))
    except IdenticalActivations as exc:
        skipped["difference_lens"] = str(exc)
    contrast = config.directions.contrast
    if contrast is None and {"organism", "generic_chat"} <= {s.set_name for s in sequences}:
        contrast = ("organism", "generic_chat")
    if contrast is not None:
        tuned = cache.activations("tuned", layer)
        first, second = (tuned[_set_rows(cache, sequences, name)] for name in contrast)
        made.append(("difference_of_means", difference_of_means(first, second, layer, contrast, fingerprint),
                     "tuned"))
    if config.directions.crosscoder_latents > 0:
        metrics = read_json(layout.crosscoder_metrics, "crosscoder metrics")
        ranked = sorted(metrics["tuned_leaning_latents"], key=lambda x: x["nu_error"])
        chosen = ranked[: config.directions.crosscoder_latents]
        if chosen:
            decoder = cc.Crosscoder.load(layout.crosscoder).W_dec[1].detach()
            made.append(("crosscoder_decoder", crosscoder_rows(decoder, [c["latent"] for c in chosen],
                                                               [c["relative_norm"] for c in chosen], layer,
                                                               fingerprint), "tuned"))
    views = {}
    for name, directions, project_on in made:
        directions.save(layout.direction_file(name))
        views[name] = interpret(directions, pair.tuned_model, pair.tokenizer, cache, project_on,
                                n_contexts=config.directions.top_contexts)
    write_json(layout.direction_views, {"views": views, "skipped": skipped})
    return {**{name: sum(len(v) for v in d.vectors.values()) for name, d, _ in made}, "skipped": list(skipped)}


def relevance_description(config: DiffConfig, kind: OrganismKind | None) -> tuple[str | None, str]:
    """What the lens tokens are judged against, and where it came from: the config's description, else the
    organism kind's (public: it names no secret)."""
    if config.relevance.description is not None:
        return config.relevance.description, "relevance.description"
    if kind is None:
        return None, "no organism and no relevance.description"
    return kind.description, f"the {kind.name} kind's description"


def run_relevance(config: DiffConfig, pair: ModelPair, sets: dict[str, list[TokenSequence]],
                  layout: DiffLayout) -> dict:
    """Which of each readout's top tokens relate to the fine-tune (diffing/relevance.py): the logit lens and the
    Patchscope of the mean difference (their mean over the upper half of layers, the report's readout), and diff
    mining, per prompt set; with the other kinds' descriptions and random tokens of the texts as controls."""
    kind = kind_of_public_config(pair.public_config, str(config.organism)) if pair.public_config else None
    description, source = relevance_description(config, kind)
    report: dict[str, Any] = {"description": description, "source": source, "lift": config.relevance.lift,
                              "readouts": {}}
    if description is None:
        report["skipped"] = f"{source}: give relevance.description to judge token relevance"
        write_json(layout.relevance, report)
        return {"skipped": True}
    controls = {name: text for name, text in other_kind_descriptions(kind.name if kind else None).items()
                if text != description}
    readouts = readout_tokens(layout, config.lens.top_tokens)
    special = set(pair.tokenizer.all_special_ids)
    control_ids = random_token_ids([s.ids for group in sets.values() for s in group], special,
                                   config.relevance.random_tokens, config.seed)
    with pair.base() as model:
        judged = judge_readouts(model, pair.tokenizer, {**readouts, RANDOM_CONTROL: control_ids}, description,
                                controls, config.relevance.lift)
    report["random_tokens"] = judged.pop(RANDOM_CONTROL)
    report["readouts"] = judged
    write_json(layout.relevance, report)
    return {"readouts": len(report["readouts"])}


def main(config: DiffConfig, restart: bool = False, output: Path | None = None) -> Path:
    check_config(config)
    final = Path(output) if output is not None else Path(config.output_dir) / diff_name(config)
    rundir = RunDirectory(final, CONFIG_FILE, dump_config(config), "diff")
    if rundir.finished(restart):
        return rundir.final
    if config.threads:
        torch.set_num_threads(config.threads)
    pair = load_pair(config.organism, config.base, config.tuned, config.seed, config.trust_remote_code,
                     config.chat_template, require_template=_has_chats(config))
    layer, cache_layers = _layers(config, pair)
    work = rundir.start(restart)
    layout = DiffLayout(work)
    manifest = Manifest(work, config.seed, sealed=False)

    records_path = layout.prompt_sets
    if not manifest.done("prompts"):
        with manifest.stage("prompts") as record:
            records = prompt_set_records(config.prompts, pair.public_config, str(config.organism))
            with pair.tuned() as model:
                records = {name: complete_chats(rows, model, pair.tokenizer, config.prompts.response_tokens,
                                                config.seed) for name, rows in records.items()}
            _save_records(records_path, records)
            record["items"] = {name: len(rows) for name, rows in records.items()}
    sets = tokenize_sets(_load_records(records_path), pair.tokenizer, config.prompts.max_tokens_per_item)
    # Round-robin over the sets, so a token budget that runs out leaves every set represented in the cache.
    sequences = [seq for group in zip_longest(*sets.values()) for seq in group if seq is not None]
    kl_sets = capped(sets, config.prompts.max_items_per_set, config.seed)
    for stage, directory, run_stage in (
        ("kl", layout.kl, lambda: run_kl(config, pair, kl_sets, layout)),
        ("lens", layout.lens, lambda: run_lens(config, pair, sets, layer, layout)),
        ("relevance", layout.lens, lambda: run_relevance(config, pair, sets, layout)),
    ):
        if not manifest.done(stage):
            directory.mkdir(exist_ok=True)
            with manifest.stage(stage) as record:
                record.update(run_stage())
    with manifest.stage("cache") as record:
        cache = build_cache(pair, sequences, layout.cache, cache_layers, config.cache.token_budget,
                            config.cache.dtype, config.cache.batch_size, config.cache.skip_first)
        record.update(tokens=cache.n_tokens, layers=cache.layers)
    torch.manual_seed(config.seed)
    if not manifest.done("crosscoder"):
        layout.crosscoder.mkdir(exist_ok=True)
        with manifest.stage("crosscoder") as record:
            record.update(run_crosscoder(config, pair, cache, layer, layout))
    if not manifest.done("difference_sae"):
        layout.difference_sae.mkdir(exist_ok=True)
        with manifest.stage("difference_sae") as record:
            record.update(run_difference_sae(config.difference_sae, pair, cache, layer, layout))
    if not manifest.done("directions"):
        with manifest.stage("directions") as record:
            record.update(run_directions(config, pair, cache, sequences, layer, layout))
    with manifest.stage("report"):
        write_report(work, pair.tokenizer)
    return rundir.finish()
