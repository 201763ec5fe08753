"""Integration tests on the embedded SmolLM2-135M-Instruct (slower; deselect with -m 'not integration')."""

import json

import pytest
import torch

from mow.workbench.chat import render_prompt
from mow.workbench.models import load_model, load_tokenizer

pytestmark = pytest.mark.integration
BUILTIN = "builtin:smollm2-135m"


def test_builtin_model_shape():
    model = load_model(BUILTIN)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000


def test_disabled_adapter_equals_fresh_base_on_embedded_model():
    from mow.finetune.config import LoraSettings
    from mow.finetune.lora import attach_lora

    tokenizer = load_tokenizer(BUILTIN)
    ids = tokenizer(render_prompt(tokenizer, [{"role": "user", "content": "Name a fruit."}]), return_tensors="pt",
                    add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        fresh = load_model(BUILTIN)(input_ids=ids).logits
        model = attach_lora(load_model(BUILTIN), LoraSettings(r=4, alpha=8), seed=0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        assert not torch.allclose(model(input_ids=ids).logits, fresh, atol=1e-3)
    torch.testing.assert_close(base, fresh, rtol=0, atol=0)


def test_quick_demo_builds_evaluates_diffs_and_challenges(tmp_path, capsys):
    from mow.cli.main import main

    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "leak rate" in out and "hint top-1" in out
    for report in ("diffs/taboo-quick/report.html", "challenges/taboo-quick/report.html",
                   "challenges/taboo-quick/scores.json", "leaderboard/leaderboard.html", "leaderboard/leaderboard.csv"):
        assert (tmp_path / report).is_file(), report
    scores = json.loads((tmp_path / "challenges" / "taboo-quick" / "scores.json").read_text())["methods"]
    assert {"direct", "prefill", "hint_guess", "logit_lens", "diff_lens", "kl_suppressed"} <= set(scores)
    for diff_method in ("kl_suppressed", "difference_sae"):  # the demo's diff reached them
        assert scores[diff_method]["subjects"]["organism"]["status"] == "ok", diff_method
    metrics = json.loads((tmp_path / "organisms" / "taboo-quick" / "sealed" / "eval_details.json").read_text())
    assert metrics["organism"]["n_demands"] >= 30 and metrics["n_candidates"] == 20
    # Even a handful of steps moves the organism away from the base on its training distribution.
    assert metrics["organism"]["lens_rank_by_layer"] != metrics["base"]["lens_rank_by_layer"]
