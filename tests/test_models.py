"""Model specs: parsing, local checkpoints, tiny models."""

import pytest
import torch

from mow.workbench.errors import UserError
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.specs import ModelSpec


def test_spec_kinds(tmp_path):
    assert ModelSpec.parse("builtin:smollm2-135m").kind == "builtin"
    assert ModelSpec.parse("tiny:smollm2-135m").kind == "tiny"
    assert ModelSpec.parse("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(UserError, match="unknown builtin model"):
        ModelSpec.parse("builtin:gpt-9")
    with pytest.raises(UserError, match="no config.json"):
        ModelSpec.parse(str(tmp_path))


def test_local_checkpoint_round_trip(tmp_path, tokenizer):
    model = load_model("tiny:smollm2-135m", seed=4)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    spec = str(tmp_path / "ckpt")
    again = load_model(spec)
    assert len(load_tokenizer(spec)) == len(tokenizer)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tiny_models_are_seeded():
    a, b = load_model("tiny:smollm2-135m", seed=1), load_model("tiny:smollm2-135m", seed=1)
    c = load_model("tiny:smollm2-135m", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
