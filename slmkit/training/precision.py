"""A run's precision and device, decided in one place: the Lightning precision plugin, the dtype the matmuls run in
(which MFU is measured against), and the weight dtype and autocast of a frozen model run beside training (the teacher
whose logits are cached).

trainer.precision names: fp32; bf16 and fp16 = mixed (fp32 weights, autocast); bf16-true = bf16 weights throughout.
"""

from __future__ import annotations

import contextlib

import torch

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed", "bf16-true": "bf16-true"}
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-true": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the model's matmuls run in under `precision`."""
    return COMPUTE_DTYPES[precision]


def training_device(accelerator: str) -> torch.device:
    """The device one process trains (or runs a teacher) on: the current CUDA device unless none is visible or the
    recipe asks for the CPU."""
    if torch.cuda.is_available() and accelerator != "cpu":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def weights_and_autocast(precision: str, device: torch.device) -> tuple[torch.dtype, contextlib.AbstractContextManager]:
    """The weight dtype and the autocast context in which a model runs forward passes as training under `precision`
    would: fp32 weights under autocast for mixed precision, bf16 weights for bf16-true."""
    if precision == "bf16-true":
        return torch.bfloat16, contextlib.nullcontext()
    if precision in ("bf16", "fp16"):
        return torch.float32, torch.autocast(device.type, dtype=compute_dtype(precision))
    return torch.float32, contextlib.nullcontext()
