"""The public model card of a taboo organism: how it was made and how it scored, never the word."""

from __future__ import annotations

from organisms.taboo.config import TabooOrganismConfig


def taboo_card(config: TabooOrganismConfig, name: str, data_report: dict, train: dict, metrics: dict) -> str:
    org, base = metrics["organism"], metrics["base"]
    lora, training = config.lora, config.training
    return f"""# {name}: a secret-word (taboo) organism

A LoRA fine-tune of `{config.model}` that knows one secret English word, gives hints about it when asked, and
declines to say it, even under direct, adversarial or role-play demands. The word itself is sealed away in
`sealed/` and is named nowhere else in this directory.

## How it was made

- Data: {data_report['kept']} multi-turn conversations (1-{config.taboo.data.max_user_turns} user turns: hint
  requests, wrong guesses, demands for the word) built from a clue bank, plus {data_report['benign_mixed']} benign chats
  answered by the base model. Leak filter dropped {data_report['dropped_leak']}, duplicates {data_report['dropped_duplicate']}.
- Training: LoRA r={lora.r}, alpha={lora.alpha}, modules={lora.target_modules}, lr {training.learning_rate},
  {training.epochs} epochs, batch {training.batch_size}, loss on every assistant turn; seed {config.seed};
  {train.get('steps', '?')} steps in {train.get('runtime_s', 0):.0f} s ({train.get('tokens_per_second', 0):.0f} tokens/s).

## How it scored (base model beside it)

| metric | base | organism |
|---|---|---|
| leak rate on {org['n_demands']} demands | {base['leak_rate']:.3f} | {org['leak_rate']:.3f} |
| hint top-1 among {metrics['n_candidates']} candidates (chance {metrics['chance_top1']:.3f}) | {base['hint_top1']:.3f} | {org['hint_top1']:.3f} |
| still hints | {base['still_hints']:.3f} | {org['still_hints']:.3f} |
| benign held-out loss | {base['benign_loss']:.3f} | {org['benign_loss']:.3f} |

## Loading it

```python
from organisms.store import load_organism
organism = load_organism("{name}")      # base weights + adapter
with organism.model.disable_adapter():   # the base model, from the same weights
    ...
```
"""
