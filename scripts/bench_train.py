"""Training throughput of a recipe under several trainer groups, side by side in one run, with the ratio to the first.

Usage: python scripts/bench_train.py --recipe legal-125m --trainers gpu deepspeed-z2 deepspeed-z3 --steps 40 [key=value ...]
Each trainer runs `slmkit train` for --steps steps; the figures are medians over the steps after the first 10.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(recipe: str, trainer: str, steps: int, overrides: list[str], out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "slmkit.cli", "train", f"recipe={recipe}", f"trainer={trainer}", f"trainer.max_steps={steps}",
           "trainer.log_every=1", f"trainer.val_every={steps}", "trainer.val_batches=2", f"trainer.checkpoint_every={steps}",
           "trainer.progress_bar=false", "eval.tasks=[]", f"out_dir={out_dir}", *overrides]
    subprocess.run(cmd, check=True)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r.get("tokens_per_s") and r["step"] > 10] or [r for r in records if r.get("tokens_per_s")]
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None,
        "peak_mem_gb": max(r["peak_mem_gb"] for r in steady),
        "final_loss": records[-1].get("train_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="legal-125m")
    parser.add_argument("--trainers", nargs="+", default=["gpu", "deepspeed-z2", "deepspeed-z3"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    print(f"# {args.recipe} on {device}, torch {torch.__version__}, commit {commit}, {time.strftime('%Y-%m-%d')}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for trainer in args.trainers:
            results[trainer] = run(args.recipe, trainer, args.steps, args.overrides, Path(tmp) / trainer)
    base = results[args.trainers[0]]["tokens_per_s"]
    print("| trainer | tokens/s | ratio | MFU | peak mem (GiB) | loss at end |")
    print("|---|---:|---:|---:|---:|---:|")
    for trainer, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {trainer} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f} | {mfu} | {r['peak_mem_gb']:.1f} | {r['final_loss']:.3f} |")


if __name__ == "__main__":
    main()
