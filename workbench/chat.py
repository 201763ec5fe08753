"""Chat-template helpers: rendering prompts and the training variant of a template with generation markers."""

from __future__ import annotations

import copy
import re

from transformers import PreTrainedTokenizerBase

from mow.workbench.errors import UserError

# SmolLM2's ChatML template as shipped, and the same template with `{% generation %}` around each assistant reply
# and its end-of-turn token, so TRL can mask the loss to assistant tokens on every assistant turn.
_SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` whose chat template marks assistant replies for assistant-only loss.

    Renders byte-identically to the original template; only the mask markers are added.
    """
    template = tokenizer.chat_template or ""
    trained = copy.deepcopy(tokenizer)
    if re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return trained
    if template == SMOLLM2_TEMPLATE:
        trained.chat_template = SMOLLM2_TRAINING_TEMPLATE
        return trained
    from trl.chat_template_utils import get_training_chat_template  # lazy: TRL takes seconds to import

    try:
        patched = get_training_chat_template(tokenizer)
    except Exception:  # TRL raises for templates it does not know
        patched = None
    if patched is None:
        raise UserError(
            "the model's chat template has no {% generation %} markers and TRL knows no training variant of it; "
            "use a model whose tokenizer's chat template marks assistant replies with {% generation %}"
        )
    trained.chat_template = patched
    return trained


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], prefill: str = "") -> str:
    """The text a model sees before generating its next assistant turn (plus an optional assistant prefill)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
