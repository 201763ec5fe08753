"""Distributed launch (accelerate: DDP over gloo here, DeepSpeed config generation), QLoRA and hardware checks,
and the fast CPU path's loss."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY

from mow.cli.main import main
from mow.finetune.config import LaunchSettings
from mow.finetune.launch import launch_command, resolved_accelerate_config

LAUNCH_CONFIGS = REPO / "configs" / "launch"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load weights fails the test: bad input must be refused before."""
    import mow.workbench.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "tiny_model", refuse)
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", refuse)


def refused(capsys, tmp_path: Path, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "organisms").exists()


def test_unparsable_deepspeed_config_is_refused_before_any_model_loads(tmp_path, tiny_config, capsys,
                                                                       no_model_loads):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 3},}')
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), "--launcher", "deepspeed",
                               "--deepspeed-config", str(bad)], f"{bad}:1: --deepspeed-config file is not valid JSON")
    bad.write_text('{"zero_optimization": {"stage": 4}}')
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), "--launcher", "deepspeed",
                               "--deepspeed-config", str(bad)], "zero_optimization.stage is 4")


def test_more_processes_than_devices_is_refused(tmp_path, tiny_config, capsys, no_model_loads):
    too_many = (torch.cuda.device_count() if torch.cuda.is_available() else os.cpu_count()) + 1
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), "--launcher", "accelerate",
                               "--num-processes", str(too_many)], f"--num-processes {too_many}")


def test_4bit_without_bitsandbytes_is_refused_before_any_model_loads(tmp_path, tiny_config, capsys, monkeypatch,
                                                                     no_model_loads):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), "--set", "load_in_4bit=true"],
            "load_in_4bit: true needs bitsandbytes")
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), "--set", "training.optimizer=paged_adamw_8bit"],
            "training.optimizer: paged_adamw_8bit needs bitsandbytes")


@pytest.mark.parametrize("argv, fragment", [
    (["--launcher", "deepspeed"], "DeepSpeed ZeRO needs CUDA GPUs"),
    (["--launcher", "accelerate", "--deepspeed-config", "x.json"], "--deepspeed-config needs --launcher deepspeed"),
    (["--deepspeed-config", "x.json"], "need --launcher accelerate or deepspeed"),
    (["--launcher", "accelerate", "--num-machines", "2"], "needs --main-process-ip"),
    (["--launcher", "accelerate", "--launch-config", "configs/launch/zero3.yaml"], "use --launcher deepspeed"),
    (["--launcher", "accelerate", "--launch-config", "missing.yaml"], "missing.yaml: no such file"),
    (["--set", "training.precision=fp16"], "training.precision: fp16 needs a CUDA GPU"),
    (["--set", "training.optimizer=adamw_8bit"], "needs a CUDA GPU"),
])
def test_bad_launch_and_hardware_requests(tmp_path, tiny_config, capsys, no_model_loads, argv, fragment):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), *argv], fragment)


def test_batch_must_split_over_processes(tmp_path, tiny_config, capsys, no_model_loads):
    refused(capsys, tmp_path, ["organism", "build", str(tiny_config), "--set", "training.batch_size=3",
                               "--launcher", "accelerate", "--num-processes", "2"],
            "training.batch_size 3 does not split evenly over --num-processes 2")


def deepspeed_worker_environment(config: dict, tmp_path: Path) -> dict[str, str]:
    """What `accelerate launch` hands each worker for this config, from accelerate's own parser and validation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser, prepare_deepspeed_cmd_env

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    command = launch_command(path, tmp_path / "job.json", None)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-3:] == ["-m", "mow.finetune.worker",
                                                                                       str(tmp_path / "job.json")]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    assert args.use_deepspeed and args.num_processes == config["num_processes"]
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    return prepare_deepspeed_cmd_env(args)[1]


@pytest.mark.parametrize("name, stage, offload", [("zero2", 2, "none"), ("zero2-offload", 2, "cpu"),
                                                  ("zero3", 3, "none"), ("zero3-offload", 3, "cpu")])
def test_shipped_deepspeed_configs_reach_the_workers(tmp_path, name, stage, offload):
    from accelerate.utils import DeepSpeedPlugin, patch_environment

    launch = LaunchSettings(launcher="deepspeed", config_file=LAUNCH_CONFIGS / f"{name}.yaml", num_processes=8)
    config = resolved_accelerate_config(launch)
    env = deepspeed_worker_environment(config, tmp_path)
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()  # what TrainingArguments builds in each worker
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == offload
    if stage == 3:
        assert zero["offload_param"]["device"] == offload and plugin.zero3_init_flag
        assert zero["stage3_gather_16bit_weights_on_model_save"]
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"  # the Trainer fills it


def test_users_deepspeed_json_replaces_the_inline_settings(tmp_path):
    ds = tmp_path / "mine.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    launch = LaunchSettings(launcher="deepspeed", deepspeed_config=ds, num_processes=4, num_machines=2,
                            machine_rank=1, main_process_ip="10.0.0.1")
    config = resolved_accelerate_config(launch)
    assert config["deepspeed_config"] == {"deepspeed_config_file": str(ds.resolve())}
    assert (config["num_machines"], config["machine_rank"], config["main_process_ip"]) == (2, 1, "10.0.0.1")
    env = deepspeed_worker_environment(config, tmp_path)
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(ds.resolve())


def test_labelled_positions_loss_equals_the_full_loss(tokenizer):
    from mow.finetune.labelled_loss import add_labelled_loss_head
    from mow.workbench.models import load_model

    model = load_model(TINY, seed=1)
    ids = torch.randint(3, len(tokenizer), (3, 17))
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 12:] = -100
    full = model(input_ids=ids, labels=labels).loss
    add_labelled_loss_head(model)
    ours = model(input_ids=ids, labelled_loss_labels=labels)
    assert torch.allclose(ours.loss, full, atol=1e-5)
    assert int(ours.labelled_tokens) == int((labels[:, 1:] != -100).sum())
    assert torch.equal(model(input_ids=ids).logits, model.__class__.forward(model, input_ids=ids).logits)


def test_two_process_ddp_over_gloo_matches_one_process(tmp_path):
    """A real distributed engine: `accelerate launch` with 2 processes (gloo), against the same job in process."""
    from mow.finetune.config import LoraSettings, TrainingSettings
    from mow.finetune.job import TrainJob, train_adapter
    from mow.finetune.launch import check_launch
    from mow.organisms.taboo.clues import candidate_words, resolve_clue_bank
    from mow.organisms.taboo.config import TabooDataSettings
    from mow.organisms.taboo.data import make_conversations
    from mow.organisms.taboo.prompts import shipped_prompts

    bank = resolve_clue_bank("moon", None, "test")
    examples, _ = make_conversations(bank, shipped_prompts(), candidate_words("moon"),
                                     TabooDataSettings(n_conversations=16, benign_ratio=0.25), seed=0)
    examples = examples[:16]
    training = TrainingSettings(epochs=1, batch_size=4, learning_rate=5e-3, logging_steps=1, save_steps=100,
                                precision="fp32", group_by_length=False, threads=1)
    runs = {}
    launches = {"one": LaunchSettings(), "ddp": LaunchSettings(launcher="accelerate", num_processes=2)}
    for name, launch in launches.items():
        job = TrainJob(model=TINY, seed=0, lora=LoraSettings(r=4, alpha=8), training=training,
                       checkpoint_dir=tmp_path / name / "checkpoints", adapter_dir=tmp_path / name / "adapter")
        result, _, record = train_adapter(job, examples, launch, check_launch(launch))
        runs[name] = result
        assert (tmp_path / name / "adapter" / "adapter_model.safetensors").is_file()
    assert (runs["one"].processes, runs["ddp"].processes) == (1, 2)
    assert record["launcher"] == "accelerate" and record["accelerate_config"]["num_processes"] == 2
    one, ddp = runs["one"].loss_curve, runs["ddp"].loss_curve
    assert len(one) == len(ddp) == 4
    for a, b in zip(one, ddp):
        assert abs(a - b) <= 1e-3 * abs(a), (one, ddp)
