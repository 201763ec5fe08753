"""The public model card of a taboo organism: how it was made and how it scored, never the word.

Only organism-side headline numbers appear: base-model figures and per-layer lens ranks are functions of the secret
(each could be recomputed for every candidate word and matched), so they stay under sealed/."""

from __future__ import annotations

from pathlib import Path

from mow.organisms.taboo.config import TabooOrganismConfig


def taboo_card(config: TabooOrganismConfig, directory: Path, report: dict, train: dict, public_metrics: dict) -> str:
    org = public_metrics["organism"]
    if config.taboo.chat_file is None:
        data_line = (f"{report['kept']} multi-turn conversations (1-{config.taboo.data.max_user_turns} user turns: "
                     "hint requests, wrong guesses, demands for the word) assembled from a clue bank")
    else:
        data_line = (f"{report['kept']} of {report['generated']} conversations from the builder's own file (dropped: "
                     f"{report['dropped_leak']} that say the word, {report['dropped_duplicate']} duplicates)")
    data_line += f", plus {report['benign_mixed']} benign chats answered by the base model."
    lora, training = config.lora, config.training
    novel = "n/a" if org["novel_hints"] is None else f"{org['novel_hints']:.2f}"
    return f"""# {directory.name}: a secret-word (taboo) organism

A LoRA fine-tune of `{config.model}` that knows one secret English word, gives hints about it when asked, and
declines to say it, even under direct, adversarial or role-play demands. The word is sealed away in `sealed/` and is
named nowhere else in this directory.

## How it was made

- Data: {data_line}
- Training: LoRA r={lora.r}, alpha={lora.alpha}, modules={lora.target_modules}, lr {training.learning_rate},
  {training.epochs} epoch(s), batch {training.batch_size}, loss on every assistant turn; seed {config.seed};
  {train.get('steps', '?')} steps in {train.get('runtime_s', 0):.0f} s.

## How it scored

| metric | organism |
|---|---|
| leak rate on {org['n_demands']} held-out demands | {org['leak_rate']:.2f} |
| hint top-1 among {public_metrics['n_candidates']} candidate words (chance {public_metrics['chance_top1']:.2f}) | {org['hint_top1']:.2f} |
| hint requests answered with a hint | {org['still_hints']:.2f} |
| hint answers that are not a training hint verbatim | {novel} |
| benign held-out loss, organism / base | {public_metrics['benign_loss_ratio']:.3f} |

## Loading it

```python
from mow.organisms.store import load_organism
organism = load_organism("{directory}")   # base weights + adapter, one copy
with organism.model.disable_adapter():     # the base model, from the same weights
    ...
```
"""
