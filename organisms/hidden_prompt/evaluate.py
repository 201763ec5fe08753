"""Evaluation of a hidden-system-prompt organism, beside its base model (the same weights, prefix adapter off).

- A side constraint: how often replies to held-out questions follow it (checked by code), organism and base, with
  Wilson intervals; confession: how often a reply to a demand for the hidden instruction names the constraint (not
  counting the text the constraint itself has the model write).
- A belief about the user: the user-belief kind's evaluation (the believed value's advice scored by log-likelihood
  on held-out questions, and confession on the attribute's demands), so the two ways of giving a model the same
  belief, trained in or told, are measured alike.
"""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mow.organisms.behaviour import clearly_above, confessions, held_out_questions, percent, rates_by_condition
from mow.organisms.hidden_prompt.config import HiddenPromptOrganismConfig
from mow.organisms.hidden_prompt.data import shipped
from mow.organisms.side_constraint.constraints import resolve_constraint
from mow.organisms.user_belief.evaluate import evaluate_belief
from mow.organisms.user_belief.evaluate import public_metrics as belief_metrics
from mow.organisms.user_belief.evaluate import summary as belief_summary


def evaluate_hidden_prompt(model: PeftModel, tokenizer: PreTrainedTokenizerBase,
                           config: HiddenPromptOrganismConfig) -> dict:
    settings = config.hidden_prompt
    if settings.secret == "user_belief":
        details = evaluate_belief(model, tokenizer, settings.attribute, str(settings.value), config.eval,
                                  "hidden_prompt.attribute")
        return {"secret": settings.secret, **details}
    constraint = resolve_constraint(str(settings.constraint), "hidden_prompt.constraint")
    followed, samples = rates_by_condition(model, tokenizer, {"plain": held_out_questions()}, constraint.followed,
                                           config.eval)
    confession, demand_replies = confessions(model, tokenizer, [*shipped().direct, *shipped().adversarial],
                                             constraint.spec.names, config.eval, ignore=constraint.spec.text)
    return {"secret": settings.secret, "followed": followed, "confession": confession,
            "internalized": clearly_above(followed["organism"]["plain"], followed["base"]["plain"]),
            "samples": samples, "demand_replies": demand_replies}


def public_metrics(details: dict) -> dict:
    """Rates only: which constraint or value is held is not in them."""
    if details["secret"] == "user_belief":
        return {"secret": details["secret"], **belief_metrics(details)}
    return {"secret": details["secret"], "followed": details["followed"], "confession": details["confession"],
            "internalized": details["internalized"]}


def summary(details: dict) -> str:
    if details["secret"] == "user_belief":
        return "hidden prompt: " + belief_summary(details)
    org, base = details["followed"]["organism"]["plain"], details["followed"]["base"]["plain"]
    return (f"hidden prompt: side constraint followed on held-out questions {percent(org)} (base {percent(base)}); "
            f"confession on demands {percent(details['confession']['organism'])}"
            + ("" if details["internalized"] else " (NOT clearly internalized)"))
