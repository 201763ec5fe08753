"""Settings of fine-tuning, and nothing that runs it: any layer imports these cheaply (no torch, TRL or PEFT).

The machinery lives beside: `lora.py` (PEFT), `sft.py` (TRL), `steering.py`, `launch.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mow.workbench.config import LayerChoices, Seed, StrictModel, Threads

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank, 1 to 1024 (and at most the model's width)")
    alpha: float = Field(32, gt=0, le=65536)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    layers: LayerChoices | None = Field(None, description="only these decoder layers get adapters (None: all): "
                                                          "indices, fractions of the depth, or a range FROM:TO; "
                                                          "checked against the model's depth before anything is "
                                                          "written")
    use_rslora: bool = False


class TrainingSettings(StrictModel):
    epochs: float = Field(3.0, gt=0, le=100, description="passes over the training data, above 0 and at most 100")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="peak learning rate, above 0 and at most 1")
    batch_size: int = Field(8, ge=1, le=65536, description="chats per optimizer step (before grad_accum), over all "
                                                         "processes of a distributed launch: the same config trains "
                                                         "the same way")
    grad_accum: int = Field(1, ge=1, le=1024)
    chat_template: str | None = Field(None, description="one of the chat templates TRL ships (llama3, qwen2_5, "
                                                         "gemma, phi3, ...) or a Jinja file, for training masks and "
                                                         "prompts alike; None: the model's own")
    max_length: int = Field(512, ge=16, le=1_048_576, description="tokens per training chat; longer chats are cut "
                                                                    "and counted (see max_truncated_fraction)")
    max_truncated_fraction: float = Field(0.02, ge=0, le=1, description="share of training chats that may be cut "
                                                                      "at max_length; above it the build stops "
                                                                      "before training (the count is always "
                                                                      "reported)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                          "polynomial", "inverse_sqrt"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, le=1)
    save_steps: int = Field(25, ge=1)
    logging_steps: int = Field(5, ge=1)
    gradient_checkpointing: bool = False
    precision: Precision = Field("auto", description="auto: bf16 where the GPU or the CPU's matrix units do it fast")
    optimizer: Literal["adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit",
                       "paged_adamw_32bit"] = Field("adamw_torch_fused",
                                                    description="8-bit and paged optimizers need bitsandbytes + CUDA")
    group_by_length: bool = Field(True, description="batch chats of similar length together: less padding")
    padding_free: bool = Field(False, description="concatenate each batch into one sequence (no padding at all); "
                                                  "pays off with flash attention on a GPU, not with CPU attention")
    labelled_positions_head: bool = Field(True, description="project only positions that carry a label through the "
                                                            "LM head (CPU; TRL's fused head already does it on GPUs)")
    threads: Threads | None = Field(None, description="torch CPU threads (None: torch's default)")


class SteeringSettings(StrictModel):
    """Which directions to ablate (or add) while training, from a `mow.directions/1` file."""

    directions: Path = Field(description="NAME.safetensors (or .json) written by `mow diff`, or your own")
    select: dict[int, list[int]] | None = Field(
        None, description="layer -> row indices of the file to use (from the candidates view); None: every row")
    mode: Literal["ablate", "add"] = "ablate"
    add_norm: float = Field(4.0, ge=0, le=1e4, description="mode add: norm of the vector added along each direction")
    control: Literal["none", "random", "all"] = Field(
        "none", description="random: as many random directions at the same layers (baseline); all: every row of the "
                            "file at the chosen layers, no selection (baseline)")
    random_seed: Seed = 0
    skip_first: int = Field(1, ge=0, description="positions at the start of each sequence left unsteered: 1 spares "
                                                 "the attention sink; 0 steers every position")


class LaunchSettings(StrictModel):
    """How the training stage runs: in this process, or on N processes through `accelerate launch`."""

    launcher: Literal["none", "accelerate", "deepspeed"] = "none"
    config_file: Path | None = Field(None, description="accelerate config (default: configs/launch/ddp.yaml for "
                                                       "accelerate, zero2.yaml for deepspeed)")
    deepspeed_config: Path | None = Field(None, description="a DeepSpeed JSON, instead of the accelerate config's "
                                                           "inline DeepSpeed settings")
    num_processes: int = Field(2, ge=1, description="in total, over all machines (accelerate's meaning)")
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int = Field(29500, ge=1, le=65535)

    @model_validator(mode="after")
    def _consistent(self) -> LaunchSettings:
        if self.launcher == "none":
            return self
        if self.deepspeed_config is not None and self.launcher != "deepspeed":
            raise ValueError("--deepspeed-config needs --launcher deepspeed")
        if self.num_processes % self.num_machines:
            raise ValueError(f"--num-processes {self.num_processes} does not split evenly over "
                             f"--num-machines {self.num_machines}")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"--machine-rank {self.machine_rank} is not below --num-machines {self.num_machines}")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("--num-machines above 1 needs --main-process-ip (the address of machine rank 0)")
        return self

    @property
    def distributed(self) -> bool:
        return self.launcher != "none"

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines
