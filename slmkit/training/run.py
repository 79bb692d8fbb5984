"""`slmkit train`: from a resolved RunConfig to a trained run folder.

Prepares data and tokenizer (reused when unchanged), checks that the tokenizer fits the model, trains with the
built Trainer, resumes exactly from a checkpoint, and leaves config.yaml, checkpoints, metrics and final weights.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from slmkit.atomic import atomic_copy, check_writable
from slmkit.checkpoint import build_model, run_heads, save_inference_checkpoint, with_heads
from slmkit.checkpoint.hf_import import init_from_source
from slmkit.checkpoint.run_folder import RunFolder, checkpoint_step
from slmkit.checkpoint.vocabulary import grow_vocabulary
from slmkit.config import RunConfig, load_run_config, save_run_config
from slmkit.data import MANIFEST, data_preparer
from slmkit.errors import SlmkitError, Stopped
from slmkit.eval.run import run_tasks_of
from slmkit.lora import add_lora, merge_lora
from slmkit.model import ARGMAX_DECODING, CRF_DECODING, HeadSpec, Model
from slmkit.objectives import OBJECTIVES, TOKEN_WINDOWS, Objective
from slmkit.provenance import record_provenance, with_provenance
from slmkit.streamed import describe as describe_streamed
from slmkit.streamed import open_streamed
from slmkit.tokenizer import load_tokenizer, new_token_segmentations
from slmkit.training.callbacks import (MetricsLogger, PeriodicEvaluation, RecordRun, ReturnFreedMemory, StepCheckpoints,
                                      StepProgressBar, StopOnSignal, ValidateTheLastStep, heap_trimmer)
from slmkit.training.datamodule import TaskDataModule, TokenDataModule
from slmkit.training.loggers import build_loggers
from slmkit.training.module import TrainingTask
from slmkit.training.resume import (check_resume, check_same_data, check_same_tokenizer, continue_command,
                                   run_folder_and_resume_point)
from slmkit.training.trackers import check_trackers
from slmkit.training.trainer import apply_cpu_fallback, build_trainer, final_model, parallelize

log = logging.getLogger("slmkit")

@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_val_loss: float | None
    is_global_zero: bool = True  # the one process of a multi-process run that reports to the user


@dataclass
class RunInputs:
    """What the run reads, once data and tokenizer are ready: its completed config (vocabulary, labels, heads), its
    tokenizer, and the token shards (None for an objective that reads a task's records)."""

    config: RunConfig
    tokenizer_path: Path
    shards_dir: Path | None
    starting_vocab_size: int  # model.vocab_size of the weights init_from gives, before a domain vocabulary grows it


def train(config: RunConfig) -> TrainResult:
    config, fallback = apply_cpu_fallback(config)
    for change in fallback:
        log.warning("no CUDA device: running as a CPU smoke test, %s", change)
    folder, resume_from = run_folder_and_resume_point(config)
    check_writable(folder.root, "out_dir", folder=True)  # before any data work
    start_step = checkpoint_step(resume_from) if resume_from is not None else 0
    config = dataclasses.replace(config, out_dir=str(folder.root), resume=None)
    # Everything that can refuse the run does so before the run folder is touched.
    for note in check_resume(folder, config) if resume_from is not None else []:
        log.warning("resuming %s: %s", folder.root, note)
    objective_class = OBJECTIVES.get(config.objective.name)
    objective_class.check(config)  # before any data is prepared: a teacher that cannot teach this student
    check_trackers(config.logger)  # a tracker's missing package, before any data is prepared
    inputs = prepare_inputs(config, objective_class)
    config = inputs.config
    if resume_from is not None:
        check_same_tokenizer(folder, inputs.tokenizer_path, config.tokenizer.path)
        if inputs.shards_dir is not None:
            check_same_data(folder, inputs.shards_dir / MANIFEST, config.data.shards_from)
        _check_same_architecture(config, resume_from)

    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = build_model(config)
    objective = objective_class(config, load_tokenizer(inputs.tokenizer_path))
    start_weights(config, model, objective, resume_from, inputs)  # its refusals (LoRA targets, init_from shapes) come first
    record = RecordRun(lambda: _record_run(folder, inputs, start_step))  # once the checkpoint has loaded
    task = TrainingTask(config, parallelize(model, config.trainer), objective)
    stop = StopOnSignal()
    checkpoints = StepCheckpoints(folder, config.trainer.checkpoint_every, config.trainer.keep_checkpoints)
    callbacks, metrics = _callbacks(config, folder, task, [record, stop, checkpoints])
    loggers = build_loggers(config, folder.root, start_step)
    trainer = build_trainer(config, folder.root, callbacks, loggers)
    metrics.scale_to_world(trainer.world_size)
    _fit(trainer, task, _data_module(config, objective, inputs.shards_dir), resume_from, stop, folder)
    record.write()  # a resumed run at its last step trains nothing, and Lightning then starts no training

    final = checkpoints.save(trainer)
    if stop.received is not None:
        # A stopped run leaves no model.safetensors: a run folder has one exactly when its run went the whole way.
        raise Stopped(f"training stopped by {signal.Signals(stop.received).name} at step {trainer.global_step} of "
                      f"{config.trainer.max_steps}; saved the checkpoint {final}. Continue with: "
                      f"{continue_command(config)}", stop.received)
    if trainer.is_global_zero:
        try:
            _finish(config, folder, task, final, trainer.global_step)
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated), while the final weights or scores are written
            signum = getattr(err, "signum", signal.SIGINT)
            raise Stopped(f"stopped by {signal.Signals(signum).name} after the last step, while the final weights and "
                          f"evaluation were written; the final checkpoint {final} is saved. Finish with: "
                          f"{continue_command(config)}", signum) from None
    val_loss = trainer.callback_metrics.get("val_loss")
    return TrainResult(out_dir=folder.root, steps=trainer.global_step,
                       final_val_loss=float(val_loss) if val_loss is not None else None, is_global_zero=trainer.is_global_zero)


def prepare_inputs(config: RunConfig, objective_class: type[Objective]) -> RunInputs:
    """Prepares the shards and tokenizer (reused when unchanged) or checks a task's tokenizer, then completes the
    config: vocabulary from the tokenizer, what the objective derives, and the heads the checkpoint will record."""
    shards_dir = None
    starting_vocab_size = config.model.vocab_size
    if objective_class.reads == TOKEN_WINDOWS:
        if config.data.shards_from and config.tokenizer.extends:
            raise SlmkitError(
                f"tokenizer.extend learns new tokens while preparing the corpus, and data.shards_from="
                f"{config.data.shards_from} trains on shards already prepared: extend the vocabulary where the data is "
                "prepared (slmkit data prepare with tokenizer.extend, published with data.publish_to), or drop one"
            )
        prepared = open_streamed(config.data.shards_from, config.tokenizer.path) if config.data.shards_from else \
            data_preparer().prepare(config.data, config.tokenizer)
        tokenizer_path, shards_dir = prepared.tokenizer_path, prepared.shards_dir
    else:
        tokenizer_path = _task_tokenizer(config)
    config = objective_class.complete(fit_vocabulary(config, tokenizer_path))
    config = with_heads(config, objective_class.heads(config))  # the checkpoint rebuilds its model from these alone
    config = with_provenance(config)  # commit, version, machine and the seedless config hash, for comparisons
    return RunInputs(config, tokenizer_path, shards_dir, starting_vocab_size)


def _record_run(folder: RunFolder, inputs: RunInputs, start_step: int | None) -> None:
    """The run folder as this attempt starts: cut back to the step it continues from, and holding the run's config,
    tokenizer and data manifest."""
    folder.root.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        folder.begin_attempt(start_step)
    save_run_config(inputs.config, folder.config)
    atomic_copy(inputs.tokenizer_path, folder.tokenizer)
    if inputs.shards_dir is not None:
        atomic_copy(inputs.shards_dir / MANIFEST, folder.data_manifest)  # what the run trained on, for its model card


def start_weights(config: RunConfig, model: Model, objective: Objective, resume_from: Path | None,
                  inputs: RunInputs) -> None:
    """The weights training starts from, set in the freshly built model: (a new run only) the init_from weights, with
    the rows of a domain vocabulary's new tokens, and what the objective sets itself (a student from its teacher),
    then LoRA adapters; a resumed run gets its weights from the checkpoint when fitting starts."""
    if resume_from is None:
        if config.init_from:
            extended = config.tokenizer.extends
            # A domain vocabulary: the weights load into a model of their own vocabulary (for a moment the memory of
            # two models), then grow into the run's.
            source = build_model(dataclasses.replace(config, model=dataclasses.replace(
                config.model, vocab_size=inputs.starting_vocab_size))) if extended else model
            for line in init_from_source(source, config).lines():
                log.info("init_from %s: %s", config.init_from, line)
            if extended:
                segmentations = new_token_segmentations(config.tokenizer.path, inputs.tokenizer_path)
                grow_vocabulary(model, source, segmentations)
                log.info("tokenizer.extend: %d new tokens, each starting as the mean of the rows of its old "
                         "segmentation; model.vocab_size %d -> %d", len(segmentations), inputs.starting_vocab_size,
                         config.model.vocab_size)
        for line in objective.init_weights(model):
            log.info("%s: %s", config.objective.name, line)
    if config.lora.rank:
        add_lora(model, config.lora)


def _fit(trainer: L.Trainer, task: TrainingTask, data: L.LightningDataModule, resume_from: Path | None,
         stop: StopOnSignal, folder: RunFolder) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infinite.*")
        try:
            trainer.fit(task, datamodule=data, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
        except SystemExit:  # Lightning exits on a second Ctrl-C (and on SIGTERM before StopOnSignal took over)
            signum = stop.received or signal.SIGTERM
            raise Stopped(f"training stopped at once by {signal.Signals(signum).name} at step {trainer.global_step}, "
                          f"without a checkpoint of that step; `{continue_command(task.config)}` continues from the "
                          f"newest one in {folder.checkpoints_dir}", signum) from None


def _finish(config: RunConfig, folder: RunFolder, task: TrainingTask, final: Path, step: int) -> None:
    """The finished run's final weights, its tasks scored on them, and runs/<recipe>/latest pointed at it."""
    whole = final_model(config, task.model, final)
    save_inference_checkpoint(folder.root, merge_lora(whole) if config.lora.rank else whole, config, folder.tokenizer,
                              step=step)
    if run_tasks_of(config):
        _final_evaluation(config, folder.root)
    folder.point_latest_at(config.name)


def _task_tokenizer(config: RunConfig) -> Path:
    """A fine-tuning run reads its task with the tokenizer of the weights it starts from (tokenizer.path)."""
    if not config.tokenizer.path:
        raise SlmkitError(
            f"objective {config.objective.name} reads a task, not a corpus, so it trains no tokenizer: start from a "
            "pretrained run with init_from=RUN (its tokenizer comes along) or set tokenizer.path=FILE"
        )
    if config.tokenizer.extends:
        raise SlmkitError(
            f"tokenizer.extend learns new tokens from the corpus, and objective {config.objective.name} reads a task, "
            "not a corpus: extend the vocabulary in a continued-pretraining run (init_from=... tokenizer.extend=N on "
            "a corpus), then fine-tune from that run; or drop tokenizer.extend"
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
                               example=objective.window_example, data_order=trainer.data_order)
    return TaskDataModule(objective, micro_batch_size=trainer.micro_batch_size, grad_accum=trainer.grad_accum,
                          val_batches=trainer.val_batches, seed=trainer.seed, num_workers=trainer.num_workers)


def fit_vocabulary(config: RunConfig, tokenizer_path: Path) -> RunConfig:
    """Sets model.vocab_size from the tokenizer when the recipe leaves it at 0, or grows it to a tokenizer with a
    domain vocabulary; refuses a tokenizer that does not fit."""
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size(with_added_tokens=True)
    if config.model.vocab_size <= 0 or (config.tokenizer.extends and size > config.model.vocab_size):
        return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=size))
    if size > config.model.vocab_size:
        raise SlmkitError(
            f"the tokenizer {tokenizer_path} has {size} tokens but model.vocab_size={config.model.vocab_size}: "
            f"set model.vocab_size to at least {size} (or 0 to take the tokenizer's size), or use a smaller tokenizer.vocab_size"
        )
    return config


def _weights_of(heads: list[HeadSpec]) -> list[HeadSpec]:
    """The heads as their weights see them: a decoding reads scores and touches no weight, so a run may continue
    under another one; the crf decoding alone has weights (its transitions), so it stays."""
    return [h if h.decoding == CRF_DECODING else dataclasses.replace(h, decoding=ARGMAX_DECODING) for h in heads]


def _check_same_architecture(config: RunConfig, ckpt_path: Path) -> None:
    run = RunFolder(ckpt_path.resolve().parent.parent)
    if not run.is_run():
        return
    recorded = load_run_config(run.config)
    saved = recorded.model
    if saved != config.model:
        diffs = [f"model.{f.name}: {getattr(saved, f.name)} in the checkpoint, {getattr(config.model, f.name)} now"
                 for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config.model, f.name)]
        raise SlmkitError(f"cannot resume {ckpt_path}: it comes from a different architecture ({'; '.join(diffs)})")
    saved_heads, heads = run_heads(recorded), run_heads(config)
    if _weights_of(saved_heads) != _weights_of(heads):
        raise SlmkitError(f"cannot resume {ckpt_path}: its model has the heads {[h.kind for h in saved_heads]} "
                          f"({saved_heads}), and this run's objective makes {heads}; continue it with the objective and "
                          "labels it was started with")


def _callbacks(config: RunConfig, folder: RunFolder, task: TrainingTask,
               run_control: list[L.Callback]) -> tuple[list[L.Callback], MetricsLogger]:
    trainer = config.trainer
    examples_per_step = trainer.micro_batch_size * trainer.grad_accum
    # Windows are full; padded task examples vary in length, so their tokens (and MFU) are not counted.
    windows = task.objective.reads == TOKEN_WINDOWS
    metrics = MetricsLogger(folder.metrics, trainer.log_every, examples_per_step,
                            config.model.block_size if windows else None,
                            task.model.flops_per_token(config.model.block_size), trainer.precision,
                            record_provenance(config))
    # In this order at each step's end: a stop request is known before the step is logged (a stopped run logs its
    # last step) and before it is checkpointed.
    record, stop, checkpoints = run_control
    callbacks: list[L.Callback] = [record, stop, metrics, checkpoints, ValidateTheLastStep()]
    if run_tasks_of(config) and config.eval.every > 0:
        callbacks.append(PeriodicEvaluation(run_tasks_of(config), config.eval.every, folder.tokenizer, metrics,
                                            config.eval.limit, config.eval.batch_size))
    if trainer.progress_bar:
        callbacks.append(StepProgressBar())
    trim = heap_trimmer()
    if trim is not None:
        callbacks.append(ReturnFreedMemory(trim))
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
    lines.append(describe_streamed(config.data.shards_from) if config.data.shards_from else
                 data_preparer().status(config.data, config.tokenizer))
    return "\n".join(lines)
