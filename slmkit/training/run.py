"""`slmkit train`: from a resolved RunConfig to a trained run folder.

Prepares data and tokenizer (reused when unchanged), checks that the tokenizer fits the model, trains with the
built Trainer, resumes exactly from a checkpoint, and leaves config.yaml, checkpoints, metrics and final weights.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from slmkit.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    latest_checkpoint,
    read_state_dict,
    save_inference_checkpoint,
)
from slmkit.config import RunConfig, load_run_config, save_run_config
from slmkit.errors import SlmkitError
from slmkit.training.callbacks import MetricsLogger, PeriodicEvaluation, StepProgressBar
from slmkit.training.datamodule import TokenDataModule
from slmkit.training.module import LanguageModelTask
from slmkit.training.trainer import apply_cpu_fallback, build_trainer

log = logging.getLogger("slmkit")

RUNS_ROOT = Path("runs")
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_val_loss: float | None


def train(config: RunConfig) -> TrainResult:
    config, fallback = apply_cpu_fallback(config)
    for change in fallback:
        log.warning("no CUDA device: running as a CPU smoke test, %s", change)

    out_dir, ckpt_path = _resolve_out_dir_and_resume(config)
    config = dataclasses.replace(config, out_dir=str(out_dir), resume=None)

    from data_prep.prepare import prepare  # data_prep is only needed by training, not by importing slmkit

    prepared = prepare(config.data, config.tokenizer)
    config = fit_vocabulary(config, prepared.tokenizer_path)

    out_dir.mkdir(parents=True, exist_ok=True)
    if ckpt_path is not None:
        _check_same_architecture(config, ckpt_path)
    save_run_config(config, out_dir / CONFIG_FILE)
    shutil.copyfile(prepared.tokenizer_path, out_dir / TOKENIZER_FILE)

    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    task = LanguageModelTask(config)
    data = TokenDataModule(
        prepared.shards_dir,
        block_size=config.model.block_size,
        micro_batch_size=config.trainer.micro_batch_size,
        grad_accum=config.trainer.grad_accum,
        val_batches=config.trainer.val_batches,
        seed=config.trainer.seed,
        num_workers=config.trainer.num_workers,
    )
    callbacks, metrics = _callbacks(config, out_dir, task)
    loggers = [TensorBoardLogger(save_dir=str(out_dir), name="tb", version="", default_hp_metric=False)]
    trainer = build_trainer(config, out_dir, callbacks, loggers)
    metrics.tokens_per_step *= trainer.world_size
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infinite.*")
        trainer.fit(task, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)

    final = out_dir / "checkpoints" / f"step-{trainer.global_step}.ckpt"
    if not final.exists():
        trainer.save_checkpoint(final)
    if trainer.is_global_zero:
        _write_final_weights(config, out_dir, task, final)
        if config.eval.tasks:
            _final_evaluation(config, out_dir)
    val_loss = trainer.callback_metrics.get("val_loss")
    return TrainResult(out_dir=out_dir, steps=trainer.global_step, final_val_loss=float(val_loss) if val_loss is not None else None)


def fit_vocabulary(config: RunConfig, tokenizer_path: Path) -> RunConfig:
    """Sets model.vocab_size from the tokenizer when the recipe leaves it at 0; refuses a tokenizer that does not fit."""
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size(with_added_tokens=True)
    if config.model.vocab_size <= 0:
        return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=size))
    if size > config.model.vocab_size:
        raise SlmkitError(
            f"the tokenizer {tokenizer_path} has {size} tokens but model.vocab_size={config.model.vocab_size}: "
            f"set model.vocab_size to at least {size} (or 0 to take the tokenizer's size), or use a smaller tokenizer.vocab_size"
        )
    return config


def _resolve_out_dir_and_resume(config: RunConfig) -> tuple[Path, Path | None]:
    resume = (config.resume or "").strip()
    if resume.lower() in ("", "false", "none", "null"):
        out_dir = Path(config.out_dir) if config.out_dir else RUNS_ROOT / config.name / time.strftime("%Y%m%d-%H%M%S")
        if (out_dir / "checkpoints").is_dir() and latest_checkpoint(out_dir / "checkpoints") is not None:
            raise SlmkitError(f"{out_dir} already holds checkpoints: pass resume=true to continue it, or another out_dir")
        return out_dir, None
    if resume.lower() in ("true", "latest"):
        out_dir = Path(config.out_dir) if config.out_dir else _latest_run(config.name)
        ckpt = latest_checkpoint(out_dir / "checkpoints")
        if ckpt is None:
            raise SlmkitError(f"resume=true but {out_dir / 'checkpoints'} holds no checkpoint to continue from")
        return out_dir, ckpt
    ckpt = Path(resume)
    if not ckpt.exists():
        raise SlmkitError(f"resume={resume}: no checkpoint there; pass resume=true for the latest in out_dir, or a path to a .ckpt")
    out_dir = Path(config.out_dir) if config.out_dir else ckpt.resolve().parent.parent
    return out_dir, ckpt


def _latest_run(name: str) -> Path:
    runs = sorted(p for p in (RUNS_ROOT / name).glob("*") if (p / "checkpoints").is_dir()) if (RUNS_ROOT / name).is_dir() else []
    if not runs:
        raise SlmkitError(f"resume=true: no earlier run of {name!r} under {RUNS_ROOT / name}; pass out_dir=PATH of the run to continue")
    return runs[-1]


def _check_same_architecture(config: RunConfig, ckpt_path: Path) -> None:
    run_dir = ckpt_path.resolve().parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        return
    saved = load_run_config(run_dir / CONFIG_FILE).model
    if saved != config.model:
        diffs = [f"model.{f.name}: {getattr(saved, f.name)} in the checkpoint, {getattr(config.model, f.name)} now"
                 for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config.model, f.name)]
        raise SlmkitError(f"cannot resume {ckpt_path}: it comes from a different architecture ({'; '.join(diffs)})")


def _callbacks(config: RunConfig, out_dir: Path, task: LanguageModelTask) -> tuple[list[L.Callback], MetricsLogger]:
    trainer = config.trainer
    tokens_per_step = trainer.micro_batch_size * trainer.grad_accum * config.model.block_size
    metrics = MetricsLogger(out_dir / METRICS_FILE, trainer.log_every, tokens_per_step,
                            task.model.flops_per_token(config.model.block_size), trainer.precision)
    callbacks: list[L.Callback] = [metrics]
    if trainer.checkpoint_every > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=out_dir / "checkpoints", filename="step-{step}", auto_insert_metric_name=False,
            every_n_train_steps=trainer.checkpoint_every, save_top_k=trainer.keep_checkpoints,
            monitor="step", mode="max", save_last=False, save_on_train_epoch_end=False,
        ))
    if config.eval.tasks and config.eval.every > 0:
        callbacks.append(PeriodicEvaluation(list(config.eval.tasks), config.eval.every, out_dir / TOKENIZER_FILE, metrics,
                                            config.eval.limit, config.eval.batch_size))
    if trainer.progress_bar:
        callbacks.append(StepProgressBar())
    return callbacks, metrics


def _final_evaluation(config: RunConfig, out_dir: Path) -> None:
    """The recipe's tasks on the final weights, reported in <run>/eval/ (results.json and results.md)."""
    from slmkit.eval import EvalArgs, run_eval

    run_eval(EvalArgs(checkpoint=str(out_dir), tasks=list(config.eval.tasks), limit=config.eval.limit,
                      batch_size=config.eval.batch_size))


def _write_final_weights(config: RunConfig, out_dir: Path, task: LanguageModelTask, final_ckpt: Path) -> None:
    if config.trainer.strategy == "deepspeed" and config.trainer.zero_stage == 3:
        # ZeRO-3 leaves each rank a shard of every parameter: consolidate from the checkpoint just written.
        model = task.model.__class__(config.model)
        model.load_state_dict(read_state_dict(final_ckpt))
    else:
        model = task.model
    save_inference_checkpoint(out_dir, model, config, out_dir / TOKENIZER_FILE)


def describe(config: RunConfig) -> str:
    """The dry run: resolved config, model size and FLOPs, batch, and whether tokenizer and shards are ready."""
    from data_prep.prepare import describe_status
    from slmkit.config import config_to_yaml
    from slmkit.recipes import count_parameters, format_count

    params, exact = count_parameters(config)
    trainer = config.trainer
    tokens_per_step = trainer.micro_batch_size * trainer.grad_accum * config.model.block_size
    lines = [
        "# resolved config",
        config_to_yaml(config).rstrip(),
        "",
        "# plan",
        f"parameters: {params:,} ({format_count(params)}{'' if exact else ', without embeddings: vocabulary comes from the tokenizer'})",
    ]
    if exact:
        from slmkit.model import Transformer

        with torch.device("meta"):
            model = Transformer(config.model)
        flops = model.flops_per_token(config.model.block_size)
        lines.append(f"training FLOPs per token: {flops:.3e} (6N + attention at block_size {config.model.block_size})")
        lines.append(f"training FLOPs for the run: {flops * tokens_per_step * trainer.max_steps:.3e}")
    lines.append(f"tokens per optimizer step per device: {tokens_per_step:,} "
                 f"({trainer.micro_batch_size} x {trainer.grad_accum} accumulation x {config.model.block_size} tokens)")
    lines.append(f"trainer: {trainer.strategy}{' ZeRO-' + str(trainer.zero_stage) if trainer.strategy == 'deepspeed' else ''}, "
                 f"{trainer.precision}, {trainer.max_steps} steps, CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    if trainer.strategy == "deepspeed":
        import json

        from slmkit.training.trainer import deepspeed_config

        lines.append("deepspeed config: " + json.dumps(deepspeed_config(trainer)))
    lines.append(describe_status(config.data, config.tokenizer))
    return "\n".join(lines)
