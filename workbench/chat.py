"""Chat templates, the one module that knows any: naming a template (TRL's shipped ones or a file), rendering
prompts and whole chats, folding a system message into the first user turn where a template has no system role,
the end-of-turn token, and the training variant of a template with generation markers."""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from mow.workbench.errors import UserError
from mow.workbench.files import read_text

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


# Mistral's instruct format ([INST] ... [/INST], as in Mistral-7B-Instruct-v0.1/v0.2, which have no system role);
# TRL ships no Mistral template, so the workbench carries it, with its training variant.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL_TRAINING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)
OWN_TEMPLATES = {"mistral": MISTRAL_TEMPLATE, "smollm2": SMOLLM2_TEMPLATE}
_OWN_TRAINING_VARIANTS = {SMOLLM2_TEMPLATE: SMOLLM2_TRAINING_TEMPLATE, MISTRAL_TEMPLATE: MISTRAL_TRAINING_TEMPLATE}


@dataclass(frozen=True)
class FamilyChat:
    """What a model family's tokenizer carries for chat: the template it ships (a name `read_chat_template` knows)
    and its special tokens, each a single token. The tiny random models of each family are built from these."""

    template: str
    special_tokens: tuple[str, ...]
    eos: str
    bos: str | None = None


FAMILY_CHATS = {
    "llama3": FamilyChat("llama3", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                         eos="<|eot_id|>", bos="<|begin_of_text|>"),
    "qwen2.5": FamilyChat("qwen2_5", ("<|im_start|>", "<|im_end|>"), eos="<|im_end|>"),
    "qwen3": FamilyChat("qwen3", ("<|im_start|>", "<|im_end|>", "<think>", "</think>"), eos="<|im_end|>"),
    "gemma2": FamilyChat("gemma", ("<bos>", "<start_of_turn>", "<end_of_turn>"), eos="<end_of_turn>", bos="<bos>"),
    "gemma3": FamilyChat("gemma3", ("<bos>", "<start_of_turn>", "<end_of_turn>"), eos="<end_of_turn>", bos="<bos>"),
    "mistral": FamilyChat("mistral", ("<s>", "</s>", "[INST]", "[/INST]"), eos="</s>", bos="<s>"),
    "phi3": FamilyChat("phi3", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
                       eos="<|endoftext|>"),
}


def family_tokenizer(tokenizer: PreTrainedTokenizerBase, family: str) -> PreTrainedTokenizerBase:
    """`tokenizer` dressed as `family`'s: its special tokens added as single tokens, its bos/eos, its template."""
    chat = FAMILY_CHATS[family]
    tokenizer.add_special_tokens({"additional_special_tokens": list(chat.special_tokens)})
    tokenizer.eos_token = chat.eos
    if chat.bos is not None:
        tokenizer.bos_token = chat.bos
    tokenizer.pad_token = chat.eos
    tokenizer.chat_template = read_chat_template(chat.template)
    return tokenizer


TEMPLATE_KEY = "training.chat_template"
_SYSTEM_PROBE, _USER_PROBE = "mow-system-probe", "mow-user-probe"


def shipped_template_names() -> list[str]:
    """The chat templates TRL ships (`trl/chat_templates/NAME.jinja`; their training variants excluded) and the
    workbench's own, by name."""
    trl_names = {p.stem for p in _trl_templates().glob("*.jinja") if not p.stem.endswith("_training")}
    return sorted(trl_names | set(OWN_TEMPLATES))


def _trl_templates() -> Path:
    import trl  # lazy: TRL takes seconds to import

    return Path(trl.__file__).parent / "chat_templates"


def read_chat_template(value: str, source: str = TEMPLATE_KEY) -> str:
    """The text of a chat template named by `value`: one of TRL's shipped names, or a Jinja file."""
    if value in OWN_TEMPLATES:
        return OWN_TEMPLATES[value]
    if value in shipped_template_names():
        return (_trl_templates() / f"{value}.jinja").read_text(encoding="utf-8")
    path = Path(value).expanduser()
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        return read_text(path, f"chat template ({source})")
    names = [*OWN_TEMPLATES, *shipped_template_names()]
    close = difflib.get_close_matches(value, names, n=3) or names[:3]
    raise UserError(f"{source}: {value!r} is neither a chat template name (closest: {', '.join(close)}; all "
                    f"{len(names)} are the files in {_trl_templates()} and {', '.join(OWN_TEMPLATES)}) nor a "
                    "template file")


def use_chat_template(tokenizer: PreTrainedTokenizerBase, value: str | None,
                      source: str = TEMPLATE_KEY) -> PreTrainedTokenizerBase:
    """`tokenizer` with the named chat template (for prompts and training masks alike); unchanged for None. The
    template is checked to render a user/assistant exchange with the contents verbatim and an assistant role."""
    if value is None:
        return tokenizer
    template = read_chat_template(value, source)
    probe = [{"role": "user", "content": _USER_PROBE}, {"role": "assistant", "content": "mow-assistant-probe"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False, chat_template=template)
        prompt = tokenizer.apply_chat_template(probe[:1], tokenize=False, add_generation_prompt=True,
                                               chat_template=template)
    except Exception as exc:  # jinja raises syntax, undefined-variable and template errors of many types
        raise UserError(f"{source}: the chat template {value!r} does not render a chat: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if _USER_PROBE not in rendered or "mow-assistant-probe" not in rendered or prompt == rendered:
        raise UserError(f"{source}: the chat template {value!r} has no assistant role (it does not render an "
                        "assistant reply, or opens no assistant turn for generation)")
    tokenizer.chat_template = template
    return tokenizer


def check_has_template(tokenizer: PreTrainedTokenizerBase, key: str = TEMPLATE_KEY) -> None:
    """Refuse a tokenizer without a chat template, naming the config `key` that gives one."""
    if not tokenizer.chat_template:
        raise UserError(f"the model's tokenizer has no chat template; set {key} to one TRL ships "
                        "(for example llama3, qwen2_5, gemma, phi3) or to a template file")


@lru_cache(maxsize=32)
def _folds_system(template: str) -> bool:
    """Whether a template cannot show a system message as one (it raises, or drops it): then it is folded into the
    first user turn."""
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _USER_PROBE}]
    try:
        rendered, _ = render_jinja_template(conversations=[chat], chat_template=template)
    except Exception:  # "System role not supported" and the like
        return True
    return _SYSTEM_PROBE not in rendered[0]


def fit_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages as the tokenizer's template can take them: where it has no system role, a leading system
    message becomes the start of the first user turn (system text, a blank line, the user text), never dropped."""
    check_has_template(tokenizer)
    template = tokenizer.chat_template
    if not messages or messages[0]["role"] != "system" or not isinstance(template, str) or not _folds_system(
            template):
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


# Jinja put before a template without a system role: the same folding as `fit_messages`, for a template used by
# another program (a served model answers clients that send system messages)
_FOLD_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages | length > 1 and messages[1]['role'] == 'user' -%}"
    "{%- set messages = [{'role': 'user', 'content': messages[0]['content'] + '\n\n' + messages[1]['content']}]"
    " + messages[2:] -%}"
    "{%- else -%}"
    "{%- set messages = [{'role': 'user', 'content': messages[0]['content']}] + messages[1:] -%}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def self_folding_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer's template, made to fold a leading system message into the first user turn itself where it has
    no system role (as `fit_messages` does); None where it needs no change."""
    check_has_template(tokenizer)
    template = tokenizer.chat_template
    if not isinstance(template, str) or not _folds_system(template):
        return None
    return _FOLD_SYSTEM + template


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """A whole chat as text (no generation prompt), through `fit_messages`."""
    return tokenizer.apply_chat_template(fit_messages(tokenizer, messages), tokenize=False)


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn under this tokenizer's template (what a reply ends with)."""
    marker = "mow-end-probe"
    rendered = render_chat(tokenizer, [{"role": "user", "content": _USER_PROBE},
                                       {"role": "assistant", "content": marker}])
    suffix = rendered[rendered.rindex(marker) + len(marker):]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix.strip() else []
    return ids[0] if ids else int(tokenizer.eos_token_id)


def training_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` whose chat template marks assistant replies for assistant-only loss.

    Renders byte-identically to the original template; only the mask markers are added.
    """
    check_has_template(tokenizer)
    template = tokenizer.chat_template or ""
    trained = copy.deepcopy(tokenizer)
    if re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return trained
    if template in _OWN_TRAINING_VARIANTS:
        trained.chat_template = _OWN_TRAINING_VARIANTS[template]
        return trained
    from trl.chat_template_utils import get_training_chat_template  # lazy: TRL takes seconds to import

    try:
        patched = get_training_chat_template(tokenizer)
    except Exception:  # TRL raises for templates it does not know
        patched = None
    if patched is None:
        raise UserError(
            "the model's chat template has no {% generation %} markers and TRL knows no training variant of it; "
            f"set {TEMPLATE_KEY} to a template TRL ships with one (for example llama3, qwen2_5, gemma, phi3) or to "
            "a template file that marks assistant replies with {% generation %}"
        )
    trained.chat_template = patched
    return trained


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], prefill: str = "") -> str:
    """The text a model sees before generating its next assistant turn (plus an optional assistant prefill)."""
    if not prefill:
        return tokenizer.apply_chat_template(fit_messages(tokenizer, messages), tokenize=False,
                                             add_generation_prompt=True)
    # Cut out of a rendering with the prefill as the reply, so it sits where the template puts a reply's text
    # (after Qwen3's empty thinking block, for one), which works for any template that copies contents verbatim.
    rendered = render_chat(tokenizer, [*messages, {"role": "assistant", "content": prefill}])
    return rendered[: rendered.rindex(prefill) + len(prefill)]


@dataclass(frozen=True)
class HiddenSystemPrompt:
    """A system prompt split off a chat template, so that a model can carry it unseen (a hidden-prompt organism).

    `prefix` is the text the model reads first: the template's head with the system prompt, up to where the user's
    first turn starts (cut at a token boundary). `template` renders a chat as the rest: the tokenizer's template with
    its own head (the part before the user's text, with the template's default system prompt where it has one)
    swapped for `tail`, the few public characters between `prefix` and the user's text. Token ids of `prefix`
    followed by those of any rendering with `template` equal the ids of the chat rendered with the system prompt."""

    prefix: str
    template: str
    tail: str

    @property
    def served_template(self) -> str:
        """One template that writes the prefix as text, then renders the chat as the rest: the prompt added by
        whoever renders the chat (a server), for the model without a prefix adapter."""
        return "{{ " + json.dumps(self.prefix) + " }}" + self.template


def _common_prefix(first: str, second: str) -> str:
    length = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    return first[:length]


def hide_system_prompt(tokenizer: PreTrainedTokenizerBase, system: str) -> HiddenSystemPrompt:
    """Split `system` off the tokenizer's chat template (see HiddenSystemPrompt). Works for any template that
    renders the system prompt before the user's first turn, as every shipped family's does (folded into the user
    turn where the template has no system role); a template where the split does not reproduce the full rendering
    token for token is refused."""
    check_has_template(tokenizer)
    first, second = "mow-hidden-probe: what is a tide?", "Another probe, quite different"

    def rendered(user: str, with_system: bool) -> str:
        head = [{"role": "system", "content": system}] if with_system else []
        return render_prompt(tokenizer, [*head, {"role": "user", "content": user}])

    full = rendered(first, True)
    with_system = _common_prefix(full, rendered(second, True))
    default_head = _common_prefix(rendered(first, False), rendered(second, False))
    if system not in with_system or not tokenizer.is_fast:
        raise UserError("the model's chat template does not put the system prompt before the user's turn; a hidden "
                        "system prompt needs one that does (and a fast tokenizer)")
    ids = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    end_of_system = with_system.index(system) + len(system)
    cut = None
    for (_, end), count in sorted(((span, n + 1) for n, span in enumerate(ids["offset_mapping"])),
                                  key=lambda item: -item[0][1]):
        if end_of_system <= end <= len(with_system) and tokenizer(
                full[:end], add_special_tokens=False)["input_ids"] == ids["input_ids"][:count]:
            cut = end
            break
    if cut is None:
        raise UserError("the model's tokenizer gives no token boundary between the system prompt and the user's turn")
    tail = with_system[cut:]
    # A template is Jinja: render it whole into a variable, then swap its own head for the tail.
    template = ("{% set mow_rendered %}" + str(tokenizer.chat_template) + "{% endset %}"
                "{% if mow_rendered.startswith(" + json.dumps(default_head) + ") %}"
                "{{ " + json.dumps(tail) + " + mow_rendered[" + str(len(default_head)) + ":] }}"
                "{% else %}{{ mow_rendered }}{% endif %}")
    hidden = HiddenSystemPrompt(with_system[:cut], template, tail)
    visible = copy.copy(tokenizer)
    visible.chat_template = template
    rest = render_prompt(visible, [{"role": "user", "content": first}])
    if (tokenizer(hidden.prefix, add_special_tokens=False)["input_ids"]
            + tokenizer(rest, add_special_tokens=False)["input_ids"]) != ids["input_ids"]:
        raise UserError("the model's chat template cannot be split into a hidden system prompt and the rest token "
                        "for token")
    return hidden
