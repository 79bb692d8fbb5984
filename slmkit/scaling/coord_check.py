"""μP's coordinate check: train one recipe's model at several widths for a few steps and measure how large each
activation's coordinates are; under μP they stay flat in width, under the standard parametrization they grow.

Each width keeps the recipe's head size, head grouping and feed-forward ratio (only d_model and the head count move),
reads seeded random tokens (the check is about how updates scale with width, not about the text) and trains with the
recipe's optimizer at a constant learning rate. The scale of an activation is its mean |coordinate|; its slope is the
least-squares slope of log scale against log width, over the seeds' mean.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.atomic import atomic_path, atomic_write_text
from slmkit.config import RunConfig
from slmkit.errors import SlmkitError
from slmkit.model import Model, ModelConfig
from slmkit.options import at_least, option
from slmkit.training.optimizers import OPTIMIZERS

PARAMETRIZATIONS = ("standard", "mup")
SYNTHETIC_VOCABULARY = 256  # a recipe that takes its vocabulary from the tokenizer (vocab_size 0) is checked at this size


@dataclass
class CoordCheckArgs:
    widths: list[int] = option([64, 128, 256, 512, 1024], "Widths (d_model) to check, ascending; each a multiple of the recipe's head size.")
    seeds: int = option(3, "Seeds per width and parametrization; the scales are averaged over them.", bounds=at_least(1))
    steps: int = option(4, "Optimizer steps before the activations are measured.", bounds=at_least(1))
    n_layer: Optional[int] = option(2, "Depth of every width's model (a shallow model keeps the check fast); None = the recipe's.", bounds=at_least(1))
    seq_len: int = option(16, "Tokens per sequence.", bounds=at_least(2))
    batch_size: int = option(4, "Sequences per step.", bounds=at_least(1))
    lr: Optional[float] = option(None, "Constant learning rate of the check; None = the recipe's optim.lr.")
    base_width: Optional[int] = option(None, "mup_base_width of the μP models; None = the recipe's, else the smallest width.", bounds=at_least(1))
    out: Optional[str] = option(None, "Folder for coord-check.json and coord-check.png; None = runs/coord-check/<recipe>.")


@dataclass
class CoordCheck:
    """scales[parametrization][activation] = mean |coordinate| per width (seeds averaged); slopes likewise."""

    widths: list[int]
    scales: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    slopes: dict[str, dict[str, float]] = field(default_factory=dict)

    def max_abs_slope(self, parametrization: str) -> float:
        return max(abs(s) for s in self.slopes[parametrization].values())


def width_variant(model: ModelConfig, width: int, parametrization: str, base_width: int, n_layer: int | None,
                  vocab_size: int, block_size: int) -> ModelConfig:
    """The recipe's model at `width`: head size, query/key-value head ratio and feed-forward ratio kept."""
    head_dim = model.head_dim
    if width % head_dim:
        raise SlmkitError(f"width {width} is not a multiple of the recipe's head size {head_dim} (d_model / n_head): "
                          "choose widths that are")
    n_head = width // head_dim
    group = model.n_head // model.kv_heads
    if n_head % group:
        raise SlmkitError(f"width {width} gives {n_head} query heads, which the recipe's {group} queries per key-value "
                          "head do not divide: choose another width")
    ffn_hidden = None if model.ffn_hidden is None else max(1, round(model.ffn_hidden * width / model.d_model))
    return dataclasses.replace(
        model, d_model=width, n_head=n_head, n_kv_heads=None if model.n_kv_heads is None else n_head // group,
        ffn_hidden=ffn_hidden, n_layer=n_layer or model.n_layer, vocab_size=vocab_size, block_size=block_size,
        dropout=0.0, tie_embeddings=False, parametrization=parametrization, mup_base_width=base_width,
    ).validate()


def _activation_scales(model: Model, inputs: torch.Tensor) -> dict[str, float]:
    """Mean |coordinate| of the embedding (the first block's input), every block's output and the logits."""
    seen: dict[str, float] = {}
    hooks = [model.body.blocks[0].register_forward_pre_hook(
        lambda module, args: seen.__setitem__("embedding", args[0].abs().mean().item()))]
    for i, block in enumerate(model.body.blocks):
        hooks.append(block.register_forward_hook(
            lambda module, args, out, i=i: seen.__setitem__(f"block {i}", out.abs().mean().item())))
    try:
        with torch.no_grad():
            seen["logits"] = model(inputs).abs().mean().item()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _train_and_measure(config: RunConfig, model_config: ModelConfig, args: CoordCheckArgs, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = Model(model_config)
    optim = dataclasses.replace(config.optim, lr=args.lr or config.optim.lr)
    optimizer = OPTIMIZERS.get(optim.name)(list(model.named_parameters()), optim, model_config)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model_config.vocab_size, (args.steps + 1, args.batch_size, args.seq_len + 1), generator=generator)
    for step in range(args.steps):
        logits = model(tokens[step, :, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[step, :, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return _activation_scales(model.eval(), tokens[-1, :, :-1])


def log_log_slope(widths: list[int], scales: list[float]) -> float:
    return float(np.polyfit(np.log(widths), np.log(np.maximum(scales, 1e-30)), 1)[0])


def run_coord_check(config: RunConfig, args: CoordCheckArgs) -> CoordCheck:
    widths = list(args.widths)
    if len(widths) < 2 or any(b <= a for a, b in zip(widths, widths[1:])):
        raise SlmkitError(f"widths={widths}: give at least 2 widths, strictly increasing")
    base = args.base_width or config.model.mup_base_width or widths[0]
    if any(w % base for w in widths):
        raise SlmkitError(f"base_width={base} does not divide every width {widths}: μP's width multiplier is "
                          "d_model / base_width; choose a base that divides them all (e.g. the smallest)")
    vocab = config.model.vocab_size or SYNTHETIC_VOCABULARY
    result = CoordCheck(widths)
    for parametrization in PARAMETRIZATIONS:
        per_width: list[dict[str, float]] = []
        for width in widths:
            model_config = width_variant(config.model, width, parametrization, base, args.n_layer, vocab, args.seq_len)
            runs = [_train_and_measure(config, model_config, args, seed) for seed in range(args.seeds)]
            per_width.append({key: float(np.mean([r[key] for r in runs])) for key in runs[0]})
        names = list(per_width[0])
        result.scales[parametrization] = {k: [row[k] for row in per_width] for k in names}
        result.slopes[parametrization] = {k: log_log_slope(widths, result.scales[parametrization][k]) for k in names}
    return result


def report(check: CoordCheck) -> str:
    lines = []
    for parametrization, scales in check.scales.items():
        lines.append(f"{parametrization}: mean |coordinate| by width, and the log-log slope against width")
        lines.append("  " + f"{'activation':<12}" + "".join(f"{w:>10}" for w in check.widths) + f"{'slope':>9}")
        for name, values in scales.items():
            lines.append("  " + f"{name:<12}" + "".join(f"{v:>10.4g}" for v in values)
                         + f"{check.slopes[parametrization][name]:>+9.3f}")
    return "\n".join(lines) + "\n"


def save(check: CoordCheck, folder: Path, title: str) -> tuple[Path, Path]:
    """coord-check.json and coord-check.png (one panel per parametrization, one line per activation), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "coord-check.json"
    atomic_write_text(data, json.dumps(dataclasses.asdict(check), indent=2) + "\n")
    figure, axes = plt.subplots(1, len(check.scales), figsize=(5 * len(check.scales), 4), sharey=True)
    for ax, (parametrization, scales) in zip(np.atleast_1d(axes), check.scales.items()):
        for name, values in scales.items():
            ax.plot(check.widths, values, marker="o", label=f"{name} ({check.slopes[parametrization][name]:+.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"{parametrization}")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("mean |coordinate| (legend: log-log slope)")
    figure.suptitle(title)
    figure.tight_layout()
    image = folder / "coord-check.png"
    with atomic_path(image, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
    return data, image


def coord_check_command(config: RunConfig, args: CoordCheckArgs) -> str:
    """`slmkit mup coord-check`: runs the check, writes the JSON and the PNG, returns the table to print."""
    check = run_coord_check(config, args)
    folder = Path(args.out) if args.out else Path("runs") / "coord-check" / config.name
    data, image = save(check, folder, f"coordinate check: {config.name}, {args.steps} steps, {args.seeds} seeds")
    return report(check) + f"wrote {data} and {image}\n"

