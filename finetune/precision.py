"""Which compute precision training uses: `auto` measures what the hardware does best.

On a CUDA GPU, `auto` is bf16 where the GPU has it (Ampere and newer) and fp16 autocast otherwise. On a CPU, bf16 is
only fast where the CPU has bf16 matrix instructions (AVX512-BF16, AMX); elsewhere it is emulated and slower than
fp32. Reading CPU flags misses what oneDNN actually dispatches, so `auto` times dense matmuls in both dtypes (about
half a second, once per process) and takes bf16 autocast where it is clearly faster. Weights stay fp32 (autocast
casts them per matmul), so the residual stream and the optimizer keep fp32 precision.
"""

from __future__ import annotations

import functools
import time
from typing import Literal

import torch

from mow.finetune.config import Precision
from mow.workbench.errors import UserError

CPU_BF16_MIN_SPEEDUP = 1.3  # below this, bf16's rounding is not worth it


def matmul_flops_per_second(dtype: torch.dtype, size: int = 1024, repeats: int = 8,
                            device: str = "cpu") -> float:
    """Measured dense matmul rate (FLOP/s) for square `size` matrices in `dtype` on `device`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


@functools.cache
def cpu_bf16_speedup(trials: int = 5) -> float:
    """How much faster a bf16 matmul is than an fp32 one on this CPU, with the current thread count.

    Best of interleaved trials: a burst of load from elsewhere only ever slows a trial down, so the best rates are
    the hardware's (one-shot timings flipped the choice under a moment's contention)."""
    best = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for _ in range(trials):
        for dtype in best:
            best[dtype] = max(best[dtype], matmul_flops_per_second(dtype, repeats=4))
    return best[torch.bfloat16] / best[torch.float32]


def resolve_precision(requested: Precision, source: str = "training.precision") -> Literal["fp32", "bf16", "fp16"]:
    """The precision to train in on this machine; a clear error where the hardware cannot do what was asked."""
    cuda = torch.cuda.is_available()
    if requested == "fp16" and not cuda:
        raise UserError(f"{source}: fp16 needs a CUDA GPU (none found); use auto, bf16 or fp32 on a CPU")
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"{source}: bf16 needs a GPU with bf16 support (Ampere or newer); "
                        f"this one is {torch.cuda.get_device_name()}: use fp16 or auto")
    if requested != "auto":
        return requested
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP else "fp32"
