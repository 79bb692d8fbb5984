"""The run's typed config: one dataclass tree that a recipe plus overrides resolve into, validated once.

Each section documents its own keys; `slmkit recipes --keys` prints them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from slmkit.atomic import atomic_write_text
from slmkit.data_config import DataConfig, TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.options import check_choices, documented_keys, option
from slmkit.registry import did_you_mean


@dataclass
class OptimConfig:
    lr: float = option(6e-4, "Peak learning rate.")
    min_lr: float = option(6e-5, "Learning rate at the end of the decay.")
    weight_decay: float = option(0.1, "AdamW weight decay, applied to matrices only (not to norms or biases).")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.95, "AdamW beta2.")
    eps: float = option(1e-8, "AdamW epsilon.")
    schedule: str = option("cosine", "Learning-rate schedule by name; wsd is warmup-stable-decay.", choices="slmkit.training.schedule:SCHEDULES")
    warmup_steps: int = option(100, "Linear warmup steps from 0 to lr.")
    decay_steps: Optional[int] = option(None, "Step at which the decay reaches min_lr; None = trainer.max_steps.")
    wsd_decay_fraction: float = option(0.2, "wsd only: the final fraction of decay_steps spent decaying to min_lr.")


@dataclass
class TrainerConfig:
    accelerator: str = option("auto", "auto, cpu or gpu.", choices=("auto", "cpu", "gpu"))
    devices: int = option(-1, "Devices per node; -1 = all visible (one process each).")
    num_nodes: int = option(1, "Number of nodes (multi-node runs are launched by torchrun or SLURM).")
    strategy: str = option("auto", "Distribution by name: auto (one device), ddp, deepspeed.", choices=("auto", "ddp", "deepspeed"))
    zero_stage: int = option(2, "deepspeed only: ZeRO stage 1, 2 or 3.")
    offload_optimizer: bool = option(False, "deepspeed only: keep optimizer state in CPU memory.")
    offload_params: bool = option(False, "deepspeed ZeRO-3 only: keep parameters in CPU memory.")
    precision: str = option("fp32", "Numeric precision: fp32, bf16 (mixed), fp16 (mixed, loss-scaled), bf16-true.", choices=("fp32", "bf16", "fp16", "bf16-true"))
    max_steps: int = option(1000, "Optimizer steps to train for.")
    micro_batch_size: int = option(8, "Sequences per device per forward pass.")
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step (global batch = micro*accum*devices*nodes).")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 disables clipping.")
    log_every: int = option(10, "Log train metrics every this many steps.")
    val_every: int = option(250, "Run validation every this many steps (and at the end).")
    val_batches: int = option(20, "Micro-batches per validation run.")
    checkpoint_every: int = option(1000, "Write a checkpoint every this many steps (and at the end); 0 = only at the end.")
    keep_checkpoints: int = option(2, "Periodic checkpoints to keep (the newest); the final one is always kept.")
    compile: bool = option(False, "torch.compile the model.")
    activation_checkpointing: bool = option(False, "Recompute block activations in the backward pass to save memory.")
    seed: int = option(1337, "Seed of model init, data order and dropout.")
    num_workers: int = option(0, "DataLoader worker processes.")
    progress_bar: bool = option(True, "Show a progress bar with step, loss and tokens/s.")


@dataclass
class EvalConfig:
    tasks: list[str] = option([], "Evaluation tasks (names or task files) run during and after training.")
    every: int = option(0, "Run the tasks every this many steps during training; 0 = only after training.")
    limit: Optional[int] = option(None, "Evaluate at most this many examples per task (quick checks).")
    batch_size: int = option(8, "Sequences per evaluation forward pass.")


@dataclass
class ObjectiveConfig:
    name: str = option("causal_lm", "What the run trains the model to do, by name; it decides the model's heads and the data it reads.", choices="slmkit.objectives:OBJECTIVES")
    task: Optional[str] = option(None, "Fine-tuning objectives: the task (built-in name or task YAML) whose `train` records are learned and whose `data` records are scored.")
    labels: list[str] = option([], "Classification heads: label names in output order; empty = the task's labels (filled in when the run starts and saved with it).")
    pooling: str = option("auto", "Sequence classification: how one vector stands for the sequence, by name; auto = last for a causal model, mean for a bidirectional one.")
    loss_on_prompt: bool = option(False, "sft: also learn to predict prompt tokens; by default only the completion (and its end token) carries loss.")


@dataclass
class LoraConfig:
    rank: int = option(0, "LoRA rank r of the low-rank updates; 0 = no LoRA (every weight trains).")
    alpha: float = option(16.0, "LoRA scale numerator: an update B @ A is scaled by alpha / rank.")
    dropout: float = option(0.0, "Dropout on the input of each LoRA branch.")
    targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Linear layers that get adapters, by module name (the last part, e.g. q_proj, or a full dotted name).")


@dataclass
class RunConfig:
    name: str = option("run", "Name of the recipe / run; the default out_dir is runs/<name>/<timestamp>.")
    out_dir: Optional[str] = option(None, "Run folder: config.yaml, checkpoints/, metrics.jsonl, TensorBoard events.")
    resume: Optional[str] = option(None, "true = continue from the latest checkpoint in out_dir; or a checkpoint path.")
    init_from: Optional[str] = option(None, "Start from the weights of this slmkit run folder or checkpoint (fresh optimizer and schedule); the model section and tokenizer default to its own.")
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------------------------------
# Building a RunConfig from YAML layers and dotted overrides, with errors a user can act on.

def build_config(schema: type, *layers: Any, overrides: Sequence[str] = ()) -> Any:
    """Merges dict/DictConfig layers and `key.sub=value` overrides onto a dataclass schema and returns the dataclass.

    Unknown keys and values of the wrong type raise SlmkitError naming the key, with a did-you-mean.
    """
    merged = OmegaConf.structured(schema)
    try:
        for layer in layers:
            merged = OmegaConf.merge(merged, layer)
        for override in overrides:
            if "=" not in override:
                raise SlmkitError(f"override {override!r} is not of the form key=value (e.g. trainer.max_steps=100)")
            key, value = override.split("=", 1)
            if _is_text_field(schema, key):
                # Taken literally: a prompt like "ROMEO:" must not be read as YAML (a mapping); a bare null still
                # unsets an optional text (init_from=null), as it would in the YAML.
                literal = None if value == "null" else value.strip("\"'") if value[:1] in "\"'" else value
                OmegaConf.update(merged, key, literal)
            else:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _explain(err, schema) from None
    check_choices(config)
    return config


def _is_text_field(schema: type, key: str) -> bool:
    """Whether a dotted key names a str (or Optional[str]) field of the dataclass schema."""
    import typing

    node: Any = schema
    for part in key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return False
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        node = hints[part]
    return node is str or node == Optional[str]


def _explain(err: OmegaConfBaseException, schema: type) -> SlmkitError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in" in str(err) or "Key '" in str(err):
        known = [k.key for k in documented_keys(schema)]
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in known if k.rsplit(".", 1)[0] == parent] if parent else known
        return SlmkitError(
            f"unknown key {key}{did_you_mean(key, known)}"
            + (f"; valid keys under {parent}: {', '.join(k.rsplit('.', 1)[1] for k in siblings)}" if parent and siblings else "")
        )
    if isinstance(err, ValidationError):
        value = getattr(err, "value", None)
        return SlmkitError(f"bad value {value!r} for {key}: {str(err).splitlines()[0]}" if key else f"bad config value: {err}")
    return SlmkitError(f"bad config: {str(err).splitlines()[0]}" + (f" (key {key})" if key else ""))


def config_to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_run_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, config_to_yaml(config))


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"no config.yaml at {path}: point at an slmkit run folder or checkpoint")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: the file is not readable YAML
        raise SlmkitError(f"{path} is not a readable YAML config: {err}") from None
    return build_config(RunConfig, raw)
