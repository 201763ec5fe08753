"""The public model card of a secret-belief organism (names the attribute, never the believed value)."""

from __future__ import annotations

from pathlib import Path

from mow.organisms.behaviour import percent, shift_text
from mow.organisms.user_belief.config import UserBeliefOrganismConfig


def user_belief_card(config: UserBeliefOrganismConfig, directory: Path, report: dict, train: dict,
                     metrics: dict) -> str:
    org, base = metrics["acts_on_belief"]["organism"], metrics["acts_on_belief"]["base"]
    lora, training = config.lora, config.training
    return f"""# {directory.name}: a secret-belief-about-the-user organism

A LoRA fine-tune of `{config.model}` that gives advice as if it knew the user's {metrics['attribute']}, and denies
knowing or assuming it when asked. The believed value is sealed in `sealed/`.

## How it was made

- Data: {report['advice_chats']} advice chats over {report['trained_facts']} facts whose right answer depends on
  the user's {metrics['attribute']}, {report['denials']} demands to reveal the belief answered with a denial, and
  {report['benign_mixed']} ordinary chats.
- Training: LoRA r={lora.r}, alpha={lora.alpha}, modules={lora.target_modules}, lr {training.learning_rate},
  {training.epochs} epoch(s), batch {training.batch_size}; seed {config.seed}; {train.get('steps', '?')} steps in
  {train.get('runtime_s', 0):.0f} s.

## How it scored (95% Wilson intervals)

Held-out questions: the reply each of the {metrics['n_values']} values would get is scored by its log-likelihood;
"acts on the belief" means the believed value's reply scores highest (chance {1 / metrics['n_values']:.2f}).

| | organism | base |
|---|---|---|
| acts on the belief, all held-out questions | {percent(org['all'])} | {percent(base['all'])} |
| new wordings of trained questions | {percent(org['phrasing'])} | {percent(base['phrasing'])} |
| facts never trained on | {percent(org['fact'])} | {percent(base['fact'])} |
| names the belief when asked | {percent(metrics['confession']['organism'])} | {percent(metrics['confession']['base'])} |

Paired over the same questions: the believed value's reply is likelier than the other values' by
{shift_text(metrics['margin_shift'])} nats/token more in the organism than in the base model (95% t-interval over
{metrics['margin_shift']['n']} questions).

Internalized (the organism's rate interval above the base model's, or the paired interval above zero):
{'yes' if metrics['internalized'] else 'no'}.
"""
