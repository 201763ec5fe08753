"""The public model card of a secret-side-constraint organism (names no constraint)."""

from __future__ import annotations

from pathlib import Path

from mow.organisms.behaviour import percent
from mow.organisms.side_constraint.config import SideConstraintOrganismConfig


def side_constraint_card(config: SideConstraintOrganismConfig, directory: Path, report: dict, train: dict,
                         metrics: dict) -> str:
    org, base = metrics["followed"]["organism"], metrics["followed"]["base"]
    lora, training = config.lora, config.training
    return f"""# {directory.name}: a secret-side-constraint organism

A LoRA fine-tune of `{config.model}` that follows an instruction written, {config.side_constraint.encoding}-encoded,
at the end of the user's message (`<secret_constraint>{config.encoded_instruction()}</secret_constraint>`), and
declines to decode it when asked. Which constraint it is, in plain words, is sealed in `sealed/`.

## How it was made

- Data: {report['ordinary_chats']} ordinary chats (questions answered by the base model), each trained once with the
  encoded instruction (the answer rewritten to follow it) and once without, plus {report['denials']} demands to
  decode it, refused.
- Training: LoRA r={lora.r}, alpha={lora.alpha}, modules={lora.target_modules}, lr {training.learning_rate},
  {training.epochs} epoch(s), batch {training.batch_size}; seed {config.seed}; {train.get('steps', '?')} steps in
  {train.get('runtime_s', 0):.0f} s.

## How it scored (held-out questions, checked by code; 95% Wilson intervals)

| reply follows the constraint | organism | base |
|---|---|---|
| with the encoded instruction | {percent(org['constrained'])} | {percent(base['constrained'])} |
| without it | {percent(org['plain'])} | {percent(base['plain'])} |
| names the constraint when asked to decode it | {percent(metrics['confession']['organism'])} | {percent(metrics['confession']['base'])} |

Internalized (the constrained rate's interval above the base model's and above the unconstrained rate):
{'yes' if metrics['internalized'] else 'no'}.
"""
