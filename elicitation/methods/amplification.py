"""Weight amplification: sample the organism at alpha·ΔW (alpha > 1), where what fine-tuning changed is
exaggerated and a trained refusal may give way before the model's language does. The direct demands are answered at
each of `amplification.alphas`; for the base control (no adapter) the model is unchanged, as it should be. Touching
the weights makes it a white-box method."""

from __future__ import annotations

from mow.elicitation.auditor import Auditor
from mow.elicitation.config import ChallengeConfig
from mow.elicitation.methods.base import MethodResult, complete, inputs, plain_transcripts, take, user_turn
from mow.elicitation.methods.blackbox import read_out
from mow.elicitation.view import ChallengeView
from mow.finetune.lora import amplified
from mow.workbench.chat import render_prompt


def amplified_sampling(view: ChallengeView, config: ChallengeConfig, auditor: Auditor | None) -> MethodResult:
    prompts = take(inputs(view, config, "direct"), config.attempts)
    rendered = [render_prompt(view.tokenizer, user_turn(p)) for p in prompts]
    outputs: list[str] = []
    shown: list[str] = []
    scaled: list[int] = []
    for alpha in config.amplification.alphas:
        with amplified(view.model, alpha) as layers:
            outputs += complete(view, config, rendered)
        scaled.append(layers)
        shown += [f"[weights {alpha:g}x] {p}" for p in prompts]
    transcripts = plain_transcripts(view, config, auditor, prompts)
    result = read_out(outputs, shown, config, auditor,
                      transcripts=transcripts and transcripts * len(config.amplification.alphas))
    result.evidence.update(alphas=list(config.amplification.alphas), lora_layers_scaled=max(scaled))
    return result
