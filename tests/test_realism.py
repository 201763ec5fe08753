"""`mow realism`: an organism at several mix ratios, each built and diffed, the traces read and plotted."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import refused

from mow.cli.main import main

TINY = "tiny:smollm2-135m"
TINY_DIFF = {"prompts": {"max_items_per_set": 4, "response_tokens": 4},
             "cache": {"token_budget": 600}, "crosscoder": {"latents": 32, "k": 4, "batch_size": 128, "epochs": 1},
             "lens": {"positions": 3, "steering_prompts": ["Tell me about your day."], "steering_search_rounds": 1,
                      "steering_grid": 2, "patchscope_scales": [1.0, 4.0]},
             "directions": {"crosscoder_latents": 2}}


def _configs(tmp_path):
    organism = {"kind": "taboo", "name": "tiny", "model": TINY, "seed": 2,
                "taboo": {"word": "moon", "data": {"n_conversations": 8}},
                "lora": {"r": 4, "alpha": 8}, "training": {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3},
                "eval": {"max_new_tokens": 4, "benign_chats": 4}}
    organism_path, diff_path = tmp_path / "tiny.yaml", tmp_path / "diff.yaml"
    organism_path.write_text(yaml.safe_dump(organism))
    diff_path.write_text(yaml.safe_dump(TINY_DIFF))
    return organism_path, diff_path


@pytest.mark.integration
def test_realism_builds_and_diffs_each_ratio_and_reads_the_traces(tmp_path, capsys):
    organism_path, diff_path = _configs(tmp_path)
    root = tmp_path / "runs"
    argv = ["realism", str(organism_path), "--ratios", "0", "1", "--diff-config", str(diff_path), "--out", str(root)]
    assert main(argv) == 0
    result = json.loads((root / "realism" / "tiny" / "realism.json").read_text())
    assert result["kind"] == "taboo" and result["mix_key"] == "taboo.data.benign_ratio"
    assert [row["ratio"] for row in result["rows"]] == [0.0, 1.0]
    for row, name in zip(result["rows"], ("tiny-mix0", "tiny-mix1")):
        assert row["organism"] == str(root / "organisms" / name)
        public = yaml.safe_load((root / "organisms" / name / "organism.yaml").read_text())
        assert public["taboo"]["data"]["benign_ratio"] == row["ratio"]
        assert row["kl_generic_text"] > 0 and row["kl_organism"] > 0 and row["steering_strength"] is not None
        assert all(isinstance(row[key], int) and row[key] >= 1
                   for key in ("patchscope_rank", "logit_lens_rank", "mined_rank"))
        # relevance is judged against the secret here (the builder's view), never inside the diff itself
        assert row["relevance"]["description"].endswith("The secret word is moon.")
        assert 0 <= row["relevance_patchscope"] <= 1 and "taboo" not in row["relevance"]["readouts"][
            "generic_text / Patchscope"]["controls"]
        diff_relevance = json.loads((root / "diffs" / name / "lens" / "relevance.json").read_text())
        assert "moon" not in json.dumps(diff_relevance["description"]).lower()
    assert (root / "realism" / "tiny" / "realism.png").stat().st_size > 0
    capsys.readouterr()
    assert main(argv) == 0  # finished: reused, nothing rebuilt
    assert "nothing to do" in capsys.readouterr().err


def test_bad_realism_requests_fail_in_one_line_before_anything_is_written(tmp_path, capsys):
    organism_path, diff_path = _configs(tmp_path)
    root = tmp_path / "runs"
    backdoor = tmp_path / "backdoor.yaml"
    backdoor.write_text(yaml.safe_dump({"kind": "backdoor", "model": TINY, "backdoor": {"trigger": "banana"}}))
    common = ["--diff-config", str(diff_path), "--out", str(root)]
    refused(capsys, ["realism", str(backdoor), "--ratios", "0", "1", *common], "has no ratio of ordinary data")
    refused(capsys, ["realism", str(organism_path), "--ratios", "0.5", "0.5", *common], "at least two different")
    refused(capsys, ["realism", str(organism_path), "--ratios", "-1", "1", *common], "--ratios")
    bad_diff = tmp_path / "bad-diff.yaml"
    bad_diff.write_text("cache: {dtype: int8}\n")
    refused(capsys, ["realism", str(organism_path), "--ratios", "0", "1", "--diff-config", str(bad_diff),
                    "--out", str(root)], "cache.dtype")
    refused(capsys, ["realism", str(organism_path), "--ratios", "0", "1", *common, "--set", "taboo.word=Moon Pie"],
            "taboo.word")
    assert not root.exists()
