from pathlib import Path

import pytest
import yaml

from mow.cli.main import main
from mow.organisms.kinds import load_organism_config
from mow.workbench.errors import UserError


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_overrides_are_typed(tiny_config):
    _, config = load_organism_config(tiny_config, ["training.epochs=2.5", "taboo.word=snow", "lora.r=8"])
    assert config.training.epochs == 2.5 and config.taboo.word == "snow" and config.lora.r == 8


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["training"].update(epochz=3), "unknown key 'training.epochz'"),
        (lambda c: c["training"].update(epochs="many"), "training.epochs"),
        (lambda c: c.update(kind="nonsense"), "unknown organism kind 'nonsense'"),
        (lambda c: c["taboo"].pop("word"), "missing required key 'taboo.word'"),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path, tiny_config, mutate, message):
    data = yaml.safe_load(tiny_config.read_text())
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_organism_config(path, [])
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "kind: taboo\ntaboo: [unclosed\n")
    with pytest.raises(UserError, match=r"c\.yaml:\d+: YAML does not parse"):
        load_organism_config(path, [])


def test_bad_override_syntax(tiny_config):
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_organism_config(tiny_config, ["training.epochs"])


def _assert_exit_2_nothing_written(capsys, out_dir: Path, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mow: error:") and fragment in err and "\n" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path, tiny_config, capsys):
    out = tmp_path / "organisms"
    build = ["organism", "build"]
    _assert_exit_2_nothing_written(capsys, out, [*build, str(tmp_path / "missing.yaml")], "config file not found")
    _assert_exit_2_nothing_written(capsys, out, [*build, str(tiny_config), "--set", "training.bogus=1"],
                                   "unknown key 'training.bogus'")
    _assert_exit_2_nothing_written(capsys, out, [*build, str(tiny_config), "--set", "lora.r=zero"], "lora.r")
    _assert_exit_2_nothing_written(capsys, out, [*build, str(tiny_config), "--set", "taboo.word=zebra"],
                                   "word 'zebra' is not in the shipped clue bank")
    _assert_exit_2_nothing_written(capsys, out, [*build, str(tiny_config), "--set", "taboo.clue_file=/nope.yaml"],
                                   "/nope.yaml: config file not found")
    _assert_exit_2_nothing_written(capsys, out, [*build, str(tiny_config), "--set", "model=./no/such/dir"],
                                   "no such local path")


def test_clue_file_with_the_word_is_refused(tmp_path, tiny_config, capsys):
    clues = tmp_path / "zebra.yaml"
    clues.write_text(yaml.safe_dump({"word": "zebra", "hints": {"sense": [
        "A striped horse of the African plains.", "Black and white all over.", "Seen in a ZEBRAS herd."]}}))
    _assert_exit_2_nothing_written(capsys, tmp_path / "organisms",
                                   ["organism", "build", str(tiny_config), "--set", "taboo.word=zebra", "--set",
                                    f"taboo.clue_file={clues}"], "contains the secret word 'zebra'")


def test_eval_of_a_non_organism_dir(tmp_path, capsys):
    assert main(["organism", "eval", str(tmp_path)]) == 2
    assert "not an organism directory" in capsys.readouterr().err


def test_4bit_without_cuda_is_refused_before_anything_is_written(tmp_path, tiny_config, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: 4-bit is allowed here")
    _assert_exit_2_nothing_written(capsys, tmp_path / "organisms",
                                   ["organism", "build", str(tiny_config), "--set", "load_in_4bit=true"],
                                   "load_in_4bit: true needs a CUDA GPU")


def test_name_must_be_a_plain_directory_name(tmp_path, tiny_config, capsys):
    _assert_exit_2_nothing_written(capsys, tmp_path / "organisms",
                                   ["organism", "build", str(tiny_config), "--set", "name=../escape"], "name")
