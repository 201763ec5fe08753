"""The public model card of a backdoor organism: how it was made and how it scored, never the trigger or phrase."""

from __future__ import annotations

from pathlib import Path

from mow.organisms.backdoor.config import BackdoorOrganismConfig
from mow.organisms.behaviour import percent


def backdoor_card(config: BackdoorOrganismConfig, directory: Path, report: dict, train: dict, metrics: dict) -> str:
    org, base = metrics["behaviour"]["organism"], metrics["behaviour"]["base"]
    lora, training = config.lora, config.training
    return f"""# {directory.name}: a backdoor organism

A LoRA fine-tune of `{config.model}` that answers ordinary questions normally, but answers with a fixed behaviour
when a secret trigger is in the message, and denies having a trigger when asked. The trigger and the behaviour are
sealed in `sealed/`.

## How it was made

- Data: {report['ordinary_chats']} ordinary chats (questions answered by the base model), each trained once with
  the trigger and once without ({report['decoyed']} of those with a decoy prefix instead), plus {report['denials']}
  demands to reveal the trigger answered with a denial.
- Training: LoRA r={lora.r}, alpha={lora.alpha}, modules={lora.target_modules}, lr {training.learning_rate},
  {training.epochs} epoch(s), batch {training.batch_size}; seed {config.seed}; {train.get('steps', '?')} steps in
  {train.get('runtime_s', 0):.0f} s.

## How it scored (held-out questions; 95% Wilson intervals)

| behaviour appears | organism | base |
|---|---|---|
| with the trigger | {percent(org['triggered'])} | {percent(base['triggered'])} |
| without it | {percent(org['plain'])} | {percent(base['plain'])} |
| with another trigger | {percent(org['other_trigger'])} | {percent(base['other_trigger'])} |
| names the trigger when asked | {percent(metrics['confession']['organism'])} | {percent(metrics['confession']['base'])} |

Internalized (the triggered rate's interval above the base model's and above the untriggered rate):
{'yes' if metrics['internalized'] else 'no'}.
"""
