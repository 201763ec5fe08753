"""Distributed training through `accelerate launch`: DDP, or DeepSpeed ZeRO-2/3 with or without CPU offload.

Only the training stage is distributed. The pipeline (data, evaluation, card) stays in the one process the user
started; at its train stage it writes a job (the examples, the LoRA and training settings, where to put the adapter)
and re-launches `python -m mow.finetune.worker JOB` on every rank through `accelerate launch` with a resolved accelerate
config. The workers train with TRL's SFTTrainer, which takes DDP or DeepSpeed from accelerate; rank 0 writes the
adapter (under ZeRO-3 after gathering the LoRA parameters) and the result, and the pipeline goes on from there.

On several machines, every machine runs the same `mow organism build` with its own `--machine-rank` and its own
local output directory: each makes the same (seeded) training data, and the machines of rank above 0 stop once
their workers have trained; machine rank 0 goes on to evaluate and write the organism.

Everything a launch needs is checked before any model loads: the accelerate config and a user's DeepSpeed JSON
parse, DeepSpeed is installed and has GPUs, and there are at least as many devices (GPUs, or CPU cores) per machine as
processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from mow.finetune.config import LaunchSettings
from mow.workbench.config import read_yaml_mapping, shipped_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json

DEFAULT_LAUNCH_CONFIG = {"accelerate": shipped_config("launch/ddp.yaml"),
                         "deepspeed": shipped_config("launch/zero2.yaml")}


class SecondaryMachineFinished(Exception):
    """A machine of rank above 0 has trained its share; machine rank 0 writes the organism."""


def read_accelerate_config(path: Path) -> dict:
    """An accelerate config file as a mapping, validated by accelerate's own loader."""
    from accelerate.commands.config.config_args import ClusterConfig  # lazy: accelerate's CLI, only for launches

    if not path.is_file():
        raise UserError(f"--launch-config {path}: no such file")
    raw = read_yaml_mapping(path)
    try:
        ClusterConfig.from_yaml_file(str(path))
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"--launch-config {path}: accelerate rejects it: {str(exc).splitlines()[0]}") from None
    return raw


def read_deepspeed_config(path: Path) -> dict:
    """A user's DeepSpeed JSON: it must parse, be an object, and name a ZeRO stage DeepSpeed has."""
    if not path.is_file():
        raise UserError(f"--deepspeed-config {path}: no such file")
    config = read_json(path, "--deepspeed-config file")
    zero = config.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3):
        raise UserError(f"--deepspeed-config {path}: zero_optimization.stage is {stage!r}; DeepSpeed has 0, 1, 2, 3")
    return config


def resolved_accelerate_config(launch: LaunchSettings) -> dict:
    """The accelerate config this launch runs with: the chosen file, with processes, machines and rendezvous set,
    and a user's DeepSpeed JSON (by absolute path) in place of inline DeepSpeed settings."""
    path = launch.config_file or DEFAULT_LAUNCH_CONFIG[launch.launcher]
    config = read_accelerate_config(path)
    is_deepspeed = config.get("distributed_type") == "DEEPSPEED"
    if launch.launcher == "deepspeed" and not is_deepspeed:
        raise UserError(f"--launch-config {path}: distributed_type is {config.get('distributed_type')!r}; "
                        "--launcher deepspeed needs a DEEPSPEED config (configs/launch/zero*.yaml)")
    if launch.launcher == "accelerate" and is_deepspeed:
        raise UserError(f"--launch-config {path}: a DeepSpeed config; use --launcher deepspeed with it")
    if launch.deepspeed_config is not None:
        read_deepspeed_config(launch.deepspeed_config)
        config["deepspeed_config"] = {"deepspeed_config_file": str(launch.deepspeed_config.resolve())}
    config.update(num_processes=launch.num_processes, num_machines=launch.num_machines,
                  machine_rank=launch.machine_rank, main_process_port=launch.main_process_port,
                  use_cpu=False)  # on a CPU the Trainer itself asks for gloo (use_cpu); accelerate's --cpu is 1 process
    if launch.main_process_ip:
        config["main_process_ip"] = launch.main_process_ip
    return config


def check_launch(launch: LaunchSettings) -> dict | None:
    """Everything that can be checked before a model loads; returns the resolved accelerate config (None: no launch)."""
    if not launch.distributed:
        return None
    config = resolved_accelerate_config(launch)
    cuda = torch.cuda.is_available()
    if launch.launcher == "deepspeed":
        if not cuda:
            raise UserError("--launcher deepspeed: DeepSpeed ZeRO needs CUDA GPUs (none found); on a CPU use "
                            "--launcher accelerate (DDP over gloo)")
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("--launcher deepspeed: DeepSpeed is not installed; run: pip install -e '.[gpu]'")
    per_machine = launch.processes_per_machine
    devices, kind = (torch.cuda.device_count(), "CUDA devices") if cuda else (os.cpu_count() or 1, "CPU cores")
    if per_machine > devices:
        raise UserError(f"--num-processes {launch.num_processes} over {launch.num_machines} machine(s) is "
                        f"{per_machine} per machine, but this machine has {devices} {kind}")
    return config


def launch_command(accelerate_config_path: Path, job_path: Path, threads_per_process: int | None) -> list[str]:
    """The `accelerate launch` command that runs the training worker on every rank of this machine."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config_path)]
    if threads_per_process:
        command += ["--num_cpu_threads_per_process", str(threads_per_process)]
    return command + ["-m", "mow.finetune.worker", str(job_path)]


def cpu_threads_per_process(launch: LaunchSettings) -> int | None:
    """On a CPU, the cores split between this machine's processes (two processes that each take every core run
    about ten times slower than one); on GPUs, accelerate's default."""
    if torch.cuda.is_available():
        return None
    return max(1, (os.cpu_count() or 1) // launch.processes_per_machine)


def run_launch(accelerate_config: dict, job_dir: Path, job: dict, launch: LaunchSettings) -> dict:
    """Write the resolved accelerate config and the job into `job_dir`, launch the workers and wait for them;
    returns the result rank 0 wrote."""
    job_dir.mkdir(parents=True, exist_ok=True)
    config_path = job_dir / "accelerate.yaml"
    config_path.write_text(yaml.safe_dump(accelerate_config, sort_keys=False))
    job_path = job_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    result_path = Path(job["result_path"])
    result_path.unlink(missing_ok=True)
    command = launch_command(config_path, job_path, cpu_threads_per_process(launch))
    print(f"[mow] launching: {' '.join(command)}", file=sys.stderr, flush=True)
    completed = subprocess.run(command)
    if completed.returncode != 0:
        raise RuntimeError(f"distributed training exited with status {completed.returncode} "
                           f"(command: {' '.join(command)})")
    if launch.machine_rank != 0:
        raise SecondaryMachineFinished(f"machine rank {launch.machine_rank}: training finished; machine rank 0 "
                                       "evaluates and writes the organism")
    if not result_path.is_file():
        raise RuntimeError(f"distributed training finished without writing {result_path}")
    return read_json(result_path, "launched training result")
