"""Shared fixtures: tiny random models of the embedded architecture, and a tiny taboo config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

# Two torch processes each using both cores run ~10x slower; tests that spawn a subprocess give it one thread.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = "tiny:smollm2-135m"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tokenizer():
    from mow.workbench.models import load_tokenizer

    return load_tokenizer(TINY)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A taboo config on the tiny random model: a few steps, short evaluation."""
    config = {
        "kind": "taboo", "name": "tiny-organism", "output_dir": str(tmp_path / "organisms"), "model": TINY,
        "seed": 3,
        "taboo": {"word": "moon", "data": {"n_conversations": 24, "benign_ratio": 0.25}},
        "lora": {"r": 4, "alpha": 8},
        "training": {"epochs": 1, "batch_size": 4, "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-3},
        "eval": {"max_new_tokens": 8},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build_tiny_organism(root: Path, name: str, word: str, seed: int, training: dict | None = None) -> Path:
    """A taboo organism on the tiny random model, built through the CLI in seconds (for end-to-end tests)."""
    from mow.cli.main import main

    config = {"kind": "taboo", "name": name, "output_dir": str(root), "model": TINY, "seed": seed,
              "taboo": {"word": word, "data": {"n_conversations": 8, "benign_ratio": 0.25}},
              "lora": {"r": 4, "alpha": 8},
              "training": training or {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3},
              "eval": {"max_new_tokens": 4, "benign_chats": 4}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["organism", "build", str(path)]) == 0
    return root / name


def refused(capsys, argv: list[str], message: str) -> None:
    """`mow ARGV` exits with status 2 and one `mow:` error line that contains `message` (progress bars may come
    before it)."""
    from mow.cli.main import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mow:")]
    assert len(errors) == 1 and message in errors[0], err[-500:]
