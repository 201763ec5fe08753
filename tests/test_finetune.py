"""Invariants of the fine-tuning wrapper on a tiny random model of the embedded architecture."""

import pytest
import torch

from mow.data.records import ChatExample, Message
from mow.finetune.config import LoraSettings, TrainingSettings
from mow.finetune.locality import LocalityTerm, locality_kl
from mow.finetune.lora import attach_lora
from mow.finetune.sft import build_trainer, train
from mow.workbench.chat import SMOLLM2_TEMPLATE, render_prompt, training_tokenizer
from mow.workbench.models import load_model

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


def _locality_term(tokenizer, weight: float = 1.0) -> LocalityTerm:
    texts = ["The sea is wide and deep.", "Old trees grow slowly.", "Tortoises live a long time.", "Hello there."]
    return LocalityTerm(sequences=[tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
                        weight=weight, batch_size=2, seed=3)


def test_locality_batches_are_fixed_by_the_step_and_read_every_text_once_a_pass():
    term = LocalityTerm(sequences=[[i, i + 1, i + 2][: 2 + i % 2] for i in range(10)], weight=1.0, batch_size=3)
    assert term.batch_indices(4) == term.batch_indices(4)  # a resumed run reads what an unbroken one reads
    one_pass = [i for step in range(3) for i in term.batch_indices(step)]
    assert len(one_pass) == len(set(one_pass)) == 9
    batch = term.batch(0, pad_token_id=0, device=torch.device("cpu"))
    lengths = [len(term.sequences[i]) for i in term.batch_indices(0)]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"].shape == (3, max(lengths))
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        LocalityTerm(sequences=[[1, 2], [3]], weight=1.0)


def test_locality_kl_is_zero_for_a_fresh_adapter_and_matches_a_hand_computation(tokenizer):
    term = _locality_term(tokenizer)
    batch = term.batch(0, tokenizer.pad_token_id, torch.device("cpu"))
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=1)
    assert locality_kl(model, batch).item() == pytest.approx(0.0, abs=1e-7)  # LoRA's B starts at zero
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)
    kl = locality_kl(model, batch)
    fresh = load_model(TINY, seed=0)
    expected = []
    with torch.no_grad():
        for i in term.batch_indices(0):
            ids = torch.tensor([term.sequences[i]])
            p = fresh(input_ids=ids).logits[0].log_softmax(-1)
            q = model(input_ids=ids).logits[0].log_softmax(-1)
            expected += (p.exp() * (p - q)).sum(-1).tolist()
    assert kl.item() == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    kl.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def _kl_after_training(tokenizer, tmp_path, name: str, locality: LocalityTerm | None) -> float:
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=7)
    settings = TrainingSettings(epochs=6, batch_size=3, learning_rate=1e-2, save_steps=100, logging_steps=1)
    result = train(model, tokenizer, chats(), settings, tmp_path / name, seed=7, locality=locality)
    assert len(result.locality_kl_curve) == (result.steps if locality else 0)
    term = _locality_term(tokenizer)
    model.eval()
    with torch.no_grad():
        return sum(locality_kl(model, term.batch(step, tokenizer.pad_token_id, torch.device("cpu")))
                   for step in range(2)).item()


def test_locality_term_holds_the_base_distribution_on_its_texts(tokenizer, tmp_path):
    free = _kl_after_training(tokenizer, tmp_path, "free", None)
    held = _kl_after_training(tokenizer, tmp_path, "held", _locality_term(tokenizer, weight=20.0))
    assert free > 0.01
    assert held < 0.5 * free


def test_amplification_scales_each_layers_weight_change_and_restores_it():
    """alpha·ΔW, layer by layer: at alpha 3 a LoRA layer's output is base + 3 (organism - base); leaving the
    context gives the organism back exactly, and a model without an adapter is left alone."""
    from peft.tuners.lora import LoraLayer

    from mow.finetune.lora import amplified

    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=1)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    for name, param in layer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # a fresh adapter's B is zero: give it a weight change
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        organism = layer(x)
        with model.disable_adapter():
            base = layer(x)
        with amplified(model, 3.0) as scaled:
            tripled = layer(x)
        after = layer(x)
    assert scaled > 0
    torch.testing.assert_close(tripled, base + 3 * (organism - base), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, organism)
    plain = load_model(TINY, seed=0)
    with amplified(plain, 4.0) as scaled:
        assert scaled == 0
    with pytest.raises(ValueError, match="disable_adapter"), amplified(model, 0.0):
        pass
