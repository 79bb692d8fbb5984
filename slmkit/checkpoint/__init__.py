"""Checkpoints: a run folder's files (config.yaml with the model's heads, tokenizer.json, weights), written atomically
and loaded as tensors only, and DeepSpeed ZeRO checkpoints consolidated without DeepSpeed.

A checkpoint describes itself: loading one needs the model and the run config, never the objective, eval or
distillation code. Eval, generation and export start here, never from a training run's internals.
"""

from slmkit.checkpoint.files import (
    TIED,
    InitReport,
    LoadedCheckpoint,
    build_model,
    init_from_checkpoint,
    load_checkpoint,
    locate_run,
    locate_weights,
    model_from_state,
    read_state_dict,
    save_inference_checkpoint,
    with_tied_names,
)
from slmkit.checkpoint.heads import run_heads, with_heads
from slmkit.checkpoint.run_folder import CONFIG_FILE, WEIGHTS_FILE, RunFolder, checkpoint_step

__all__ = [
    "CONFIG_FILE",
    "InitReport",
    "LoadedCheckpoint",
    "RunFolder",
    "TIED",
    "WEIGHTS_FILE",
    "build_model",
    "checkpoint_step",
    "init_from_checkpoint",
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
