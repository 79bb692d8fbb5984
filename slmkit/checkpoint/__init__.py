"""Checkpoints: a run folder's files (config.yaml, tokenizer.json, weights), written atomically and loaded as tensors
only, and DeepSpeed ZeRO checkpoints consolidated without DeepSpeed.

Eval, generation and export start here, never from a training run's internals.
"""

from slmkit.checkpoint.files import (
    CONFIG_FILE,
    TIED,
    WEIGHTS_FILE,
    InitReport,
    LoadedCheckpoint,
    build_model,
    checkpoint_step,
    init_from_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    locate_run,
    locate_weights,
    model_from_state,
    read_state_dict,
    save_inference_checkpoint,
    with_tied_names,
)
from slmkit.checkpoint.heads import run_heads, with_heads

__all__ = [
    "CONFIG_FILE",
    "InitReport",
    "LoadedCheckpoint",
    "TIED",
    "WEIGHTS_FILE",
    "build_model",
    "checkpoint_step",
    "init_from_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "locate_run",
    "locate_weights",
    "model_from_state",
    "read_state_dict",
    "run_heads",
    "save_inference_checkpoint",
    "with_heads",
    "with_tied_names",
]
