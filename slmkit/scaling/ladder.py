"""`slmkit ladder`: one recipe at a ladder of sizes and token counts, each rung an ordinary run in its own folder.

The plan is a list of rungs, each a run name and the recipe overrides that make it (shape from the size rule in
sizes.py, steps from tokens per parameter, learning rate and batch fixed or power laws of size, seed). It is written
to <out>/ladder.json before anything trains and checked whole first: a mistake in any rung stops the ladder before the
first one starts. Rungs run in order; a rung whose folder holds finished weights is skipped, an interrupted one
resumes, and after each rung <out>/results.json records N (non-embedding and total), D, FLOPs and the final
validation loss of every finished rung. Rungs marked held out are planned and run like the others and left out of the
fit, so the fit can predict them first.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from slmkit.atomic import atomic_write_text
from slmkit.checkpoint import CONFIG_FILE
from slmkit.checkpoint.run_folder import RunFolder
from slmkit.config import RunConfig, load_run_config
from slmkit.errors import SlmkitError
from slmkit.model import Model
from slmkit.options import at_least, option
from slmkit.recipe import resolve_recipe
from slmkit.scaling.fit import LAWS
from slmkit.scaling.sizes import non_embedding_parameters, shape_for

PLAN_FILE = "ladder.json"
RESULTS_FILE = "results.json"


@dataclass
class LadderArgs:
    sizes: list[float] = option([], "Target non-embedding parameter counts, strictly increasing (e.g. [3e4,6e4,1.2e5]).")
    tokens_per_param: list[float] = option([20.0], "Training tokens per non-embedding parameter; several multiples give several token counts per size (needed for L(N, D)).")
    holdout_sizes: list[float] = option([], "Sizes trained after the others and left out of the fit, to test its prediction.")
    lr_exponent: float = option(0.0, "Learning rate = the recipe's optim.lr * (N / N of the smallest size)^lr_exponent; 0 = fixed.")
    lr_multipliers: list[float] = option([1.0], "Each rung also at these multiples of its learning rate (a tuning grid: the fit keeps each size's best, and the best lr against compute is fitted).")
    batch_exponent: float = option(0.0, "Micro-batch size = the recipe's * (N / N of the smallest size)^batch_exponent, rounded, at least 1; 0 = fixed.")
    warmup_fraction: float = option(0.1, "Warmup steps = min(the recipe's optim.warmup_steps, this fraction of a rung's steps).", bounds=at_least(0))
    seeds: list[int] = option([1337], "trainer.seed of each rung; several seeds give several points per size.")
    out: Optional[str] = option(None, "Ladder folder (ladder.json, results.json, one run folder per rung); None = runs/ladder/<recipe>.")


@dataclass(frozen=True)
class Rung:
    name: str
    overrides: list[str]
    target: float
    non_embedding: int  # planned; the results record the trained model's own count
    tokens_per_param: float
    lr_multiplier: float
    seed: int
    holdout: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _format_count(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}"


def plan(recipe: str, overrides: list[str], args: LadderArgs) -> list[Rung]:
    """The rungs, every one resolved as a recipe (so any mistake is found before the first trains)."""
    sizes, holdout = list(args.sizes), list(args.holdout_sizes)
    if not sizes:
        raise SlmkitError("name the sizes: sizes=[N1,N2,...] (target non-embedding parameter counts, increasing)")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise SlmkitError(f"sizes={sizes} must be strictly increasing")
    if any(h <= sizes[-1] for h in holdout):
        raise SlmkitError(f"holdout_sizes={holdout} must be larger than every fitted size (the largest is {sizes[-1]:g}): "
                          "a held-out rung tests the fit's extrapolation")
    if not args.tokens_per_param or min(args.tokens_per_param) <= 0 or not args.lr_multipliers or not args.seeds:
        raise SlmkitError("tokens_per_param, lr_multipliers and seeds each need at least one value, tokens_per_param > 0")
    law = "parametric" if len(set(args.tokens_per_param)) > 1 else "power"
    points = len(sizes) * len(set(args.tokens_per_param))
    if points < LAWS[law]["min_points"] or len(sizes) < 4:
        raise SlmkitError(f"{len(sizes)} sizes x {len(set(args.tokens_per_param))} token multiples give {points} points; "
                          f"the {law} law needs at least {LAWS[law]['min_points']} (and at least 4 sizes): add sizes")
    base = resolve_recipe(recipe, overrides)
    shapes = [shape_for(base.model, target) for target in sizes + holdout]
    counts = [non_embedding_parameters(shape) for shape in shapes]
    for (a, b), (ta, tb) in zip(zip(counts, counts[1:]), zip(sizes + holdout, (sizes + holdout)[1:])):
        if b <= a:
            raise SlmkitError(f"sizes {ta:g} and {tb:g} give models of {a:,} and {b:,} non-embedding parameters: the size "
                              "rule cannot build increasing sizes there; space the sizes further apart")
    trainer, optim = base.trainer, base.optim
    tokens_per_step = trainer.micro_batch_size * trainer.grad_accum * base.model.block_size
    rungs = []
    for target, shape, count in zip(sizes + holdout, shapes, counts):
        scale = count / counts[0]
        micro = max(1, round(trainer.micro_batch_size * scale ** args.batch_exponent))
        step_tokens = tokens_per_step * micro / trainer.micro_batch_size
        for tpp in args.tokens_per_param:
            steps = max(1, math.ceil(tpp * count / step_tokens))
            for multiplier in args.lr_multipliers:
                lr = optim.lr * scale ** args.lr_exponent * multiplier
                for seed in args.seeds:
                    name = (f"n{_format_count(target)}-tpp{tpp:g}" + (f"-lr{multiplier:g}x" if len(args.lr_multipliers) > 1 else "")
                            + (f"-s{seed}" if len(args.seeds) > 1 else ""))
                    shape_keys = [f"model.d_model={shape.d_model}", f"model.n_layer={shape.n_layer}",
                                  f"model.n_head={shape.n_head}"]
                    if shape.n_kv_heads is not None:
                        shape_keys.append(f"model.n_kv_heads={shape.n_kv_heads}")
                    if shape.ffn_hidden is not None:
                        shape_keys.append(f"model.ffn_hidden={shape.ffn_hidden}")
                    rung_overrides = [
                        *overrides, *shape_keys, f"trainer.max_steps={steps}", f"trainer.micro_batch_size={micro}",
                        f"trainer.seed={seed}", f"optim.lr={lr:.6g}", f"optim.min_lr={optim.min_lr * lr / optim.lr:.6g}",
                        f"optim.decay_steps={steps}",
                        f"optim.warmup_steps={min(optim.warmup_steps, math.floor(args.warmup_fraction * steps))}",
                        f"trainer.val_every={steps}", "trainer.checkpoint_every=0", "eval.tasks=[]",
                    ]
                    rungs.append(Rung(name, rung_overrides, target, count, tpp, multiplier, seed, target in holdout))
    for rung in rungs:
        resolve_recipe(recipe, rung.overrides)  # a bad value (a μP base width that does not divide) stops it all now
    return rungs


def ladder_folder(recipe: str, args: LadderArgs) -> Path:
    return Path(args.out) if args.out else Path("runs") / "ladder" / recipe


def _write_plan(folder: Path, recipe: str, overrides: list[str], rungs: list[Rung]) -> None:
    """ladder.json; an existing plan may gain rungs (held-out ones, more seeds) but not change one it has."""
    path = folder / PLAN_FILE
    known: dict[str, dict] = {}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old["recipe"] != recipe:
            raise SlmkitError(f"{folder} holds a ladder of recipe {old['recipe']!r}, not {recipe!r}: choose another out=")
        known = {r["name"]: r for r in old["rungs"]}
    for rung in rungs:
        if rung.name in known and known[rung.name] != rung.to_dict():
            raise SlmkitError(f"{folder} already planned rung {rung.name} differently (overrides {known[rung.name]['overrides']}"
                              f"); choose another out= for a changed ladder")
        known[rung.name] = rung.to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"recipe": recipe, "overrides": overrides, "rungs": list(known.values())},
                                       indent=2) + "\n")


def final_val_loss(run: Path) -> float | None:
    """The last validation loss a run folder's metrics.jsonl recorded."""
    losses = [record["val_loss"] for record in RunFolder(run).metric_records() if "val_loss" in record]
    return losses[-1] if losses else None


def rung_record(rung: dict, run: Path) -> dict:
    """What the fit needs of a finished rung, from its run folder: N, D, FLOPs (the MFU formula), final val loss."""
    config = load_run_config(run / CONFIG_FILE)
    with torch.device("meta"):
        model = Model(config.model)
    trainer = config.trainer
    tokens = trainer.max_steps * trainer.micro_batch_size * trainer.grad_accum * config.model.block_size
    return {
        "name": rung["name"], "run": str(run), "holdout": rung["holdout"], "seed": rung["seed"],
        "tokens_per_param": rung["tokens_per_param"], "lr_multiplier": rung["lr_multiplier"], "lr": config.optim.lr,
        "batch_tokens": trainer.micro_batch_size * trainer.grad_accum * config.model.block_size,
        "n_non_embedding": model.num_parameters(non_embedding=True), "n_total": model.num_parameters(),
        "tokens": tokens, "flops": model.flops_per_token(config.model.block_size) * tokens,
        "val_loss": final_val_loss(run),
        "data": dataclasses.asdict(config.data), "tokenizer": dataclasses.asdict(config.tokenizer),
    }


def finished(run: Path) -> bool:
    """A run folder has its final weights exactly when its run went the whole way (training/run.py)."""
    return RunFolder(run).finished and final_val_loss(run) is not None


def run_ladder(recipe: str, overrides: list[str], args: LadderArgs, train=None) -> str:
    """Plans, then trains every unfinished rung in order (held-out rungs last); returns a summary to print."""
    rungs = plan(recipe, overrides, args)
    folder = ladder_folder(recipe, args)
    _write_plan(folder, recipe, overrides, rungs)
    if train is None:
        from slmkit.training.run import train
    lines = []
    for rung in sorted(rungs, key=lambda r: r.holdout):
        run = folder / rung.name
        if finished(run):
            lines.append(f"{rung.name}: finished before, skipped")
        else:
            # An interrupted rung continues from its checkpoint (a stop signal writes one); without one it starts over.
            resume = ["resume=true"] if RunFolder(run).checkpoints() else []
            config: RunConfig = resolve_recipe(recipe, [*rung.overrides, f"out_dir={run}", *resume])
            train(config)
            lines.append(f"{rung.name}: trained")
        write_results(folder)
    return "\n".join(lines + [f"results: {folder / RESULTS_FILE}; fit them with: slmkit ladder fit ladder={folder}"]) + "\n"


def write_results(folder: Path) -> list[dict]:
    """results.json: one record per finished rung of the plan, in plan order."""
    planned = json.loads((folder / PLAN_FILE).read_text(encoding="utf-8"))["rungs"]
    records = [rung_record(rung, folder / rung["name"]) for rung in planned if finished(folder / rung["name"])]
    atomic_write_text(folder / RESULTS_FILE, json.dumps(records, indent=2) + "\n")
    return records
