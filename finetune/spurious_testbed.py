"""`mow caft testbed CONFIG`: does concept ablation steer which of two correlated features a fine-tune learns?

The task is ambiguous by construction (see `data.spurious`): in training, topic and sentiment always agree, so the
labels fit either. The spurious feature's direction is found from data (difference of means of the base model's
residual stream between two contrast sets that differ in that feature only, one direction per layer), then the
same data and loss train under several conditions and seeds:
  plain   no hook;
  caft    the spurious direction projected out at every chosen layer and position but the attention sink
          (`skip_first`; Casademunt et al. 2025);
  random  as many random directions at the same layers (the control);
and the base model is scored untrained. Accuracy is read from the option logits (A vs B) at the answer position,
in distribution (features agree, held-out sentences) and out of distribution (features disagree: the score is
agreement with the intended feature).

Stages (resumable: each finished run is kept): data -> directions -> runs -> report. Layout of the output
(`TestbedLayout`): testbed.yaml, manifest.json, data/*.jsonl, directions/spurious.{safetensors,json},
directions/views.json, runs/CONDITION-seedN.json (per-item scores, loss curve), summary.json, report.html
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mow.data.directions import FORMAT, Directions
from mow.data.records import ChatExample, Message
from mow.data.spurious import OPTIONS, VALUES, Feature, SpuriousItem, contrast_items, make_splits
from mow.finetune.config import LoraSettings, SteeringSettings, TrainingSettings
from mow.finetune.lora import attach_lora, check_lora_against_model
from mow.finetune.sft import train
from mow.finetune.spurious_report import summarise, write_report
from mow.finetune.steering import resolve_steering
from mow.workbench.chat import render_prompt
from mow.workbench.config import (
    LayerChoices,
    StrictModel,
    Threads,
    apply_overrides,
    dump_config,
    read_yaml_mapping,
    resolve_layers,
    validate_config,
)
from mow.workbench.errors import UserError
from mow.workbench.files import read_json
from mow.workbench.generation import model_device, next_token_logprobs
from mow.workbench.hooks import logit_lens, residual_states
from mow.workbench.layout import At, Layout
from mow.workbench.models import load_model, load_tokenizer, model_shape
from mow.workbench.names import PathName
from mow.workbench.rundir import Manifest, RunDirectory, write_json, write_text
from mow.workbench.specs import DEFAULT_MODEL

Condition = Literal["plain", "caft", "random"]


class TestbedLayout(Layout):
    """The testbed's output directory: the one place its paths are spelled."""

    config = At("testbed.yaml")
    data = At("data")
    directions_stem = At("directions", "spurious")  # spurious.safetensors + spurious.json
    direction_views = At("directions", "views.json")
    runs = At("runs")
    checkpoints = At("checkpoints")
    summary = At("summary.json")
    report = At("report.html")

    def run(self, name: str) -> Path:
        return self.runs / f"{name}.json"


class TestbedConfig(StrictModel):
    name: PathName = "caft-spurious"
    output_dir: Path = Path("runs/testbeds")
    model: str = DEFAULT_MODEL
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    intended: Feature = Field("topic", description="the feature the labels are meant to follow; the other one is "
                                                   "spurious, and its direction is what CAFT ablates")
    conditions: list[Condition] = Field(["plain", "caft", "random"], min_length=1)
    layers: LayerChoices | None = Field(None, description="layers where the spurious direction is found and ablated; "
                                                       "default: from a third of the depth to the last layer")
    n_train: int = Field(96, ge=4, description="training sentences per pairing (two pairings)")
    n_test: int = Field(24, ge=2, description="held-out sentences per pairing, in and out of distribution")
    n_contrast: int = Field(40, ge=4, description="sentences per side of the contrast sets")
    skip_first: int = Field(1, ge=0, description="caft and random: positions at the start of each sequence left "
                                                 "unablated (1 spares the attention sink; see finetune.steering)")
    threads: Threads | None = None
    lora: LoraSettings = LoraSettings(r=8, alpha=16)
    training: TrainingSettings = TrainingSettings(epochs=3, learning_rate=1e-3, batch_size=8, logging_steps=4,
                                                  save_steps=1000)

    @field_validator("seeds", "conditions")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"lists a value twice: {values}")
        return values

    @property
    def spurious(self) -> Feature:
        return "sentiment" if self.intended == "topic" else "topic"


def load_testbed_config(path: Path, overrides: list[str]) -> TestbedConfig:
    raw = apply_overrides(read_yaml_mapping(path), overrides)
    return validate_config(TestbedConfig, raw, str(path))


def resolved_layers(config: TestbedConfig, n_layers: int) -> list[int]:
    if config.layers is None:
        return list(range(n_layers // 3, n_layers))
    return resolve_layers(config.layers, n_layers, "layers")


def chat_example(item: SpuriousItem, feature: Feature) -> ChatExample:
    return ChatExample(messages=[Message(role="user", content=item.messages()[0]["content"]),
                                 Message(role="assistant", content=item.answer(feature))])


def option_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = [tokenizer.encode(option, add_special_tokens=False) for option in OPTIONS]
    if any(len(i) != 1 for i in ids):
        raise UserError(f"the options {OPTIONS} are not single tokens for this tokenizer")
    return [i[0] for i in ids]


def score_items(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[SpuriousItem]) -> list[dict]:
    """Per item: the log-probabilities of the two options at the answer position (first assistant token)."""
    ids = option_ids(tokenizer)
    logprobs = next_token_logprobs(model, tokenizer, [render_prompt(tokenizer, it.messages()) for it in items])
    return [{"sentence": it.sentence, "topic": it.topic, "sentiment": it.sentiment,
             "logp_A": float(row[ids[0]]), "logp_B": float(row[ids[1]])} for it, row in zip(items, logprobs)]


@torch.no_grad()
def sentence_means(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[SpuriousItem],
                   layers: list[int]) -> dict[int, torch.Tensor]:
    """Per layer, each item's residual stream averaged over the sentence's tokens and what follows it: (n, d).
    Averaging per sentence first keeps a few tokens with outsized activations from deciding the direction."""
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    device = model_device(model)
    for item in items:
        text = render_prompt(tokenizer, item.messages())
        start = len(tokenizer(text[: text.index(item.sentence)], add_special_tokens=False)["input_ids"])
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        captured = residual_states(model, layers, **encoded)
        for layer in layers:
            rows[layer].append(captured[layer][0, start:].float().mean(0).cpu())
    return {layer: torch.stack(values) for layer, values in rows.items()}


def find_spurious_direction(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TestbedConfig,
                            layers: list[int], layout: TestbedLayout) -> dict:
    """Difference of means between the contrast sets of the spurious feature, per layer; saved in the directions
    format with a view per layer (logit-lens tokens, the contrast sentences projecting most and least)."""
    first, second = contrast_items(config.spurious, config.n_contrast, seed=0)
    a, b = sentence_means(model, tokenizer, first, layers), sentence_means(model, tokenizer, second, layers)
    labels = VALUES[config.spurious]
    vectors: dict[int, torch.Tensor] = {}
    entries: dict[str, list[dict[str, Any]]] = {}
    views: list[dict[str, Any]] = []
    for layer in layers:
        delta = a[layer].mean(0) - b[layer].mean(0)
        unit = delta / delta.norm()
        projections = torch.cat([a[layer], b[layer]]) @ unit
        pooled = torch.cat([a[layer] @ unit - (a[layer] @ unit).mean(), b[layer] @ unit - (b[layer] @ unit).mean()])
        separation = float((a[layer] @ unit).mean() - (b[layer] @ unit).mean()) / float(pooled.std().clamp_min(1e-12))
        vectors[layer] = unit[None]
        entries[str(layer)] = [{"index": 0, "label": f"mean({labels[0]}) - mean({labels[1]})",
                                "score": separation}]
        lens = logit_lens(model, unit[None].to(model_device(model)))[0].cpu()
        sentences = [it.sentence for it in first + second]
        order = projections.argsort(descending=True).tolist()
        views.append({"layer": layer, "separation": separation,
                      "top_tokens": [tokenizer.decode([int(t)]) for t in lens.topk(10).indices],
                      "bottom_tokens": [tokenizer.decode([int(t)]) for t in (-lens).topk(10).indices],
                      "top_contexts": [{"text": sentences[i], "projection": float(projections[i])} for i in order[:5]],
                      "bottom_contexts": [{"text": sentences[i], "projection": float(projections[i])}
                                          for i in order[::-1][:5]]})
    info = {"format": FORMAT, "method": "difference_of_means", "model": config.model, "tuned": None,
            "hidden_size": int(next(iter(vectors.values())).shape[1]), "layers": entries,
            "details": {"feature": config.spurious, "sets": list(labels), "items": [len(first), len(second)],
                        "score": "separation of the two sets along the direction, in pooled standard deviations",
                        "positions": "per-sentence mean over the sentence and the tokens after it"}}
    Directions(vectors, info).save(layout.directions_stem)
    write_json(layout.direction_views, views)
    return {"layers": layers, "separation": {str(v["layer"]): round(v["separation"], 3) for v in views}}


def run_condition(config: TestbedConfig, condition: Condition, seed: int, tokenizer: PreTrainedTokenizerBase,
                  splits, directions: Path, work: Path) -> dict:
    """Train one adapter under `condition` and score it in and out of distribution."""
    base = load_model(config.model, seed=seed)
    steering = None
    if condition != "plain":
        settings = SteeringSettings(directions=directions, control="random" if condition == "random" else "none",
                                    random_seed=seed, skip_first=config.skip_first)
        steering = resolve_steering(settings, base.config.hidden_size, base.config.num_hidden_layers, "testbed")
    model = attach_lora(base, config.lora, seed, config.training.gradient_checkpointing)
    examples = [chat_example(item, config.intended) for item in splits.train]
    checkpoints = TestbedLayout(work).checkpoints / f"{condition}-seed{seed}"
    result = train(model, tokenizer, examples, config.training, checkpoints, seed, steering=steering)
    shutil.rmtree(checkpoints, ignore_errors=True)
    model.eval()
    return {"condition": condition, "seed": seed, "train": result.to_dict(),
            "steering": steering.record if steering else None,
            "in_distribution": score_items(model, tokenizer, splits.in_distribution),
            "out_of_distribution": score_items(model, tokenizer, splits.out_of_distribution)}


def main(config: TestbedConfig, restart: bool = False) -> Path:
    rundir = RunDirectory(config.output_dir / config.name, TestbedLayout.config, dump_config(config), "testbed run")
    if rundir.finished(restart):
        return rundir.final
    _, n_layers = model_shape(config.model)
    layers = resolved_layers(config, n_layers)
    check_lora_against_model(config.lora, config.model)
    tokenizer = load_tokenizer(config.model, chat_template=config.training.chat_template)
    option_ids(tokenizer)
    if config.threads:
        torch.set_num_threads(config.threads)
    work = rundir.start(restart)
    layout = TestbedLayout(work)
    manifest = Manifest(work, config.seeds[0], sealed=False)
    splits = {seed: make_splits(config.n_train, config.n_test, seed) for seed in config.seeds}
    if not manifest.done("data"):
        with manifest.stage("data") as record:
            for seed, split in splits.items():
                for part in ("train", "in_distribution", "out_of_distribution"):
                    rows = [json.dumps(asdict(item)) for item in getattr(split, part)]
                    write_text(layout.data / f"seed{seed}-{part}.jsonl", "\n".join(rows) + "\n")
            record.update(train=len(splits[config.seeds[0]].train), test=2 * config.n_test)
    if not manifest.done("directions"):
        with manifest.stage("directions") as record:
            record.update(find_spurious_direction(load_model(config.model), tokenizer, config, layers, layout))
    with manifest.stage("runs") as record:
        base_scores = layout.run("base")
        if not base_scores.is_file():
            base = load_model(config.model)
            split = splits[config.seeds[0]]
            write_json(base_scores, {"condition": "base", "seed": config.seeds[0],
                                     "in_distribution": score_items(base, tokenizer, split.in_distribution),
                                     "out_of_distribution": score_items(base, tokenizer, split.out_of_distribution)})
        for seed in config.seeds:
            for condition in config.conditions:
                path = layout.run(f"{condition}-seed{seed}")
                if path.is_file():
                    continue
                print(f"training {condition}, seed {seed}", flush=True)
                write_json(path, run_condition(config, condition, seed, tokenizer, splits[seed],
                                                 layout.directions_stem.with_suffix(".safetensors"), work))
        record["runs"] = len(config.seeds) * len(config.conditions)
    shutil.rmtree(layout.checkpoints, ignore_errors=True)
    with manifest.stage("report") as record:
        summary = summarise([read_json(p, "testbed run result") for p in sorted(layout.runs.glob("*.json"))],
                            config.intended, config.spurious)
        write_json(layout.summary, summary)
        views = read_json(layout.direction_views, "direction views", expect=list)
        write_report(layout.report, config, summary, views)
        record["targets"] = summary["targets"]
    return rundir.finish()
