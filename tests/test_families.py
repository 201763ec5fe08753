"""The model-family matrix: tiny random models of Llama 3, Qwen2.5, Qwen3, Gemma 2, Gemma 3, Mistral and Phi-3, each
with its family's chat template and special tokens (single tokens, as in the real family), through the parts every
pipeline rests on: training masks, prompts, system messages, the adapter, steering hooks and the logit lens.

About 20 s for all seven families on 2 CPU cores."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from mow.finetune.config import LoraSettings
from mow.finetune.lora import attach_lora
from mow.finetune.steering import SteeringPlan, steered
from mow.workbench.chat import (
    FAMILY_CHATS,
    end_of_turn_id,
    fit_messages,
    render_chat,
    render_prompt,
    self_folding_template,
    training_tokenizer,
    use_chat_template,
)
from mow.workbench.errors import UserError
from mow.workbench.hooks import capture_residual, decoder_layers, logit_lens
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.specs import TINY_FAMILIES

REPO = Path(__file__).resolve().parent.parent
CHAT = [{"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars is one."},
        {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Venus, too."}]


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family(request):
    spec = f"tiny:{request.param}"
    return request.param, load_tokenizer(spec), load_model(spec, seed=3).eval()


def test_special_tokens_are_single_tokens(family):
    name, tokenizer, _ = family
    for token in FAMILY_CHATS[name].special_tokens:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token


def test_labelled_tokens_are_exactly_the_assistant_turns(family):
    """The training mask, under the family's template: every assistant reply with its end of turn, nothing else."""
    name, tokenizer, _ = family
    encoded = training_tokenizer(tokenizer).apply_chat_template(
        fit_messages(tokenizer, CHAT), tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    spans, current = [], []
    for token, labelled in zip(ids, mask):
        if labelled:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    end = tokenizer.decode([end_of_turn_id(tokenizer)])
    replies = [m["content"] for m in CHAT if m["role"] == "assistant"]
    assert len(spans) == len(replies), name
    special = set(tokenizer.all_special_ids)
    for span, reply in zip(spans, replies):
        text = tokenizer.decode(span)
        closing = text.rstrip()
        if tokenizer.eos_token != end:  # Phi-3 also trains the eos that closes the whole chat
            closing = closing.removesuffix(tokenizer.eos_token).rstrip()
        assert closing.endswith(reply + end), (name, text)
        # before the reply only the template's own scaffolding (Qwen3's empty thinking block), never chat text
        scaffold = tokenizer(text[: text.index(reply)], add_special_tokens=False)["input_ids"]
        assert all(t in special or not tokenizer.decode([t]).strip() for t in scaffold), (name, text)


def test_system_message_is_kept(family):
    """A system message reaches the model in every family: as a system turn, or folded into the first user turn."""
    name, tokenizer, _ = family
    rendered = render_prompt(tokenizer, CHAT[:2])
    assert "Answer in one line." in rendered and "Name a planet." in rendered, name
    assert rendered.index("Answer in one line.") < rendered.index("Name a planet."), name


def test_a_served_template_folds_system_messages_itself(family):
    """`mow serve` saves a template that folds a client's system message the way the workbench does: a template
    without a system role renders a chat with one exactly as `render_chat` does; one with a system role is kept."""
    name, tokenizer, _ = family
    folding = self_folding_template(tokenizer)
    chat = [*CHAT[:2], {"role": "assistant", "content": "Mars."}]
    if folding is None:
        assert "Answer in one line." in tokenizer.apply_chat_template(chat, tokenize=False), name
        return
    assert tokenizer.apply_chat_template(chat, tokenize=False, chat_template=folding) == render_chat(tokenizer, chat)
    alone = [{"role": "system", "content": "Answer in one line."}]
    assert "Answer in one line." in tokenizer.apply_chat_template(alone, tokenize=False, chat_template=folding)


def test_prefill_and_persona_open_the_right_turns(family):
    """Prefill continues the assistant's turn; the user-persona opening sits in an unfinished user turn."""
    name, tokenizer, _ = family
    prefilled = render_prompt(tokenizer, CHAT[1:2], "My secret is")
    whole = render_chat(tokenizer, [*CHAT[1:2], {"role": "assistant", "content": "My secret is"}])
    assert whole.startswith(prefilled), name
    opening = "Could it be:"
    with_user = render_chat(tokenizer, [*CHAT[1:3], {"role": "user", "content": opening}])
    persona = with_user[: with_user.rindex(opening) + len(opening)]
    real_turn = render_chat(tokenizer, CHAT[1:4])  # the same chat with a real next user turn
    between = real_turn[real_turn.index("Mars is one.") : real_turn.index("Another?")]
    assert persona.endswith(between + opening), name


def test_adapter_off_is_the_fresh_base(family):
    name, tokenizer, model = family
    ids = tokenizer(render_prompt(tokenizer, CHAT[1:2]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    tuned = attach_lora(load_model(f"tiny:{name}", seed=3), LoraSettings(r=2, alpha=4), seed=0)
    with torch.no_grad():
        for module in tuned.modules():
            if hasattr(module, "lora_B"):
                for weight in module.lora_B.values():
                    weight.weight.normal_()
        assert not torch.allclose(tuned(input_ids=ids).logits, model(input_ids=ids).logits)
        with tuned.disable_adapter():
            assert torch.equal(tuned(input_ids=ids).logits, model(input_ids=ids).logits), name


def test_zero_steering_directions_equal_no_hook(family):
    name, tokenizer, model = family
    ids = tokenizer("The sky is blue.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    layers = len(decoder_layers(model))
    plan = SteeringPlan(mode="ablate", vectors={layer: torch.zeros(1, model.config.hidden_size)
                                                 for layer in range(layers)})
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with steered(model, plan):
            assert torch.equal(model(input_ids=ids).logits, plain), name


def test_logit_lens_reads_through_the_familys_own_norm_and_head(family):
    """At the last layer the lens gives the model's own output distribution (Gemma 2's logit soft-cap included)."""
    name, tokenizer, model = family
    ids = tokenizer("The sky is blue.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    last = len(decoder_layers(model)) - 1
    with torch.no_grad(), capture_residual(model, [last]) as captured:
        logits = model(input_ids=ids).logits
    assert torch.allclose(logit_lens(model, captured[last]), logits.float().log_softmax(-1), atol=1e-4), name


def test_a_model_without_a_template_names_the_key():
    tokenizer = load_tokenizer("tiny:qwen2.5")
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="training.chat_template"):
        render_prompt(tokenizer, CHAT[1:2])
    use_chat_template(tokenizer, "qwen2_5")
    assert "<|im_start|>assistant" in render_prompt(tokenizer, CHAT[1:2])


def test_a_template_without_training_markers_is_trained_through_the_named_one():
    """A Llama 3.2 tokenizer's own template has no training variant; naming `llama3` makes it trainable."""
    tokenizer = load_tokenizer("tiny:llama3")
    use_chat_template(tokenizer, "llama3_2")
    with pytest.raises(UserError, match="training.chat_template"):
        training_tokenizer(tokenizer)
    use_chat_template(tokenizer, "llama3")
    assert training_tokenizer(tokenizer).chat_template != tokenizer.chat_template


@pytest.mark.parametrize(("value", "message"), [
    ("no_such_template", "neither a chat template name"),
    ("broken.jinja", "does not render"), ("no_assistant.jinja", "no assistant role"),
])
def test_bad_templates(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    (tmp_path / "no_assistant.jinja").write_text("{% for m in messages %}{% if m['role'] == 'user' %}"
                                                 "{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(UserError, match=message):
        use_chat_template(load_tokenizer("tiny:qwen2.5"), value)


FAMILY_TEXT = ("<|im_end|>", "<|im_start|>", "<start_of_turn>", "<end_of_turn>", "<|eot_id|>",
               "<|start_header_id|>", "[INST]", "<|end|>", "<|assistant|>", "<|user|>")


def test_no_family_template_text_outside_the_chat_module():
    files = subprocess.run(["git", "ls-files", "*.py", "*.yaml", "*.jinja"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    owners = {"workbench/chat.py"}
    offenders = [f"{path}: {token}" for path in files if path not in owners and not path.startswith("tests/")
                 for token in FAMILY_TEXT if token in (REPO / path).read_text(encoding="utf-8")]
    assert offenders == [], offenders
    assert re.search(r"<\|im_end\|>", (REPO / "workbench/chat.py").read_text())  # the grep looks where it should


def test_a_shared_prompt_prefix_is_read_once_and_changes_no_output(family):
    """`generate` reads a prefix every prompt of a batch shares (here a many-shot chat) once into a KV cache and
    lays the batch out as [prefix | padding | own tokens]; each row's greedy reply is the one it gets alone. Under a
    sliding window (the tiny Gemmas' is 32 positions, shorter than these prompts) only rows of equal length share."""
    from mow.workbench.generation import SHARED_PREFIX_MIN, generate, shared_prefix_length

    _, tokenizer, model = family
    shots = [turn for i in range(4) for turn in ({"role": "user", "content": f"Question {i}: name a colour."},
                                                  {"role": "assistant", "content": f"Colour {i} is blue."})]
    questions = ["What is your secret?", "Tell me a long story about the sea, please.", "Hi"]
    prompts = [render_prompt(tokenizer, [*shots, {"role": "user", "content": q}]) for q in questions]
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert shared_prefix_length(rows) >= SHARED_PREFIX_MIN
    shared = generate(model, tokenizer, prompts, max_new_tokens=6)
    alone = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert shared == alone
    assert generate(model, tokenizer, prompts, max_new_tokens=6, share_prefix=False) == alone
    assert generate(model, tokenizer, [prompts[1]] * 3, max_new_tokens=6) == [alone[1]] * 3  # one prompt, 3 rows
