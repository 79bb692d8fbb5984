"""What a run does beside the steps themselves: reports them (metrics.jsonl + TensorBoard: loss, lr, grad norm,
tokens/s, MFU, memory; a progress bar counted in optimizer steps), checkpoints them (step-N.ckpt, the newest kept),
stops at a step boundary when the process is told to (SIGTERM, Ctrl-C), and hands freed memory back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from slmkit.atomic import atomic_write_text
from slmkit.checkpoint.run_folder import RunFolder
from slmkit.training.throughput import peak_flops_per_device, peak_memory_gb


class MetricsLogger(L.Callback):
    """Every `log_every` steps and at the last one: one JSON object in metrics.jsonl (and the same scalars in
    TensorBoard). Every record holds the counts comparisons are drawn against (examples, tokens, FLOPs, wall_s) and
    the run's seed, commit, version and config_hash (`provenance`), which are labels and go to no tracker.

    Validation finishes right after the step it follows, so its val_loss joins that step's record; a record is
    written when the next one starts or the run ends. A checkpoint carries the record still waiting, and a resumed run
    first cuts the file back to the checkpoint's step: the history holds one record per step, as if the run had never
    stopped.
    """

    def __init__(self, path: Path, log_every: int, examples_per_step: int, tokens_per_example: int | None,
                 flops_per_token: float, precision: str, provenance: dict[str, Any] | None = None):
        self.path = Path(path)
        self.log_every = log_every
        self.examples_per_step = examples_per_step
        self.tokens_per_example = tokens_per_example  # None when examples differ in length (padded task examples)
        self.flops_per_token = flops_per_token
        self.precision = precision
        self.provenance = dict(provenance or {})  # seed, commit, version, config_hash: repeated in every record
        self.pending: dict[str, Any] | None = None
        self._restored: dict[str, Any] | None = None  # the record a checkpoint held while it waited
        self._last_time: float | None = None
        self._last_step = 0
        self.wall_s = 0.0  # training time of this run so far, across the attempts of a resumed run

    def scale_to_world(self, world_size: int) -> None:
        """Every device takes its own micro-batches: a step holds world_size times more examples."""
        self.examples_per_step *= world_size

    def _counts(self, step: int) -> dict[str, Any]:
        """What runs are compared against: examples, tokens and analytic FLOPs (the MFU's flops_per_token) so far."""
        examples = step * self.examples_per_step
        if not self.tokens_per_example:
            return {"examples": examples}
        tokens = examples * self.tokens_per_example
        return {"examples": examples, "tokens": tokens, "flops": tokens * self.flops_per_token}

    def _new_record(self, step: int) -> dict[str, Any]:
        """A record begun outside a logging step (validation, evaluation): the counts, the wall time so far, and the
        run's provenance, like every record."""
        return {"step": step, **self._counts(step), "wall_s": self._wall_s_now(), **self.provenance}

    def _wall_s_now(self) -> float:
        """Training time so far: the recorded wall_s and the time since the last record."""
        return self.wall_s + (time.perf_counter() - self._last_time if self._last_time is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint between logging steps carries the time trained since the last record too.
        return {"pending": self.pending, "wall_s": self._wall_s_now()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("pending")
        self.wall_s = state_dict.get("wall_s", 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = time.perf_counter()
        self._last_step = trainer.global_step
        self.peak_flops = peak_flops_per_device(self.precision)
        kept = self._cut_back_to(trainer.global_step) if trainer.is_global_zero else []
        restored, self._restored = self._restored, None
        if restored is not None and restored["step"] == trainer.global_step and not any(r["step"] == restored["step"] for r in kept):
            self.pending = restored  # the checkpoint's step was not written before the run stopped

    def _cut_back_to(self, step: int) -> list[dict[str, Any]]:
        """Drops the records after `step` (a stopped attempt's, which a resumed run writes again); returns the rest."""
        if not self.path.is_file():
            return []
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a run killed mid-write
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(record)
            else:
                dropped += 1
        if dropped:
            atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        return kept

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # mid-accumulation
        if step % self.log_every != 0 and step < trainer.max_steps and not trainer.should_stop:
            return  # not a logging step, nor the last one
        loss = pl_module.take_train_loss()
        now = time.perf_counter()
        examples_per_s = self.examples_per_step * (step - self._last_step) / max(now - self._last_time, 1e-9)
        self.wall_s += now - self._last_time
        self._last_time, self._last_step = now, step
        record: dict[str, Any] = {
            "step": step,
            **self._counts(step),
            "wall_s": self.wall_s,
            "train_loss": loss,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "grad_norm": _grad_norm(trainer, pl_module),
            "examples_per_s": examples_per_s,
            **self.provenance,
        }
        if self.tokens_per_example:
            tokens_per_s = examples_per_s * self.tokens_per_example
            record["tokens_per_s"] = tokens_per_s
            record["mfu"] = (self.flops_per_token * tokens_per_s / (self.peak_flops * trainer.world_size)) if self.peak_flops else None
            pl_module.log("tok/s", tokens_per_s, prog_bar=True, logger=False, rank_zero_only=True)
        else:
            pl_module.log("ex/s", examples_per_s, prog_bar=True, logger=False, rank_zero_only=True)
        record["peak_mem_gb"] = peak_memory_gb()
        pl_module.log("loss", loss, prog_bar=True, logger=False, rank_zero_only=True)
        self._flush(trainer)
        self.pending = record

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        val_loss = float(trainer.callback_metrics["val_loss"])
        step = trainer.global_step
        if self.pending is None or self.pending["step"] != step:
            self._flush(trainer)
            self.pending = self._new_record(step)
        self.pending["val_loss"] = val_loss
        # An objective's own validation metrics (masked-token accuracy) join the record beside val_loss.
        self.pending.update({name: float(value) for name, value in trainer.callback_metrics.items()
                             if name.startswith("val_") and name != "val_loss"})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def add_metrics(self, trainer: L.Trainer, step: int, metrics: dict[str, float]) -> None:
        """Joins extra metrics (e.g. evaluation tasks) to the record of `step`."""
        if self.pending is None or self.pending["step"] != step:
            self._flush(trainer)
            self.pending = self._new_record(step)
        self.pending.update(metrics)

    def _flush(self, trainer: L.Trainer) -> None:
        if self.pending is None:
            return
        record, self.pending = self.pending, None
        if not trainer.is_global_zero:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items()
                   if k != "step" and k not in self.provenance and isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=record["step"])


def _grad_norm(trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    if engine is not None:
        norm = engine.get_global_grad_norm()
        return float(norm) if norm is not None else None
    return pl_module.last_grad_norm


class StepCheckpoints(L.Callback):
    """Writes the run folder's checkpoint of a step every `every` steps (and, through `save`, at the end) and keeps
    the newest `keep` of them, whichever run wrote them: the one a run resumed from goes too, once newer ones exist."""

    def __init__(self, folder: RunFolder, every: int, keep: int):
        self.folder = folder
        self.every = every
        self.keep = keep
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # a resumed run does not write its starting checkpoint again

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every and step != self._last_step and step % self.every == 0:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """The checkpoint of the current step (written unless it exists), then the older ones beyond `keep` removed."""
        self._last_step = trainer.global_step
        path = self.folder.checkpoint(trainer.global_step)
        if not path.exists():
            trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            self.folder.prune(self.keep)
        trainer.strategy.barrier("slmkit_checkpoints_pruned")
        return path


class RecordRun(L.Callback):
    """Writes the run's record into its folder once fitting has restored the checkpoint it resumes, so that a
    checkpoint that fails to load leaves the folder as it was. `write()` serves a resumed run with no step left to
    train too (Lightning then starts no training)."""

    def __init__(self, write: Callable[[], None]):
        self._write = write
        self.written = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write()

    def write(self) -> None:
        if not self.written:
            self._write()
            self.written = True


class ValidateTheLastStep(L.Callback):
    """Validation at the last step whatever val_every is, so the run's final figures are the final model's (a resumed
    run's too): asking Lightning to stop there makes it validate before it stops, as it does for early stopping."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= trainer.max_steps:  # the optimizer step that completes the run, not a micro-batch before
            trainer.should_stop = True


class StopOnSignal(L.Callback):
    """SIGTERM (a scheduler's preemption, `timeout`, `kill`) or SIGINT (Ctrl-C) ends training at the end of the
    optimizer step under way, on every rank at the same step; the run then saves a checkpoint there and says so. A
    second Ctrl-C stops at once.

    Lightning's own SIGTERM handling would stop mid-accumulation, without a checkpoint, and exit 0; this handler
    replaces it while the training loop runs.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._receive) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _receive(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the step
            return
        self.received = signum
        print(f"\nslmkit: {signal.Signals(signum).name} received; stopping after this step, with a checkpoint "
              f"(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:
            return  # mid-accumulation: only a whole step can be checkpointed
        self._last_step = trainer.global_step
        # Any rank may have been signalled; all stop at this step, and all know the signal (the larger, SIGTERM, wins).
        signum = int(trainer.strategy.reduce(torch.tensor(self.received or 0, device=trainer.strategy.root_device),
                                             reduce_op="max"))
        if signum:
            self.received = signum
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class StepProgressBar(TQDMProgressBar):
    """A bar over optimizer steps (not micro-batches) with loss and tokens/s."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one endless epoch: keep the step bar as it is

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if trainer.global_step != bar.n:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class PeriodicEvaluation(L.Callback):
    """Runs the recipe's evaluation tasks every `every` steps on rank 0 and joins the scores to metrics.jsonl
    (as eval/<task>/<metric>) and TensorBoard."""

    def __init__(self, tasks: list[str], every: int, tokenizer_path: Path, metrics: MetricsLogger, limit: int | None, batch_size: int):
        self.tasks = tasks
        self.every = every
        self.tokenizer_path = tokenizer_path
        self.metrics = metrics
        self.limit = limit
        self.batch_size = batch_size
        self._last_step: int | None = None  # micro-batches of one accumulated step share its global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or self._last_step == step:
            return
        self._last_step = step
        if trainer.is_global_zero:
            from tokenizers import Tokenizer

            from slmkit.eval import evaluate

            scores = evaluate(pl_module.model, Tokenizer.from_file(str(self.tokenizer_path)), self.tasks,
                              limit=self.limit, batch_size=self.batch_size)
            self.metrics.add_metrics(trainer, step, {f"eval/{task}/{name}": value
                                                     for task, values in scores.items() for name, value in values.items()})
        trainer.strategy.barrier("slmkit_eval")


# How often ReturnFreedMemory trims the heap at most. A trim takes ~0.1 s, and the pages it returns are faulted in
# again by later steps: every 10 s cost ~3% of tokens/s on a CPU run, every 30 s nothing measurable (two rounds
# each, docs/benchmarks.md), while the resident memory still stayed ~0.7 GB lower at its peak.
TRIM_SECONDS = 30.0


def heap_trimmer() -> Optional[Callable[[int], Any]]:
    """glibc's malloc_trim(0), or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


class ReturnFreedMemory(L.Callback):
    """Hands the heap's free pages back to the system after a step, at most every `seconds`.

    Tensors whose sizes change from step to step (masked-LM targets, padded fine-tuning batches, validation) make
    glibc raise its mmap threshold after the first large frees and then serve them from the heap, which it returns to
    the system only at its top: a CPU run's resident memory climbs and stays up (finance-tweets-encoder: ~2.3 GB
    after 120 masked-LM steps, 3.2 GB after 2,400). Trimmed every 30 s: a peak of ~1.65 GB and ~1.3 GB at the end,
    the same losses, tokens/s within the machine's noise (docs/benchmarks.md, "Resident memory of a CPU run").
    """

    def __init__(self, trim: Callable[[int], Any], seconds: float = TRIM_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.trim = trim
        self.seconds = seconds
        self.clock = clock
        self.last = clock()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = self.clock()
        if now - self.last >= self.seconds:
            self.trim(0)
            self.last = self.clock()  # after the trim: its own time does not count toward the next interval
