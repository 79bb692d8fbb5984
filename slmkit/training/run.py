"""`slmkit train`: from a resolved RunConfig to a trained run folder.

Prepares data and tokenizer (reused when unchanged), checks that the tokenizer fits the model, trains with the
built Trainer, resumes exactly from a checkpoint, and leaves config.yaml, checkpoints, metrics and final weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from slmkit.atomic import atomic_copy
from slmkit.checkpoint import CONFIG_FILE, build_model, init_from_checkpoint, latest_checkpoint, save_inference_checkpoint
from slmkit.config import RunConfig, load_run_config, save_run_config
from slmkit.data import MANIFEST, RUN_MANIFEST, data_preparer
from slmkit.errors import SlmkitError
from slmkit.eval.run import run_tasks_of
from slmkit.lora import add_lora, merge_lora
from slmkit.objectives import OBJECTIVES, TOKEN_WINDOWS, Objective
from slmkit.tokenizer import TOKENIZER_FILE, load_tokenizer
from slmkit.training.callbacks import MetricsLogger, PeriodicEvaluation, StepProgressBar
from slmkit.training.datamodule import TaskDataModule, TokenDataModule
from slmkit.training.module import TrainingTask
from slmkit.training.trainer import apply_cpu_fallback, build_trainer, final_model, parallelize

log = logging.getLogger("slmkit")

RUNS_ROOT = Path("runs")
LATEST = "latest"  # runs/<recipe>/latest links to the newest finished run of the recipe
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
    objective_class = OBJECTIVES.get(config.objective.name)
    manifest = None
    if objective_class.reads == TOKEN_WINDOWS:
        prepared = data_preparer().prepare(config.data, config.tokenizer)
        tokenizer_path, manifest = prepared.tokenizer_path, prepared.shards_dir / MANIFEST
    else:
        tokenizer_path = _task_tokenizer(config)
    config = objective_class.complete(fit_vocabulary(config, tokenizer_path))

    out_dir.mkdir(parents=True, exist_ok=True)
    if ckpt_path is not None:
        _check_same_architecture(config, ckpt_path)
    save_run_config(config, out_dir / CONFIG_FILE)
    atomic_copy(tokenizer_path, out_dir / TOKENIZER_FILE)
    if manifest is not None:
        atomic_copy(manifest, out_dir / RUN_MANIFEST)  # what the run trained on, for its model card

    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = build_model(config)
    if config.init_from and ckpt_path is None:
        for line in init_from_checkpoint(model, config.init_from).lines():
            log.warning("init_from %s: %s", config.init_from, line)
    if config.lora.rank:
        add_lora(model, config.lora)
    objective = objective_class(config, load_tokenizer(out_dir / TOKENIZER_FILE))
    task = TrainingTask(config, parallelize(model, config.trainer), objective)
    data = _data_module(config, objective, prepared.shards_dir if manifest is not None else None)
    callbacks, metrics = _callbacks(config, out_dir, task)
    loggers = [TensorBoardLogger(save_dir=str(out_dir), name="tb", version="", default_hp_metric=False)]
    trainer = build_trainer(config, out_dir, callbacks, loggers)
    metrics.scale_to_world(trainer.world_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infinite.*")
        trainer.fit(task, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)

    final = out_dir / "checkpoints" / f"step-{trainer.global_step}.ckpt"
    if not final.exists():
        trainer.save_checkpoint(final)
    if trainer.is_global_zero:
        whole = final_model(config, task.model, final)
        save_inference_checkpoint(out_dir, merge_lora(whole) if config.lora.rank else whole, config, out_dir / TOKENIZER_FILE)
        if run_tasks_of(config):
            _final_evaluation(config, out_dir)
        _point_latest_at(out_dir, config.name)
    val_loss = trainer.callback_metrics.get("val_loss")
    return TrainResult(out_dir=out_dir, steps=trainer.global_step, final_val_loss=float(val_loss) if val_loss is not None else None)


def _task_tokenizer(config: RunConfig) -> Path:
    """A fine-tuning run reads its task with the tokenizer of the weights it starts from (tokenizer.path)."""
    if not config.tokenizer.path:
        raise SlmkitError(
            f"objective {config.objective.name} reads a task, not a corpus, so it trains no tokenizer: start from a "
            "pretrained run with init_from=RUN (its tokenizer comes along) or set tokenizer.path=FILE"
        )
    path = Path(config.tokenizer.path)
    load_tokenizer(path)  # a clear message now for a missing or broken file
    return path


def _data_module(config: RunConfig, objective: Objective, shards_dir: Path | None) -> L.LightningDataModule:
    trainer = config.trainer
    if shards_dir is not None:
        return TokenDataModule(shards_dir, block_size=config.model.block_size, micro_batch_size=trainer.micro_batch_size,
                               grad_accum=trainer.grad_accum, val_batches=trainer.val_batches, seed=trainer.seed,
                               num_workers=trainer.num_workers)
    return TaskDataModule(objective, micro_batch_size=trainer.micro_batch_size, grad_accum=trainer.grad_accum,
                          val_batches=trainer.val_batches, seed=trainer.seed, num_workers=trainer.num_workers)


def _point_latest_at(out_dir: Path, name: str) -> None:
    """runs/<recipe>/latest -> the run that just finished, so later commands (init_from, eval, export) can name it."""
    if out_dir.resolve().parent != (RUNS_ROOT / name).resolve():
        return
    link = out_dir.parent / LATEST
    tmp = out_dir.parent / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out_dir.name)
    os.replace(tmp, link)


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
    runs = sorted(p for p in (RUNS_ROOT / name).glob("*") if (p / "checkpoints").is_dir() and not p.is_symlink()) \
        if (RUNS_ROOT / name).is_dir() else []
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


def _callbacks(config: RunConfig, out_dir: Path, task: TrainingTask) -> tuple[list[L.Callback], MetricsLogger]:
    trainer = config.trainer
    examples_per_step = trainer.micro_batch_size * trainer.grad_accum
    # Windows are full; padded task examples vary in length, so their tokens (and MFU) are not counted.
    windows = task.objective.reads == TOKEN_WINDOWS
    metrics = MetricsLogger(out_dir / METRICS_FILE, trainer.log_every, examples_per_step,
                            config.model.block_size if windows else None,
                            task.model.flops_per_token(config.model.block_size), trainer.precision)
    callbacks: list[L.Callback] = [metrics]
    if trainer.checkpoint_every > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=out_dir / "checkpoints", filename="step-{step}", auto_insert_metric_name=False,
            every_n_train_steps=trainer.checkpoint_every, save_top_k=trainer.keep_checkpoints,
            monitor="step", mode="max", save_last=False, save_on_train_epoch_end=False,
        ))
    if run_tasks_of(config) and config.eval.every > 0:
        callbacks.append(PeriodicEvaluation(run_tasks_of(config), config.eval.every, out_dir / TOKENIZER_FILE, metrics,
                                            config.eval.limit, config.eval.batch_size))
    if trainer.progress_bar:
        callbacks.append(StepProgressBar())
    return callbacks, metrics


def _final_evaluation(config: RunConfig, out_dir: Path) -> None:
    """The run's tasks on the final weights, reported in <run>/eval/ (results.json and results.md)."""
    from slmkit.eval import EvalArgs, run_eval

    run_eval(EvalArgs(checkpoint=str(out_dir), tasks=run_tasks_of(config), limit=config.eval.limit,
                      batch_size=config.eval.batch_size))


def describe(config: RunConfig) -> str:
    """The dry run: resolved config, model size and FLOPs, batch, and whether tokenizer and shards are ready."""
    from slmkit.config import config_to_yaml
    from slmkit.recipe import count_parameters, format_count

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
        from slmkit.model import Model

        with torch.device("meta"):
            model = Model(config.model)
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
    lines.append(data_preparer().status(config.data, config.tokenizer))
    return "\n".join(lines)
