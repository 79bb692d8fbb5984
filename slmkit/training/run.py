"""`slmkit train`: from a resolved RunConfig to a trained run folder.

Prepares data and tokenizer (reused when unchanged), checks that the tokenizer fits the model, trains with the
built Trainer, resumes exactly from a checkpoint, and leaves config.yaml, checkpoints, metrics and final weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from slmkit.atomic import atomic_copy, remove_temporaries
from slmkit.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, build_model, checkpoint_step, latest_checkpoint,
                               save_inference_checkpoint)
from slmkit.checkpoint.hf_import import init_from_source
from slmkit.checkpoint.files import checkpoint_problem, remove_checkpoint, step_checkpoints
from slmkit.checksum import checksum_file
from slmkit.config import RunConfig, load_run_config, save_run_config
from slmkit.data import MANIFEST, RUN_MANIFEST, data_preparer
from slmkit.errors import SlmkitError, Stopped
from slmkit.eval.run import run_tasks_of
from slmkit.lora import add_lora, merge_lora
from slmkit.objectives import OBJECTIVES, TOKEN_WINDOWS, Objective
from slmkit.tokenizer import TOKENIZER_FILE, load_tokenizer
from slmkit.training.callbacks import MetricsLogger, PeriodicEvaluation, StepCheckpoints, StepProgressBar, StopOnSignal
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
    is_global_zero: bool = True  # the one process of a multi-process run that reports to the user


def train(config: RunConfig) -> TrainResult:
    config, fallback = apply_cpu_fallback(config)
    for change in fallback:
        log.warning("no CUDA device: running as a CPU smoke test, %s", change)

    out_dir, ckpt_path = _resolve_out_dir_and_resume(config)
    _check_writable(out_dir)
    start_step = _step_of(ckpt_path) if ckpt_path is not None else 0
    config = dataclasses.replace(config, out_dir=str(out_dir), resume=None)
    objective_class = OBJECTIVES.get(config.objective.name)
    objective_class.check(config)  # before any data is prepared: a teacher that cannot teach this student
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
    if rank_zero_only.rank == 0:
        _begin_attempt(out_dir, start_step)
    save_run_config(config, out_dir / CONFIG_FILE)
    atomic_copy(tokenizer_path, out_dir / TOKENIZER_FILE)
    if manifest is not None:
        atomic_copy(manifest, out_dir / RUN_MANIFEST)  # what the run trained on, for its model card

    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = build_model(config)
    objective = objective_class(config, load_tokenizer(out_dir / TOKENIZER_FILE))
    if config.init_from and ckpt_path is None:
        for line in init_from_source(model, config).lines():
            log.warning("init_from %s: %s", config.init_from, line)
    for line in objective.init_weights(model) if ckpt_path is None else []:
        log.warning("%s: %s", config.objective.name, line)
    if config.lora.rank:
        add_lora(model, config.lora)
    task = TrainingTask(config, parallelize(model, config.trainer), objective)
    data = _data_module(config, objective, prepared.shards_dir if manifest is not None else None)
    stop = StopOnSignal()
    checkpoints = StepCheckpoints(out_dir / "checkpoints", config.trainer.checkpoint_every, config.trainer.keep_checkpoints)
    callbacks, metrics = _callbacks(config, out_dir, task, [stop, checkpoints])
    # TensorBoard forgets what a stopped attempt logged after the step this one starts from (as metrics.jsonl does).
    loggers = [TensorBoardLogger(save_dir=str(out_dir), name="tb", version="", default_hp_metric=False,
                                 purge_step=start_step + 1 if start_step is not None else None)]
    trainer = build_trainer(config, out_dir, callbacks, loggers)
    metrics.scale_to_world(trainer.world_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infinite.*")
        try:
            trainer.fit(task, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
        except SystemExit:  # Lightning exits on a second Ctrl-C (and on SIGTERM before StopOnSignal took over)
            signum = stop.received or signal.SIGTERM
            raise Stopped(f"training stopped at once by {signal.Signals(signum).name} at step {trainer.global_step}, "
                          f"without a checkpoint of that step; resume=true out_dir={out_dir} continues from the newest one "
                          f"in {out_dir / 'checkpoints'}", signum) from None

    final = checkpoints.save(trainer)
    if stop.received is not None:
        # A stopped run leaves no model.safetensors: a run folder has one exactly when its run went the whole way.
        raise Stopped(f"training stopped by {signal.Signals(stop.received).name} at step {trainer.global_step} of "
                      f"{config.trainer.max_steps}; saved the checkpoint {final}. Continue with resume=true "
                      f"out_dir={out_dir}", stop.received)
    if trainer.is_global_zero:
        whole = final_model(config, task.model, final)
        save_inference_checkpoint(out_dir, merge_lora(whole) if config.lora.rank else whole, config,
                                  out_dir / TOKENIZER_FILE, step=trainer.global_step)
        if run_tasks_of(config):
            _final_evaluation(config, out_dir)
        _point_latest_at(out_dir, config.name)
    val_loss = trainer.callback_metrics.get("val_loss")
    return TrainResult(out_dir=out_dir, steps=trainer.global_step,
                       final_val_loss=float(val_loss) if val_loss is not None else None, is_global_zero=trainer.is_global_zero)


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
                               num_workers=trainer.num_workers, train_windows=objective.train_windows(shards_dir),
                               example=objective.window_example)
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
        return out_dir, _newest_intact_checkpoint(out_dir / "checkpoints")
    ckpt = Path(resume)
    if not ckpt.exists():
        raise SlmkitError(f"resume={resume}: no checkpoint there; pass resume=true for the latest in out_dir, or a path to a .ckpt")
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        raise SlmkitError(f"resume={resume}: {problem}")
    out_dir = Path(config.out_dir) if config.out_dir else ckpt.resolve().parent.parent
    return out_dir, ckpt


def _check_writable(out_dir: Path) -> None:
    """Refuses a run folder that cannot be written before any data work: a file in the way, a read-only place."""
    existing = next(path for path in (out_dir, *out_dir.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise SlmkitError(f"out_dir={out_dir}: {existing} is a file, and the run needs a folder there; choose another out_dir")
    if not os.access(existing, os.W_OK):
        raise SlmkitError(f"out_dir={out_dir}: {existing} is not writable (a read-only file system, or no permission); "
                          "choose another out_dir")


def _newest_intact_checkpoint(folder: Path) -> Path:
    """The newest checkpoint in the folder that is whole; a damaged newer one is named in a warning (it is removed
    when the run starts: a run continues from one history)."""
    candidates = ([folder / "last.ckpt"] if (folder / "last.ckpt").exists() else []) + \
        [path for _, path in reversed(step_checkpoints(folder))]
    if not candidates:
        raise SlmkitError(f"resume=true but {folder} holds no checkpoint to continue from")
    damaged = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            for bad, why in damaged:
                log.warning("the checkpoint %s is damaged (%s); resuming from %s, the newest intact one", bad.name, why, path.name)
            return path
        damaged.append((path, problem))
    raise SlmkitError(f"resume=true but no checkpoint in {folder} is intact ({'; '.join(why for _, why in damaged)}): "
                      "start the run again with another out_dir")


def _step_of(ckpt_path: Path) -> int | None:
    """The optimizer step a checkpoint was written at: from its name, else from the file (tensors not read)."""
    step = checkpoint_step(ckpt_path)
    if step is None and ckpt_path.is_file():
        step = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    return step


def _begin_attempt(out_dir: Path, start_step: int | None) -> None:
    """The run folder as of `start_step`: what a stopped attempt wrote after it (checkpoints of later steps, the
    final weights of an earlier finish) and what killed writers left (hidden temporaries) go; metrics.jsonl is cut
    back by the MetricsLogger when training starts."""
    folder = out_dir / "checkpoints"
    remove_temporaries(folder)
    remove_temporaries(out_dir, of=[WEIGHTS_FILE])
    if start_step is None:
        return
    for step, path in step_checkpoints(folder):
        if step > start_step:
            log.warning("removing %s: it comes after step %d, where this run continues", path, start_step)
            remove_checkpoint(path)
    for path in (out_dir / WEIGHTS_FILE, checksum_file(out_dir / WEIGHTS_FILE)):
        path.unlink(missing_ok=True)


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


def _callbacks(config: RunConfig, out_dir: Path, task: TrainingTask,
               run_control: list[L.Callback]) -> tuple[list[L.Callback], MetricsLogger]:
    trainer = config.trainer
    examples_per_step = trainer.micro_batch_size * trainer.grad_accum
    # Windows are full; padded task examples vary in length, so their tokens (and MFU) are not counted.
    windows = task.objective.reads == TOKEN_WINDOWS
    metrics = MetricsLogger(out_dir / METRICS_FILE, trainer.log_every, examples_per_step,
                            config.model.block_size if windows else None,
                            task.model.flops_per_token(config.model.block_size), trainer.precision)
    # In this order at each step's end: a stop request is known before the step is logged (a stopped run logs its
    # last step) and before it is checkpointed.
    stop, checkpoints = run_control
    callbacks: list[L.Callback] = [stop, metrics, checkpoints]
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
