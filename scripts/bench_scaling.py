"""Scaling benchmarks (issue #24), one part per call so each stays a short locked chunk:

    python scripts/bench_scaling.py fitter          # Hoffmann et al.'s law, 16 noisy points: recovery, time, determinism
    python scripts/bench_scaling.py coord-check     # μP coordinate check on shakespeare-char, widths 64..1024, 3 seeds
    python scripts/bench_scaling.py lr-transfer     # lr grid (7 lrs, factor 2) x widths 64/128/256, μP and standard
    python scripts/bench_scaling.py lr-transfer-seeds  # the same without gradient clipping, 3 seeds per point
    python scripts/bench_scaling.py lr-transfer-normal-readout  # μP's part of it with a normally initialized readout
    python scripts/bench_scaling.py ladder          # 6 rungs on shakespeare-char, resumable: call again to continue
    python scripts/bench_scaling.py holdout         # the fit's prediction for a 2x rung, then that rung trained

Outputs go under runs/bench-scaling/ (figures are copied to docs/ by hand after reading them).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from bench_common import REPO, SHARED, slmkit

OUT = REPO / "runs" / "bench-scaling"
LADDER = OUT / "ladder"
# nanoGPT's shakespeare-char model with 8 heads of 16 (so the smallest rungs can be built), 20 tokens per parameter.
LADDER_ARGS = ["recipe=shakespeare-char", "model.n_head=8", "trainer.progress_bar=false", "trainer.log_every=50",
               f"out={LADDER}", "sizes=[6e3,1.2e4,2.5e4,5e4,1e5,2e5]", "tokens_per_param=[20]"]
HOLDOUT = "holdout_sizes=[4e5]"
LRS = [2e-4 * 2 ** k for k in range(7)]  # 2e-4 .. 1.28e-2, factor 2
WIDTHS = [64, 128, 256]


def fitter() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_scaling_fit import HOFFMANN, hoffmann_points

    from slmkit.scaling.fit import compute_optimal_exponents, fit_law

    truth = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
    start = time.perf_counter()
    fit = fit_law(hoffmann_points(seed=0))
    elapsed = time.perf_counter() - start
    same = fit.to_dict() == fit_law(hoffmann_points(seed=0)).to_dict()
    p = fit.params
    print(f"seed 0: alpha {p['alpha']:.4f} {fit.intervals['alpha']}, beta {p['beta']:.4f} {fit.intervals['beta']}, "
          f"a {compute_optimal_exponents(p)['a']:.4f} (truth {truth:.4f}), E {p['E']:.3f}, R2 {fit.r2_log:.5f}, "
          f"{elapsed:.2f} s with 200 bootstrap fits; identical on refit: {same}")
    errors = []
    for seed in range(20):
        q = fit_law(hoffmann_points(seed=seed), bootstrap_samples=0).params
        errors.append((abs(q["alpha"] - 0.34), abs(q["beta"] - 0.28), abs(compute_optimal_exponents(q)["a"] - truth)))
    within = sum(max(e) <= 0.03 for e in errors)
    print(f"20 noise seeds: all three within 0.03 in {within}/20; worst |d alpha| {max(e[0] for e in errors):.4f}, "
          f"|d beta| {max(e[1] for e in errors):.4f}, |d a| {max(e[2] for e in errors):.4f}")


def coord_check() -> None:
    slmkit("mup", "coord-check", "recipe=shakespeare-char", "model.tie_embeddings=false", f"out={OUT / 'coord-check'}")


def lr_transfer(tag: str = "", extra: tuple[str, ...] = (), parametrizations: tuple[str, ...] = ("mup", "standard"),
                seeds: tuple[int | None, ...] = (None,)) -> None:
    """Each (parametrization, width, lr, seed): 2 layers, 200 steps of 12 x 64 characters, final val loss. Seed None is
    the recipe's own seed (the first, one-seed measurements); several seeds give each width's best rate per seed and
    the mean curve's best."""
    results_path = OUT / f"lr-transfer{tag}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for parametrization in parametrizations:
        for width in WIDTHS:
            for lr, seed in ((lr, seed) for lr in LRS for seed in seeds):
                key = f"{parametrization}-{width}-{lr:g}" + ("" if seed is None else f"-seed{seed}")
                if key in results:
                    continue
                run = OUT / f"lr-transfer{tag}" / key
                seeding = () if seed is None else (f"trainer.seed={seed}",)
                slmkit("train", "recipe=shakespeare-char", f"out_dir={run}", "model.n_layer=2", f"model.d_model={width}",
                       f"model.n_head={width // 32}", "model.tie_embeddings=false",
                       f"model.parametrization={parametrization}", "model.mup_base_width=64", f"optim.lr={lr}",
                       f"optim.min_lr={lr / 10}", "trainer.max_steps=200", "optim.decay_steps=200", "optim.warmup_steps=20",
                       "trainer.val_every=200", "trainer.checkpoint_every=0", "trainer.progress_bar=false",
                       "trainer.log_every=100", *seeding, *extra)
                records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                results[key] = [r["val_loss"] for r in records if "val_loss" in r][-1]
                results_path.write_text(json.dumps(results, indent=1))
    for parametrization in parametrizations:
        print(parametrization)
        for width in WIDTHS:
            table = np.array([[results[f"{parametrization}-{width}-{lr:g}" + ("" if s is None else f"-seed{s}")]
                               for s in seeds] for lr in LRS])  # lr x seed
            mean, std = table.mean(axis=1), table.std(axis=1, ddof=1) if len(seeds) > 1 else np.zeros(len(LRS))
            per_seed = ", ".join(f"{LRS[int(i)]:g}" for i in table.argmin(axis=0))
            print(f"  width {width}: best lr {LRS[int(np.argmin(mean))]:g} (per seed: {per_seed}); "
                  + ", ".join(f"{m:.3f}±{d:.3f}" for m, d in zip(mean, std)))


def ladder() -> None:
    slmkit("ladder", *LADDER_ARGS)
    slmkit("ladder", "fit", f"ladder={LADDER}")


def holdout() -> None:
    """The prediction for the held-out rung's planned size first, then the rung, then the fit that compares them."""
    from slmkit.scaling.ladder import LadderArgs, plan

    fit = json.loads((LADDER / "fit.json").read_text())
    print("fitted rungs:", fit["rungs"], "R2 (log):", fit["r2_log"])
    rung = plan("shakespeare-char", ["model.n_head=8"], LadderArgs(sizes=[6e3, 1.2e4, 2.5e4, 5e4, 1e5, 2e5],
                                                                  tokens_per_param=[20], holdout_sizes=[4e5]))[-1]
    slmkit("ladder", "predict", f"ladder={LADDER}", f"n={rung.non_embedding}")
    slmkit("ladder", *LADDER_ARGS, HOLDOUT)
    slmkit("ladder", "fit", f"ladder={LADDER}")


if __name__ == "__main__":
    parts = {"fitter": fitter, "coord-check": coord_check, "lr-transfer": lr_transfer, "ladder": ladder, "holdout": holdout,
             # The same grid under μP without the recipe's global gradient-norm clipping (a clip on the norm of all
             # gradients together bites harder the more parameters a width has, which μP's rules do not account for).
             "lr-transfer-noclip": lambda: lr_transfer("-noclip", ("trainer.grad_clip=0",), ("mup",)),
             # The unclipped grid over three seeds, both parametrizations: whether the best rate's move is larger than
             # the seed-to-seed noise.
             "lr-transfer-seeds": lambda: lr_transfer("-seeds", ("trainer.grad_clip=0",), ("mup", "standard"), (0, 1, 2)),
             # μP again with its readout initialized as the other matrices are (a zero readout lost at the base width).
             "lr-transfer-normal-readout": lambda: lr_transfer("-normal-readout", ("trainer.grad_clip=0",
                                                                                   "model.mup_readout_init=normal"),
                                                               ("mup",), (0, 1, 2))}
    if len(sys.argv) != 2 or sys.argv[1] not in parts:
        sys.exit(f"usage: python scripts/bench_scaling.py {{{','.join(parts)}}}")
    print(f"shared data: {SHARED}", flush=True)
    parts[sys.argv[1]]()
