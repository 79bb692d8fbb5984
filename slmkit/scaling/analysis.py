"""`slmkit ladder fit` and `slmkit ladder predict`: the law fitted to a ladder's results, with intervals, drawn, and
asked about a size not trained.

The fit reads <ladder>/results.json (and those of further ladders of the same data and tokenizer), keeps each
(size, tokens) cell's best learning rate where rungs tuned it, and fits L(N) when every rung had the same tokens per
parameter, L(N, D) otherwise. Held-out rungs are left out and compared with the prediction. fit.json is written
atomically, fit.png beside it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from slmkit.atomic import atomic_path, atomic_write_text
from slmkit.errors import SlmkitError
from slmkit.options import option
from slmkit.scaling.compute import best_setting_law, isoflop_fit
from slmkit.scaling.fit import INTERVAL, LAWS, LawFit, Point, fit_law
from slmkit.scaling.ladder import RESULTS_FILE

FIT_FILE = "fit.json"
FIGURE_FILE = "fit.png"


@dataclass
class FitArgs:
    ladder: Optional[str] = option(None, "Ladder folder (holding results.json); fit.json and fit.png are written there.")
    also: list[str] = option([], "Further ladder folders of the same data and tokenizer whose rungs join the fit.")
    law: str = option("auto", "power = L(N) at fixed tokens per parameter; parametric = L(N, D); auto = parametric when the rungs have several token multiples.", choices=("auto", "power", "parametric"))


@dataclass
class PredictArgs:
    ladder: Optional[str] = option(None, "Ladder folder holding fit.json (from slmkit ladder fit).")
    n: Optional[float] = option(None, "Non-embedding parameters of the model to predict.")
    d: Optional[float] = option(None, "Training tokens; an L(N) fit takes its tokens per parameter (give d only to confirm).")


def _load_records(folders: list[Path]) -> list[dict]:
    records = []
    for folder in folders:
        path = folder / RESULTS_FILE
        if not path.is_file():
            raise SlmkitError(f"no {RESULTS_FILE} in {folder}: run the ladder first (slmkit ladder recipe=NAME ...)")
        records += json.loads(path.read_text(encoding="utf-8"))
    if records:
        first = records[0]
        for record in records[1:]:
            for part in ("data", "tokenizer"):
                if record[part] != first[part]:
                    raise SlmkitError(f"rungs {first['name']} ({first['run']}) and {record['name']} ({record['run']}) "
                                      f"were trained on different {part} settings: a law across them would mix "
                                      "different losses; fit ladders of one data set and tokenizer")
    missing = [r["name"] for r in records if r["val_loss"] is None or not math.isfinite(r["val_loss"])]
    if missing:
        raise SlmkitError(f"rungs {missing} have no finite validation loss: rerun them")
    return records


def _best_per_cell(records: list[dict]) -> list[dict]:
    """Per (size, tokens, seed): the rung with the lowest loss over the learning rates tried."""
    cells: dict[tuple, dict] = {}
    for r in records:
        key = (r["n_non_embedding"], r["tokens"], r["seed"])
        if key not in cells or r["val_loss"] < cells[key]["val_loss"]:
            cells[key] = r
    return list(cells.values())


def fit_ladder(args: FitArgs) -> str:
    if not args.ladder:
        raise SlmkitError("name the ladder: slmkit ladder fit ladder=runs/ladder/<recipe>")
    folder = Path(args.ladder)
    records = _load_records([folder, *map(Path, args.also)])
    fitted = [r for r in records if not r["holdout"]]
    best = _best_per_cell(fitted)
    law = args.law if args.law != "auto" else ("parametric" if len({r["tokens_per_param"] for r in best}) > 1 else "power")
    if len(best) < LAWS[law]["min_points"]:
        raise SlmkitError(f"{len(best)} finished rungs; the {law} law needs at least {LAWS[law]['min_points']}: run "
                          "the rest of the ladder (slmkit ladder ... resumes it)")
    fit = fit_law([Point(r["n_non_embedding"], r["tokens"], r["val_loss"]) for r in best], law)
    out = fit.to_dict()
    out["rungs"] = [r["name"] for r in best]
    if len({r["tokens_per_param"] for r in best}) == 1:
        out["tokens_per_param"] = best[0]["tokens_per_param"]
    tuned = len({r["lr_multiplier"] for r in fitted}) > 1
    lr_rows = fitted if tuned else []
    if lr_rows:
        try:
            lr_law, optima = best_setting_law([r["flops"] for r in lr_rows], [r["lr"] for r in lr_rows],
                                              [r["val_loss"] for r in lr_rows])
            out["best_lr_vs_compute"] = {"coefficient": lr_law.coefficient, "exponent": lr_law.exponent,
                                         "optima": [vars(o) for o in optima]}
        except SlmkitError as err:
            out["best_lr_vs_compute"] = {"not fitted": str(err)}
    try:
        iso = isoflop_fit([r["flops"] for r in best], [r["n_non_embedding"] for r in best], [r["val_loss"] for r in best])
        out["isoflop"] = {"n_opt": vars(iso.n_opt), "d_opt": vars(iso.d_opt), "optima": [vars(o) for o in iso.optima]}
    except SlmkitError as err:
        out["isoflop"] = {"not fitted": str(err)}
    held = []
    for r in (r for r in records if r["holdout"]):
        loss, low, high = fit.predict(r["n_non_embedding"], r["tokens"])
        held.append({"name": r["name"], "n_non_embedding": r["n_non_embedding"], "tokens": r["tokens"],
                     "predicted": loss, "interval": [low, high], "measured": r["val_loss"],
                     "error": (r["val_loss"] - loss) / loss})
    out["holdout"] = held
    atomic_write_text(folder / FIT_FILE, json.dumps(out, indent=2) + "\n")
    figure = draw(fit, best, held, folder / FIGURE_FILE)
    return describe(fit, out) + f"wrote {folder / FIT_FILE} and {figure}\n"


def describe(fit: LawFit, out: dict) -> str:
    lines = [f"{out['formula']} fitted to {len(fit.points)} rungs (log-space R^2 {fit.r2_log:.4f}); "
             f"{INTERVAL:.0%} bootstrap intervals:"]
    for key, value in fit.params.items():
        low, high = fit.intervals[key]
        lines.append(f"  {key:>5} = {value:.4g}  [{low:.4g}, {high:.4g}]")
    if "compute_optimal" in out:
        a, b = out["compute_optimal"]["a"], out["compute_optimal"]["b"]
        lines.append(f"  compute-optimal: N_opt ∝ C^{a:.3f}, D_opt ∝ C^{b:.3f}")
    if "coefficient" in out.get("best_lr_vs_compute", {}):
        law = out["best_lr_vs_compute"]
        lines.append(f"  best lr ≈ {law['coefficient']:.3g} * C^{law['exponent']:.3f}")
    for h in out["holdout"]:
        lines.append(f"  held out {h['name']}: predicted {h['predicted']:.4f} [{h['interval'][0]:.4f}, "
                     f"{h['interval'][1]:.4f}], measured {h['measured']:.4f} ({h['error']:+.1%})")
    return "\n".join(lines) + "\n"


def draw(fit: LawFit, points: list[dict], held: list[dict], path: Path) -> Path:
    """Loss against N: the fitted rungs, the law (one curve per tokens-per-parameter) with its bootstrap band, and
    the held-out rungs with their predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4.2))
    by_tpp: dict[float, list[dict]] = defaultdict(list)
    for r in points:
        by_tpp[r["tokens_per_param"]].append(r)
    largest = max([r["n_non_embedding"] for r in points] + [h["n_non_embedding"] for h in held])
    grid = np.logspace(math.log10(min(r["n_non_embedding"] for r in points)) - 0.1, math.log10(largest) + 0.15, 60)
    for tpp, rows in sorted(by_tpp.items()):
        ratio = float(np.median([r["tokens"] / r["n_non_embedding"] for r in rows]))
        curve = np.array([fit.predict(n, ratio * n) for n in grid])
        line, = ax.plot(grid, curve[:, 0], label=f"fit, {tpp:g} tokens/param")
        ax.fill_between(grid, curve[:, 1], curve[:, 2], color=line.get_color(), alpha=0.2)
        ax.scatter([r["n_non_embedding"] for r in rows], [r["val_loss"] for r in rows], color=line.get_color(), zorder=3)
    for h in held:
        ax.errorbar(h["n_non_embedding"], h["predicted"], yerr=[[h["predicted"] - h["interval"][0]],
                    [h["interval"][1] - h["predicted"]]], fmt="s", mfc="none", color="k", label="prediction (held out)")
        ax.scatter(h["n_non_embedding"], h["measured"], marker="*", s=120, color="red", zorder=4, label="measured (held out)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"{fit.law} law, R² (log) = {fit.r2_log:.3f}")
    ax.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
    return path


def predict(args: PredictArgs) -> str:
    if not args.ladder or args.n is None:
        raise SlmkitError("usage: slmkit ladder predict ladder=DIR n=NON_EMBEDDING_PARAMS [d=TOKENS]")
    path = Path(args.ladder) / FIT_FILE
    if not path.is_file():
        raise SlmkitError(f"no {FIT_FILE} in {args.ladder}: fit it first with slmkit ladder fit ladder={args.ladder}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    fit = LawFit.from_dict(raw)
    if args.n <= 0 or (args.d is not None and args.d <= 0):
        raise SlmkitError("n and d must be positive")
    d = args.d
    if fit.law == "power":
        tpp = raw["tokens_per_param"]
        if d is not None and abs(d / (tpp * args.n) - 1) > 0.05:
            raise SlmkitError(f"this ladder's law is L(N) at {tpp:g} tokens per parameter, so it predicts d = "
                              f"{tpp * args.n:.4g} tokens for n = {args.n:.4g}; for other token counts run a ladder with "
                              "several tokens_per_param and fit L(N, D)")
        d = tpp * args.n
    elif d is None:
        raise SlmkitError("this ladder's law is L(N, D): give the training tokens too (d=...)")
    loss, low, high = fit.predict(args.n, d)
    return (f"predicted final validation loss at N = {args.n:.4g}, D = {d:.4g}: {loss:.4f} "
            f"({INTERVAL:.0%} interval {low:.4f} to {high:.4f}; {raw['formula']}, {len(fit.points)} rungs)\n")
