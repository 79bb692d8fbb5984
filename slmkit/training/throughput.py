"""Model FLOPs utilization: achieved training FLOP/s over the detected device's dense peak for the run's dtype.

Peak figures come from Lightning's device table; H200 is mapped by hand because that table lists its sparse figures.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.throughput import get_available_flops

from slmkit.training.precision import compute_dtype

# H200 has the H100 SXM's tensor cores and clocks: the same dense peaks (989.4 TFLOP/s bf16/fp16, 494.7 tf32).
_H200_DENSE = {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, "tfloat32": 494.7e12, torch.float32: 66.9e12}


def peak_flops_per_device(precision: str) -> float | None:
    """Dense peak FLOP/s of one visible CUDA device for the run's compute dtype; None on CPU or unknown GPUs."""
    if not torch.cuda.is_available():
        return None
    dtype = compute_dtype(precision)
    device = torch.device("cuda", torch.cuda.current_device())
    if "h200" in torch.cuda.get_device_name(device).lower():
        if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
            return _H200_DENSE["tfloat32"]
        return _H200_DENSE[dtype]
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


def peak_memory_gb() -> float:
    """Peak accelerator memory of this process (GiB), or its peak resident memory on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
