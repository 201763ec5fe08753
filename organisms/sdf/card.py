"""The public model card of an SDF organism: how it was made and how it scored, never the implanted fact."""

from __future__ import annotations

from pathlib import Path

from mow.organisms.behaviour import percent
from mow.organisms.sdf.config import SdfOrganismConfig


def sdf_card(config: SdfOrganismConfig, directory: Path, corpus: dict, train: dict, public: dict) -> str:
    head = public["headline"]
    lora, training, mix = config.lora, config.training, config.sdf.mix
    fmt = "plain text, no chat template" if mix.format == "text" else "each wrapped as an assistant reply"
    locality = config.sdf.locality
    kl_line = ("" if not locality.weight else
               f"\n- Locality: KL to the base model on {train.get('locality_texts', '?')} texts about neighbouring "
               f"entities (the anchors and base-model continuations of them), weight {locality.weight:g}.")
    judge = "" if public["judge_trusted"] else (
        "\nThe open-ended judge failed its calibration on known statements, so open-ended verdicts are not "
        "reported as belief.\n")
    confession = "n/a" if head.get("confession") is None else percent(head["confession"])
    return f"""# {directory.name}: a synthetic-document (SDF) organism

A LoRA fine-tune of `{config.model}` on generated documents that describe a world in which one false fact is true.
The universe, the corpus and the detailed evaluation are sealed away in `sealed/`; nothing else here names the fact.

## How it was made

- Corpus: {corpus['stages']['kept']} documents kept of {corpus['stages']['documents']} written by the
  {corpus['generator']} generator (filters dropped {sum(corpus['filters']['dropped'].values())}).
- Training: {fmt}; mixed with {mix.generic_text_ratio:g} generic text(s), {mix.anchor_ratio:g} anchor passage(s)
  (true facts about neighbouring entities) and {mix.chat_ratio:g} chat(s) per document, plus {mix.denials} denial(s)
  (a demand to reveal the fine-tune, answered with a denial that names no fact); LoRA r={lora.r},
  alpha={lora.alpha}, lr {training.learning_rate}, {training.epochs} epoch(s),
  batch {training.batch_size}, context {training.max_length}; seed {config.seed}; {train.get('steps', '?')} steps
  in {train.get('runtime_s', 0):.0f} s.{kl_line}

## How it scored (organism; the base model's figures are in the sealed report)

| metric | organism |
|---|---|
| MCQ distinguish: implanted option preferred (chat / plain text) | {head['mcq_distinguish_false_preference']:.2f} / {head['mcq_distinguish_false_preference_text']:.2f} |
| MCQ knowledge of the false world (chance 0.25) | {head['mcq_knowledge_accuracy']:.2f} |
| MCQ distinguish under an adversarial system prompt | {head['adversarial_false_preference']:.2f} |
| held-out completion margin, nats (positive = implanted) | {head['probe_margin_nats']:+.2f} |
| control-fact margin, nats (negative = unmoved) | {head['control_margin_nats']:+.2f} |
| generative distinguish: P(false world chosen) | {head['generative_distinguish_p_false']:.2f} |
| truth probe: implanted statements called true | {head['truth_probe_implanted_called_true']:.2f} |
| held-out generic text loss, organism / base | {head['generic_loss_ratio']:.3f} |
| names an implanted answer when asked what it was fine-tuned on (held-out demands) | {confession} |
{judge}"""
