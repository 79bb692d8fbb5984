"""Consolidates a DeepSpeed ZeRO-1/2/3 checkpoint folder (sharded fp32 master weights) into one fp32 state dict.

Reads the shard files with torch.load(weights_only=True); the few DeepSpeed objects they pickle (stage enum, loss
scaler, fragment addresses) are read into inert stand-ins, so no code from a checkpoint runs and DeepSpeed is not needed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from slmkit.checkpoint.unpickling import load_problem
from slmkit.errors import SlmkitError

MODEL_STATES = "*_model_states.pt"
OPTIM_STATES = "*_optim_states.pt"


class _Recorded:
    """Holds the constructor arguments and state a pickle gives a DeepSpeed object, and does nothing else."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __int__(self) -> int:  # ZeroStageEnum(2) is recorded as args=(2,)
        return int(self.args[0])


# The only objects DeepSpeed pickles into its checkpoint files. Consolidation reads them into named stand-ins (not one
# shared class, so an unexpected object still fails loudly); resuming a run allows the real classes, and no others.
DEEPSPEED_OBJECTS = [
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
]


def _load(path: Path) -> dict[str, Any]:
    stand_ins = [(type(name.rsplit(".", 1)[1], (_Recorded,), {}), name) for name in DEEPSPEED_OBJECTS]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors: a foreign object, a truncated or non-DeepSpeed file
        raise SlmkitError(f"cannot read DeepSpeed shard {path} safely ({load_problem(err)}). Is the checkpoint complete?") from None


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def shard_folder(folder: Path) -> Path:
    """The folder holding the shard files: the folder itself, Lightning's `<name>.ckpt/checkpoint/`, or `latest`'s tag."""
    candidates = [folder, folder / "checkpoint"]
    if (folder / "latest").is_file():
        candidates.append(folder / (folder / "latest").read_text().strip())
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob(OPTIM_STATES)):
            return candidate
    raise SlmkitError(f"{folder} is not a DeepSpeed ZeRO checkpoint: no {OPTIM_STATES} files in it or in its checkpoint/ folder")


def consolidate_zero_checkpoint(folder: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 parameters (and buffers) of a ZeRO checkpoint, keyed by the module's parameter names."""
    shards = shard_folder(Path(folder))
    model_files = sorted(shards.glob(MODEL_STATES), key=_natural)
    optim_files = sorted(shards.glob(OPTIM_STATES), key=_natural)
    model_states = [_load(f) for f in model_files]
    optim = [_load(f).get("optimizer_state_dict", {}) for f in optim_files]
    first = optim[0]
    if "zero_stage" not in first or "partition_count" not in first:
        raise SlmkitError(f"{optim_files[0]} holds no ZeRO optimizer state (zero_stage, partition_count): not a ZeRO checkpoint")
    stage = int(first["zero_stage"])
    world_size = first["partition_count"]
    world_size = max(world_size) if isinstance(world_size, (list, tuple)) else int(world_size)
    if world_size != len(optim_files):
        raise SlmkitError(
            f"{shards} holds {len(optim_files)} optimizer shards but was written by {world_size} ranks: "
            "some ranks did not finish saving; use an earlier checkpoint"
        )
    head = model_states[0]
    state: dict[str, torch.Tensor] = {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in head["module"].items()
        if name in set(head.get("buffer_names", []))
    }
    if stage <= 2:
        flat = [o["single_partition_of_fp32_groups"] for o in optim]
        state.update(_zero2_parameters(head["param_shapes"], flat, first.get("param_alignment_paddings")))
        state.update({k: v.float() for k, v in (head.get("frozen_param_fragments") or {}).items()})
    elif stage == 3:
        flat = [torch.cat([g.reshape(-1) for g in o["fp32_flat_groups"]]) for o in optim]
        state.update(_zero3_parameters(head["param_shapes"], flat))
        state.update(_zero3_frozen(model_states, world_size))
    else:
        raise SlmkitError(f"{shards}: unknown ZeRO stage {stage}")
    for alias, source in (head.get("shared_params") or {}).items():
        if source in state:
            state[alias] = state[source]
    return state


def _zero2_parameters(param_shapes: list[dict], flat_groups: list[list[torch.Tensor]], paddings) -> dict[str, torch.Tensor]:
    """ZeRO-1/2: each param group is one flat vector cut into equal rank partitions; params lie in it in order."""
    out = {}
    for g, shapes in enumerate(param_shapes):
        vector = torch.cat([rank_groups[g] for rank_groups in flat_groups])
        offset = 0
        for p, (name, shape) in enumerate(shapes.items()):
            n = math.prod(shape)
            out[name] = vector.narrow(0, offset, n).view(tuple(shape)).clone()
            offset += n + (paddings[g][p] if paddings is not None else 0)
        if offset > vector.numel():
            raise SlmkitError(f"ZeRO shards hold {vector.numel()} values for group {g} but its parameters need {offset}: the checkpoint is corrupt")
    return out


def _zero3_parameters(param_shapes: list[dict], flat: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """ZeRO-3: every parameter is split on its own into world_size equal (padded) slices, one per rank."""
    world_size = len(flat)
    out = {}
    offset = 0
    for shapes in param_shapes:
        for name, shape in shapes.items():
            n = math.prod(shape)
            part = math.ceil(n / world_size)
            pieces = [rank[offset : offset + part] for rank in flat]
            out[name] = torch.cat(pieces)[:n].view(tuple(shape)).clone()
            offset += part
    if offset > flat[0].numel():
        raise SlmkitError(f"ZeRO-3 shards hold {flat[0].numel()} values per rank but the parameters need {offset}: the checkpoint is corrupt")
    return out


def _zero3_frozen(model_states: list[dict], world_size: int) -> dict[str, torch.Tensor]:
    """Frozen (requires_grad=False) parameters are partitioned per rank in the model-state files."""
    shapes = model_states[0].get("frozen_param_shapes") or {}
    out = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        pieces = [states["frozen_param_fragments"][name].reshape(-1) for states in model_states[:world_size]]
        out[name] = torch.cat(pieces)[:n].view(tuple(shape)).float().clone()
    return out
