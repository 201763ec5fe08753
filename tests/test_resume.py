"""A kill during training, then the same command: it resumes from the last checkpoint and finishes the same adapter."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file


def build_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "mow.cli.main", "organism", "build", str(config)]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def long_tiny_config(tiny_config: Path) -> Path:
    """38 steps over two epochs, a checkpoint every 5: a build killed after its tenth step resumes in the first epoch
    and crosses into the second, whose shuffled order it must replay (four builds of it take about a minute)."""
    data = yaml.safe_load(tiny_config.read_text())
    data["taboo"]["data"]["n_conversations"] = 30
    data["training"].update(epochs=2, batch_size=2, save_steps=5)
    data["eval"].update(max_new_tokens=4, benign_chats=4)
    tiny_config.write_text(yaml.safe_dump(data))
    return tiny_config


def test_kill_then_rerun_resumes_and_matches_an_uninterrupted_build(long_tiny_config: Path, tmp_path: Path):
    data = yaml.safe_load(long_tiny_config.read_text())
    out = Path(data["output_dir"])
    final, partial = out / data["name"], out / f".{data['name']}.partial"

    proc = subprocess.Popen(build_cmd(long_tiny_config), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (partial / "checkpoints" / "checkpoint-10" / "trainer_state.json").exists():
        assert proc.poll() is None, "the build finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not final.exists() and partial.is_dir()

    rerun = subprocess.run(build_cmd(long_tiny_config), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming the unfinished build" in rerun.stderr and "resuming from checkpoint-" in rerun.stderr
    assert final.is_dir() and not partial.exists()
    manifest = yaml.safe_load((final / "manifest.json").read_text())
    assert manifest["stages"]["train"]["resumed_from"].startswith("checkpoint-")

    data.update(name="uninterrupted")
    clean_config = tmp_path / "clean.yaml"
    clean_config.write_text(yaml.safe_dump(data))
    clean = subprocess.run(build_cmd(clean_config), env=env(), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    resumed = load_file(final / "adapter" / "adapter_model.safetensors")
    straight = load_file(out / "uninterrupted" / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-6)
    assert (final / "sealed" / "train.jsonl").read_bytes() == (out / "uninterrupted" / "sealed" / "train.jsonl"
                                                                ).read_bytes()

    again = subprocess.run(build_cmd(long_tiny_config), env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already built" in again.stderr
