"""Entry points of the harness: `evaluate` a model object (inside training) or `run_eval` a checkpoint to reports.

Every task name resolves before any scoring starts, so a typo fails at once rather than after an hour of work.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.catalog import resolve_task
from slmkit.eval.loglikelihood import Scorer
from slmkit.eval.metrics import TaskResult
from slmkit.eval.report import label_tables, markdown_table, write_report
from slmkit.eval.task import TASK_TYPES, RunSettings
from slmkit.options import SEED, at_least, option

log = logging.getLogger("slmkit.eval")


@dataclass
class EvalArgs:
    checkpoint: Optional[str] = option(None, "Run folder or checkpoint file (.ckpt, .safetensors) to evaluate.")
    tasks: list[str] = option([], "Task names (wikitext2, legalbench/abercrombie, ...) or task YAML paths; empty = the recipe's eval.tasks.")
    limit: Optional[int] = option(None, "Evaluate at most this many examples (documents) per task, a seeded subset.", bounds=at_least(1))
    batch_size: int = option(8, "Sequences per forward pass; results do not depend on it.", bounds=at_least(1))
    out: Optional[str] = option(None, "Folder for results.json and results.md; default <run folder>/eval/.")
    device: str = option("auto", "auto (cuda when available), cpu, cuda or cuda:N.")
    precision: str = option("fp32", "Weights in fp32, or bf16 (faster on GPU; scores differ in the 3rd decimal).", choices=("fp32", "bf16"))
    num_fewshot: Optional[int] = option(None, "Demonstrations per example for every task; None = each task's own.", bounds=at_least(0))
    seed: int = option(1234, "Seed of the limit subset and of the few-shot draws.", bounds=SEED)
    stride: Optional[int] = option(None, "Perplexity tasks: sliding-window stride in tokens; None = each task's own (half the window).", bounds=at_least(1))
    tokenizer: Optional[str] = option(None, "A tokenizer.json to use instead of the run's own; it must fit the model.")


def run_tasks(
    model: torch.nn.Module, tokenizer: Tokenizer, tasks: Sequence[str], settings: RunSettings, batch_size: int = 8
) -> list[TaskResult]:
    specs = [resolve_task(name) for name in tasks]
    scorer = Scorer(model, tokenizer, batch_size=batch_size)
    was_training = model.training
    model.eval()
    results = []
    try:
        for spec in specs:
            started = time.perf_counter()
            result = TASK_TYPES.get(spec.type).run(spec, scorer, settings)
            log.info("eval %s: %d examples in %.1fs", spec.name, result.n, time.perf_counter() - started)
            results.append(result)
    finally:
        model.train(was_training)
    return results


def evaluate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    limit: Optional[int] = None,
    batch_size: int = 8,
    num_fewshot: Optional[int] = None,
    seed: int = 1234,
) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for a model in memory (e.g. from a training callback); baselines are left out."""
    settings = RunSettings(limit=limit, num_fewshot=num_fewshot, seed=seed)
    results = run_tasks(model, tokenizer, tasks, settings, batch_size)
    return {r.task: {name: m.value for name, m in r.metrics.items()} for r in results}


def run_eval(args: EvalArgs) -> dict:
    """Evaluates a checkpoint, writes results.json + results.md, prints the table; returns the JSON payload."""
    from slmkit.checkpoint import RunFolder, load_checkpoint

    if not args.checkpoint:
        raise SlmkitError("which model? pass checkpoint=PATH (a run folder or a checkpoint file in one)")
    device = device_of(args.device)
    loaded = load_checkpoint(args.checkpoint, map_location=device)
    tasks = list(args.tasks) or run_tasks_of(loaded.config)
    if not tasks:
        raise SlmkitError(
            f"no tasks to run: pass tasks=[...] (e.g. tasks=[wikitext2]) or set eval.tasks in the recipe of {args.checkpoint}"
        )
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else loaded.tokenizer()
    model = loaded.model.to(torch.bfloat16) if args.precision == "bf16" else loaded.model
    settings = RunSettings(limit=args.limit, num_fewshot=args.num_fewshot, seed=args.seed, stride=args.stride)
    results = run_tasks(model, tokenizer, tasks, settings, args.batch_size)
    run_dir = loaded.tokenizer_path.parent  # tokenizer.json sits in the run folder, beside config.yaml
    meta = {
        "checkpoint": str(loaded.path),
        "step": loaded.step,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parameters": loaded.model.num_parameters(),
        "args": asdict(args),
    }
    json_path, md_path = write_report(Path(args.out) if args.out else RunFolder(run_dir).eval_reports, results, meta)
    print(markdown_table(results), end="")
    tables = label_tables(results)
    if tables:
        print("\n" + tables, end="")
    print(f"\nreports: {json_path} {md_path}")
    return {**meta, "results": {r.task: r.to_dict() for r in results}}


def run_tasks_of(config) -> list[str]:
    """The tasks a run is evaluated on by default: its eval.tasks, else the task it was fine-tuned on."""
    if config.eval.tasks:
        return list(config.eval.tasks)
    return [config.objective.task] if config.objective.task else []


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SlmkitError(f"device={name} but no CUDA GPU is visible: use device=cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SlmkitError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SlmkitError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA GPU(s): use cuda:0 ... "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def _load_tokenizer(path: str) -> Tokenizer:
    if not Path(path).is_file():
        raise SlmkitError(f"tokenizer file {path} does not exist")
    try:
        return Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises a bare Exception for unreadable or foreign files
        raise SlmkitError(f"{path} is not a tokenizers tokenizer.json: {err}") from None
