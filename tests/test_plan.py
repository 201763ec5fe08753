"""`--plan` figures for three published shapes (Llama 3.2 1B, Llama 3.1 8B, Llama 3.1 70B), config.json written here
from their published sizes, checked against hand computation. Only config.json is read: no weights exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mow.cli.main import main
from mow.finetune.config import LaunchSettings, LoraSettings, TrainingSettings
from mow.finetune.plan import LORA_STATE_BYTES, NF4_BYTES_PER_WEIGHT, plan

SHAPES = {  # name: (hidden, layers, heads, kv heads, intermediate, vocabulary, tied embeddings, published total)
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, True, 1_235_814_400),
    "llama-3.1-8b": (4096, 32, 32, 8, 14336, 128256, False, 8_030_261_248),
    "llama-3.1-70b": (8192, 80, 64, 8, 28672, 128256, False, 70_553_706_496),
}


def write_config(root: Path, name: str) -> Path:
    h, layers, heads, kv, inter, vocab, tied, _ = SHAPES[name]
    directory = root / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab,
        "tie_word_embeddings": tied, "head_dim": h // heads, "max_position_embeddings": 131072}))
    return directory


def by_hand(name: str, r: int) -> tuple[int, int, int]:
    """(total parameters, decoder linear parameters, LoRA parameters on all linear layers at rank r)."""
    h, layers, heads, kv, inter, vocab, tied, _ = SHAPES[name]
    kv_width = kv * (h // heads)
    linear = 2 * h * h + 2 * h * kv_width + 3 * h * inter
    per_layer = linear + 2 * h
    total = vocab * h * (1 if tied else 2) + layers * per_layer + h
    lora = layers * r * ((h + h) * 2 + (h + kv_width) * 2 + (h + inter) * 2 + (inter + h))
    return total, layers * linear, lora


@pytest.mark.parametrize("name", list(SHAPES))
def test_plan_figures_match_hand_computation(tmp_path: Path, name: str) -> None:
    spec = str(write_config(tmp_path, name))
    training = TrainingSettings(batch_size=8, max_length=1024, epochs=1)
    launch = LaunchSettings(launcher="deepspeed", num_processes=8)
    figures = plan(spec, LoraSettings(r=16), training, launch, examples=1000, four_bit=False)
    total, linear, lora = by_hand(name, 16)
    shape = figures["shape"]
    assert (shape.total_params, shape.linear_params, shape.lora_params) == (total, linear, lora)
    assert total == SHAPES[name][7]  # the published parameter count
    assert figures["weights"] == 2 * total  # bf16
    assert figures["lora_state"] == LORA_STATE_BYTES * lora
    four_bit = plan(spec, LoraSettings(r=16), training, launch, examples=1000, four_bit=True)["weights"]
    assert four_bit == pytest.approx(linear * NF4_BYTES_PER_WEIGHT + (total - linear) * 2)
    per_device = figures["per_device"]
    assert per_device["ZeRO-3 x8"] < per_device["ZeRO-2 x8"] < per_device["single process"]
    assert figures["tokens"] == 1000 * 1024
    assert figures["seconds"] == pytest.approx(1000 * 1024 * 4 * total / (989e12 * 0.4))


def test_plan_on_the_command_line_writes_nothing(tmp_path: Path, capsys) -> None:
    spec = str(write_config(tmp_path, "llama-3.1-8b"))
    config = tmp_path / "taboo.yaml"
    config.write_text(yaml.safe_dump({"kind": "taboo", "name": "big", "output_dir": str(tmp_path / "out"),
                                      "model": spec, "taboo": {"word": "moon"}}))
    assert main(["organism", "build", str(config), "--plan", "--launcher", "deepspeed", "--num-processes", "8"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out and "ZeRO-3 + CPU offload x8" in out and "estimate" in out
    assert not (tmp_path / "out").exists()
