"""`mow diff` end to end on a tiny organism, `mow diff-score`, and the bad inputs (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import refused

from mow.cli.main import main
from mow.data.directions import load_directions
from mow.workbench.models import load_model, load_tokenizer

TINY = "tiny:smollm2-135m"
SMALL = ["--set", "prompts.max_items_per_set=5", "--set", "prompts.response_tokens=6", "--set",
         "cache.token_budget=1500", "--set", "crosscoder.latents=64", "--set", "crosscoder.k=4", "--set",
         "crosscoder.batch_size=128", "--set", "crosscoder.epochs=2", "--set", "lens.positions=3", "--set",
         "directions.crosscoder_latents=2"]


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff-organism")
    config = {"kind": "taboo", "name": "tiny-taboo", "output_dir": str(root), "model": TINY, "seed": 2,
              "taboo": {"word": "moon", "data": {"n_conversations": 12, "benign_ratio": 0.25}},
              "lora": {"r": 4, "alpha": 8}, "training": {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3},
              "eval": {"max_new_tokens": 4, "benign_chats": 4}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["organism", "build", str(path)]) == 0
    return root / "tiny-taboo"


@pytest.fixture(scope="module")
def diffed(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffs") / "moon"
    assert main(["diff", str(organism), "--out", str(out), *SMALL]) == 0
    return out


def test_diff_directory_and_report(diffed):
    for name in ("diff.yaml", "manifest.json", "kl/arrays.safetensors", "kl/summary.json", "cache/meta.json",
                 "lens/lens.safetensors", "crosscoder/crosscoder.safetensors", "crosscoder/metrics.json",
                 "directions/pca_of_differences.safetensors", "directions/views.json", "report.html"):
        assert (diffed / name).is_file(), name
    assert not any(p.name.startswith(".") for p in diffed.parent.iterdir())
    summary = json.loads((diffed / "kl" / "summary.json").read_text())
    assert set(summary["set_names"]) == {"organism", "generic_chat", "generic_text"}
    assert {"prompt", "response", "template"} <= set(summary["by_set_and_side"]["organism"])
    assert summary["overall"]["kl_tuned_base"] > 0
    manifest = json.loads((diffed / "manifest.json").read_text())
    assert manifest["provenance"]["commands"] and manifest["stages"]["crosscoder"]["done"]
    report = (diffed / "report.html").read_text()
    for section in ("Per-token KL", "Activation-difference lens", "Crosscoder", "SAE on activation differences",
                    "Concept directions",
                    "data:image/png;base64", 'title="KL(tuned||base)='):
        assert section in report, section
    assert "http://" not in report and "https://" not in report  # opens offline
    for method in ("pca_of_differences", "difference_of_means"):
        directions = load_directions(diffed / "directions" / method, hidden_size=64)
        assert directions.info["method"] == method


def test_the_difference_sae_ranks_latents_by_mass_and_feeds_its_method(diffed):
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from mow.elicitation.config import ChallengeConfig
    from mow.elicitation.methods import METHODS

    summary = json.loads((diffed / "difference_sae" / "metrics.json").read_text())
    assert 0 < summary["metrics"]["difference"] <= 1 and summary["scale"] > 0
    shares = [x["mass_share"] for x in summary["top_latents"]]
    assert 0 < len(shares) <= 20 and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-6
    assert all(len(x["top_tokens"]) == 10 and x["top_contexts"] for x in summary["top_latents"])
    saved = load_file(str(diffed / "difference_sae" / "latents.safetensors"))
    assert saved["top_latents"].tolist() == [x["latent"] for x in summary["top_latents"]]
    assert saved["mass_share"].sum() == pytest.approx(1, abs=1e-4)
    view = SimpleNamespace(diff_dir=diffed, tokenizer=load_tokenizer(TINY))
    result = METHODS["difference_sae"].run(view, ChallengeConfig(), None)
    assert len(result.attempts) == len(shares) and len(result.ranking) == ChallengeConfig().guesses


def test_a_self_diff_is_the_control_every_readout_runs_on(tmp_path):
    """The base model against itself: every stage runs on a zero difference, the SAE says there is nothing to
    encode, and token relevance is judged against a stated description."""
    out = tmp_path / "self"
    assert main(["diff", "--base", TINY, "--tuned", TINY, "--out", str(out), *SMALL,
                 "--set", "relevance.description=A word-guessing game."]) == 0
    assert "identical" in json.loads((out / "difference_sae" / "metrics.json").read_text())["skipped"]
    assert json.loads((out / "kl" / "summary.json").read_text())["overall"]["kl_tuned_base"] == 0
    relevance = json.loads((out / "lens" / "relevance.json").read_text())
    assert relevance["source"] == "relevance.description" and relevance["readouts"]
    report = (out / "report.html").read_text()
    assert "SAE on activation differences" in report and "no difference to encode" in report


def test_token_relevance_judges_every_readout_against_the_public_description_with_controls(diffed):
    from mow.organisms.kinds import other_kind_descriptions
    from mow.organisms.taboo.truth import DESCRIPTION

    found = json.loads((diffed / "lens" / "relevance.json").read_text())
    assert found["description"] == DESCRIPTION and "taboo" in found["source"]
    readouts = set(found["readouts"])
    assert {f"{s} / {r}" for s in ("organism", "generic_chat", "generic_text")
            for r in ("logit lens", "Patchscope")} <= readouts
    for scored in [*found["readouts"].values(), found["random_tokens"]]:
        assert len(scored["tokens"]) == len(scored["lift"]) <= 20
        assert set(scored["controls"]) == set(other_kind_descriptions("taboo"))
        assert scored["relevant"] is None or 0 <= scored["relevant"] <= 1
        assert set(scored["relevant_tokens"]) <= set(scored["tokens"])
    assert len(found["random_tokens"]["tokens"]) == 20
    assert "Token relevance" in (diffed / "report.html").read_text()


def test_diff_never_reads_the_sealed_truth_and_score_does(diffed, organism, capsys):
    public = "".join(p.read_text(errors="ignore") for p in diffed.rglob("*.json"))
    assert "moon" not in (diffed / "diff.yaml").read_text() and "sealed" not in public
    capsys.readouterr()
    assert main(["diff-score", str(diffed), "--organisms", str(organism), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["word"] == "moon"
    for readout in ("logit_lens", "patchscope"):
        ranks = row["difference_lens"][readout]["generic_text"]
        assert len(ranks["by_layer"]) == 4 and all(1 <= r <= 49152 for r in ranks["by_layer"])
        assert ranks["best_oracle"] == min(ranks["by_layer"]) <= ranks["at_layer"]
    assert set(row["kl_promoted"]) == set(row["kl_demoted"]) == {"organism", "generic_chat", "generic_text"}
    assert row["crosscoder"]["latents"] > 0
    capsys.readouterr()
    assert main(["diff-score", str(diffed), "--organisms", str(organism)]) == 0
    assert "moon" in capsys.readouterr().out


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_bad_inputs(organism, tmp_path, capsys):
    out = tmp_path / "out"
    tokenizer = load_tokenizer(TINY)
    base = _save(load_model(TINY), tokenizer, tmp_path / "base")
    from transformers import AutoModelForCausalLM, LlamaConfig

    narrow = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32,
                                                          intermediate_size=64, num_hidden_layers=4,
                                                          num_attention_heads=4, num_key_value_heads=2))
    narrow_dir = _save(narrow, tokenizer, tmp_path / "narrow")
    other_tokenizer = load_tokenizer(TINY)
    other_tokenizer.add_tokens(["<extra_token_for_test>"])
    retokenized = _save(load_model(TINY), other_tokenizer, tmp_path / "retokenized")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused(capsys, ["diff", "--base", base, "--tuned", narrow_dir, "--out", str(out)],
            "hidden sizes differ (64 vs 32)")
    refused(capsys, ["diff", "--base", base, "--tuned", retokenized, "--out", str(out)], "tokenizers differ")
    refused(capsys, ["diff", str(organism), "--out", str(out), "--set", "layer=12"],
            "layer: layer 12 out of range for a model with 4 layers")
    refused(capsys, ["diff", str(organism), "--out", str(out), "--set", f"prompts.extra=[{empty}]"],
            "empty.jsonl: no records (the file is empty)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "x", "messages": []}\n')
    refused(capsys, ["diff", str(organism), "--out", str(out), "--set", f"prompts.extra=[{bad}]"],
            "bad.jsonl:2: row: Value error, a record needs exactly one of 'text' or 'messages'")
    refused(capsys, ["diff", "--base", base, "--out", str(out)], "give either organism")
    refused(capsys, ["diff", str(tmp_path), "--out", str(out)], "not an organism directory")
    refused(capsys, ["diff", str(organism), "--out", str(out), "--set", "cache.dtype=int8"], "cache.dtype")
    assert not out.exists() and not (tmp_path / ".out.partial").exists()
    refused(capsys, ["diff-score", str(tmp_path), "--organisms", str(organism)], "not a finished diff directory")
