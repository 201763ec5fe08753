"""The CAFT spurious-correlation testbed end to end on the tiny model, its data, and its bad inputs."""

import json

from mow.cli.main import main
from mow.data.spurious import VALUES, contrast_items, make_splits

QUICK = ["--set", "model=tiny:smollm2-135m", "--set", "seeds=[0]", "--set", "n_train=8", "--set", "n_test=4",
         "--set", "n_contrast=8", "--set", "layers=[1, 2]", "--set", "training.epochs=1"]


def test_splits_pair_the_features_in_training_and_swap_them_out_of_distribution():
    splits = make_splits(16, 8, seed=3)
    assert {(i.topic, i.sentiment) for i in splits.train} == {("sports", "positive"), ("food", "negative")}
    assert {(i.topic, i.sentiment) for i in splits.out_of_distribution} == {("sports", "negative"),
                                                                          ("food", "positive")}
    train = {i.sentence for i in splits.train}
    assert not train & {i.sentence for i in splits.in_distribution + splits.out_of_distribution}
    first, second = contrast_items("sentiment", 6, seed=0)
    assert {i.sentiment for i in first} == {VALUES["sentiment"][0]} and all(i.topic is None for i in first + second)


def test_testbed_runs_every_condition_and_reports_targets(tmp_path, capsys):
    assert main(["caft", "testbed", "configs/caft-spurious.yaml", "--set", f"output_dir={tmp_path}", *QUICK]) == 0
    out = tmp_path / "caft-spurious"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["conditions"]) == {"base", "plain", "caft", "random"}
    assert set(summary["targets"]) == {"caft_ood_gain", "caft_id_change", "random_ood_shift"}
    directions = json.loads((out / "directions" / "spurious.json").read_text())
    assert set(directions["layers"]) == {"1", "2"} and directions["details"]["feature"] == "sentiment"
    assert "<img" in (out / "report.html").read_text()
    assert "caft_ood_gain" in capsys.readouterr().out


def test_testbed_bad_layer_fails_before_anything_is_written(tmp_path, capsys):
    args = ["caft", "testbed", "configs/caft-spurious.yaml", "--set", f"output_dir={tmp_path}", *QUICK,
            "--set", "layers=[1, 9]"]
    assert main(args) == 2
    assert "layer 9 out of range" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
