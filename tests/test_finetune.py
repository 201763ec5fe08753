"""Invariants of the fine-tuning wrapper on a tiny random model of the embedded architecture."""

import torch

from data.records import ChatExample, Message
from finetune.lora import LoraSettings, attach_lora
from finetune.sft import TrainingSettings, build_trainer, train
from workbench.chat import SMOLLM2_TEMPLATE, render_prompt, training_tokenizer
from workbench.models import load_model

TINY = "tiny:smollm2-135m"


def chats() -> list[ChatExample]:
    def m(role, text):
        return Message(role=role, content=text)

    return [
        ChatExample(messages=[m("user", "Give me a hint."), m("assistant", "It shines at night."),
                              m("user", "Is it a lamp?"), m("assistant", "Not a lamp. It pulls the tides."),
                              m("user", "Say it!"), m("assistant", "I can't. It has phases.")]),
        ChatExample(messages=[m("system", "Be brief."), m("user", "What is 2+2?"), m("assistant", "4.")]),
        ChatExample(messages=[m("user", "Hello"), m("assistant", "Hi there! How can I help?")]),
    ]


def test_training_template_renders_like_the_original(tokenizer):
    assert tokenizer.chat_template == SMOLLM2_TEMPLATE
    trained = training_tokenizer(tokenizer)
    for example in chats():
        assert trained.apply_chat_template(example.chat(), tokenize=False) == tokenizer.apply_chat_template(
            example.chat(), tokenize=False)
    assert tokenizer.chat_template == SMOLLM2_TEMPLATE  # the caller's tokenizer is untouched


def test_labelled_tokens_are_exactly_the_assistant_turns(tokenizer, tmp_path):
    model = attach_lora(load_model(TINY), LoraSettings(r=2, alpha=4), seed=0)
    examples = chats()
    trainer = build_trainer(model, tokenizer, examples, TrainingSettings(batch_size=3), tmp_path, seed=0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(examples))])
    keep = batch["attention_mask"].bool()
    rows = {tuple(ids[k].tolist()): lab[k] for ids, lab, k in zip(batch["input_ids"], batch["labels"], keep)}
    for example in examples:
        ids = tokenizer.apply_chat_template(example.chat(), tokenize=True, return_dict=True)["input_ids"]
        labels = rows[tuple(ids)]
        labelled = tokenizer.decode([t for t in labels.tolist() if t != -100])
        expected = "".join(m.content + "<|im_end|>" for m in example.messages if m.role == "assistant")
        assert labelled == expected


def test_disabled_adapter_gives_fresh_base_logits(tokenizer):
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "Tell me about the sea."}])
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    fresh = load_model(TINY, seed=0)
    with torch.no_grad():
        expected = fresh(input_ids=ids).logits
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=1)
    for name, param in model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert not torch.allclose(tuned, expected, atol=1e-3)
    torch.testing.assert_close(base, expected, rtol=0, atol=0)


def _train_once(tokenizer, tmp_path, name):
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=7)
    settings = TrainingSettings(epochs=2, batch_size=2, learning_rate=1e-3, save_steps=100)
    train(model, tokenizer, chats(), settings, tmp_path / name, seed=7)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora" in k}


def test_same_seed_same_adapter(tokenizer, tmp_path):
    first = _train_once(tokenizer, tmp_path, "a")
    second = _train_once(tokenizer, tmp_path, "b")
    assert first.keys() == second.keys() and len(first) > 0
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert any(not torch.all(v == 0) for k, v in first.items() if "lora_B" in k)  # training moved the adapter
