"""The one place that knows about devices, distribution, precision and how the model's computation is wrapped:
builds the Lightning Trainer from the recipe, applies activation checkpointing and torch.compile to the model (as
torchtitan's parallelize.py), and gathers the final weights however the strategy sharded them.

Strategies: auto (CPU or one GPU), ddp, and deepspeed (ZeRO 1/2/3, optional CPU offload) with its JSON config
generated from the recipe. The model and the LightningModule never see any of this.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from slmkit.atomic import atomic_path
from slmkit.checkpoint.files import save_torch
from slmkit.checkpoint.unpickling import load_problem
from slmkit.checksum import write_checksum
from slmkit.config import RunConfig, TrainerConfig
from slmkit.console import route_library_logs
from slmkit.errors import SlmkitError
from slmkit.model import Model
from slmkit.training.precision import LIGHTNING_PRECISION, compute_dtype

log = logging.getLogger(__name__)

SMOKE_BLOCK = 256  # tokens per step of a GPU recipe's CPU smoke test


def deepspeed_config(trainer: TrainerConfig) -> dict[str, Any]:
    """The DeepSpeed JSON config for a recipe's trainer section (ZeRO stage, offload, precision, batch, clipping)."""
    if trainer.zero_stage not in (1, 2, 3):
        raise SlmkitError(f"trainer.zero_stage={trainer.zero_stage}: DeepSpeed ZeRO stages are 1, 2 or 3")
    if trainer.offload_params and trainer.zero_stage != 3:
        raise SlmkitError("trainer.offload_params needs trainer.zero_stage=3 (ZeRO-1/2 do not partition parameters)")
    zero: dict[str, Any] = {
        "stage": trainer.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
    }
    if trainer.zero_stage in (1, 2):
        zero["allgather_bucket_size"] = 5e8
    if trainer.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if trainer.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": trainer.micro_batch_size,
        "gradient_accumulation_steps": trainer.grad_accum,
        "gradient_clipping": trainer.grad_clip,
        "zero_optimization": zero,
        # Our AdamW is torch's (decay on matrices only); DeepSpeed accepts it with this flag.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": compute_dtype(trainer.precision) is torch.bfloat16},
        "fp16": {"enabled": compute_dtype(trainer.precision) is torch.float16, "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "wall_clock_breakdown": False,
    }
    return config


def parallelize(model: Model, trainer: TrainerConfig) -> Model:
    """Recomputes each block's activations in the backward pass (activation_checkpointing) and compiles the model
    (compile), in place, so state_dict keys stay those of the plain model."""
    if trainer.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        blocks = set(model.body.blocks)
        apply_activation_checkpointing(model, check_fn=lambda module: module in blocks)
    if trainer.compile:
        model.compile()
    return model


def final_model(config: RunConfig, model: Model, final_checkpoint: Path) -> Model:
    """The trained model with every weight whole: ZeRO-3 leaves each rank a shard of every parameter, so its final
    weights are consolidated from the checkpoint just written."""
    if config.trainer.strategy == "deepspeed" and config.trainer.zero_stage == 3:
        from slmkit.checkpoint import model_from_state, read_state_dict

        return model_from_state(config, read_state_dict(final_checkpoint), final_checkpoint)
    return model


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint under a temporary name, with its checksum, and renames it into place, so a crash
    mid-write never leaves a truncated file under a checkpoint's name nor touches the previous good checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            save_torch(checkpoint, tmp)
            write_checksum(path, tmp)


class SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine, reading and writing through slmkit: DeepSpeed's own reads use
    torch.load(weights_only=False), which runs whatever code a crafted checkpoint folder carries. Reads here take
    tensors and the few DeepSpeed objects its files pickle (allow-listed, as the ZeRO consolidation does), nothing
    else; writes report a full disk as the OSError it is."""

    def __init__(self, engine: Any):
        self.engine = engine

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_deepspeed_file(Path(path), map_location)

    def save(self, state_dict: Any, path: str) -> None:
        save_torch(state_dict, path)

    def __getattr__(self, name: str) -> Any:  # commit, makedirs, is_decoupled, ...: DeepSpeed's own
        return getattr(self.engine, name)


def load_deepspeed_file(path: Path, map_location: Any = None) -> Any:
    """A file of a DeepSpeed checkpoint, loaded as tensors and allow-listed DeepSpeed objects only."""
    from slmkit.checkpoint.zero import DEEPSPEED_OBJECTS

    allowed = [getattr(importlib.import_module(module), name)
               for module, _, name in (spec.rpartition(".") for spec in DEEPSPEED_OBJECTS)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors: a foreign object, a truncated or non-DeepSpeed file
        raise SlmkitError(f"cannot resume from {path} safely ({load_problem(err)}): use a checkpoint this slmkit "
                          "wrote, or an earlier one") from None


def safe_deepspeed_engine(engine: Any) -> Any:
    """Routes every checkpoint read and write of a DeepSpeed engine through SafeCheckpointEngine; returns the engine."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine(engine.checkpoint_engine)
    return engine


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed writes a checkpoint as a folder of shards from every rank; they go into a temporary folder that
    rank 0 checksums and renames into place once all ranks are done. Reads and writes go through
    SafeCheckpointEngine."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        safe_deepspeed_engine(self.deepspeed_engine)
        filepath = Path(self.broadcast(str(filepath)))
        tmp = filepath.with_name(f".{filepath.name}.tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("slmkit_checkpoint_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("slmkit_checkpoint_written")
        if self.is_global_zero:
            write_checksum(filepath, tmp)
            old = filepath.with_name(f".{filepath.name}.old")
            if filepath.exists():
                os.replace(filepath, old)
            os.replace(tmp, filepath)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier("slmkit_checkpoint_renamed")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        safe_deepspeed_engine(self.deepspeed_engine)
        return super().load_checkpoint(checkpoint_path, weights_only)


def apply_cpu_fallback(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """A GPU recipe on a machine without CUDA runs as a CPU smoke test; returns the config and what changed.

    DeepSpeed and mixed precision need GPUs, and a GPU-sized step takes minutes on a CPU: one sequence of at most
    SMOKE_BLOCK tokens per step (a step in seconds), a short validation and a few evaluation examples show that the
    recipe wires up end to end. The weights keep the recipe's shapes, except a learned position table's length.
    """
    trainer = config.trainer
    if torch.cuda.is_available() or trainer.accelerator == "cpu" or (trainer.strategy == "auto" and trainer.precision == "fp32"):
        return config, []
    changes = {"accelerator": "cpu", "strategy": "auto", "devices": 1, "num_nodes": 1, "precision": "fp32",
               "grad_accum": 1, "micro_batch_size": 1, "val_batches": min(trainer.val_batches, 2)}
    changed = [f"trainer.{k}: {getattr(trainer, k)} -> {v}" for k, v in changes.items() if getattr(trainer, k) != v]
    block_size = min(config.model.block_size, SMOKE_BLOCK)
    if block_size != config.model.block_size:
        changed.append(f"model.block_size: {config.model.block_size} -> {block_size}")
    eval_limit = min(config.eval.limit or 5, 5)
    if config.eval.tasks and eval_limit != config.eval.limit:
        changed.append(f"eval.limit: {config.eval.limit} -> {eval_limit}")
    return dataclasses.replace(config, trainer=dataclasses.replace(trainer, **changes),
                               model=dataclasses.replace(config.model, block_size=block_size),
                               eval=dataclasses.replace(config.eval, limit=eval_limit)), changed


def build_trainer(config: RunConfig, out_dir: Path, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    route_library_logs()
    trainer = config.trainer
    accelerator = trainer.accelerator
    if config.optim.name == "muon" and trainer.strategy == "deepspeed":
        # ZeRO hands the optimizer flat partitions of the parameters; Muon needs each matrix whole.
        raise SlmkitError("optim.name=muon orthogonalizes whole weight matrices, and DeepSpeed ZeRO partitions them "
                          "into flat shards: train Muon with trainer.strategy=ddp (or auto), or use optim.name=adamw")
    if trainer.strategy == "deepspeed" and not torch.cuda.is_available():
        raise SlmkitError("trainer.strategy=deepspeed needs CUDA GPUs; on CPU use trainer.strategy=auto or ddp")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise SlmkitError("trainer.accelerator=gpu but no CUDA device is visible; use trainer.accelerator=cpu")
    devices: Any = "auto" if trainer.devices == -1 else trainer.devices
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        devices = 1 if trainer.strategy != "ddp" else (2 if trainer.devices == -1 else trainer.devices)

    plugins: list[Any] = []
    strategy: Any
    if trainer.strategy == "deepspeed":
        strategy = AtomicDeepSpeedStrategy(config=deepspeed_config(trainer))
    elif trainer.strategy == "ddp":
        plugins.append(AtomicCheckpointIO())
        strategy = DDPStrategy(process_group_backend="nccl" if torch.cuda.is_available() else "gloo")
    else:
        plugins.append(AtomicCheckpointIO())
        strategy = "auto"

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=trainer.num_nodes,
        strategy=strategy,
        precision=LIGHTNING_PRECISION[trainer.precision],
        max_steps=trainer.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=trainer.grad_accum,
        # DeepSpeed clips inside its engine (from its config); Lightning clips for the other strategies.
        gradient_clip_val=(trainer.grad_clip or None) if trainer.strategy != "deepspeed" else None,
        val_check_interval=trainer.val_every * trainer.grad_accum,  # counted in micro-batches
        check_val_every_n_epoch=None,
        limit_val_batches=trainer.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=trainer.log_every,
        callbacks=callbacks,
        logger=loggers,
        plugins=plugins or None,
        default_root_dir=str(out_dir),
        enable_checkpointing=False,  # slmkit's StepCheckpoints writes them; no default ModelCheckpoint
        enable_progress_bar=trainer.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the data module shards batches across ranks itself
        deterministic=False,
    )
