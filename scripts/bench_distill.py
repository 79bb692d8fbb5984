"""Distillation benchmark, in one run on the CPU: a legal teacher about 4x legal-tiny's size trained for a fixed budget,
then the legal-tiny student for the same number of steps from scratch, distilled on the fly and distilled from the
top-k cache (held-out legal bits per byte, wall time, tokens/s); then the task version, a financial-sentiment teacher
and a student of half its depth (accuracy kept as a fraction of the teacher's, CPU inference speed-up).

    SLMKIT_SHARED=../shared python scripts/bench_distill.py            # the full benchmark (hours on 2 cores)
    SLMKIT_SHARED=../shared python scripts/bench_distill.py --quick    # the same chain at toy scale (minutes)

Every run is a `slmkit train` / `slmkit distill` subprocess; figures are read from the run folders (eval reports,
metrics.jsonl, the cache manifest). Prints markdown tables and writes them with the raw numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import REPO, SHARED, slmkit
LEGAL_SOURCES = [("dc_code", "legal/dc_code_sections.jsonl.gz"), ("dc_session_laws", "legal/dc_session_laws.jsonl.gz"),
                 ("scotus_opinions", "legal/scotus_opinions.jsonl.gz"), ("appellate_opinions", "legal/appellate_opinions.jsonl.gz")]


def eval_metrics(run: Path, task: str) -> dict[str, float]:
    report = json.loads((run / "eval" / "results.json").read_text())["results"][task]
    return {k: v["value"] for k, v in report["metrics"].items()}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def median_rate(run: Path, key: str) -> float:
    """The median of a run's logged rate after its first logged interval (which holds start-up costs)."""
    rates = [r[key] for r in metrics(run) if r.get(key)]
    return statistics.median(rates[1:] or rates)


def final_val_loss(run: Path) -> float | None:
    losses = [r["val_loss"] for r in metrics(run) if "val_loss" in r]
    return losses[-1] if losses else None


def parameters(run: Path) -> int:
    return int(subprocess.run([sys.executable, "-c", (
        "from slmkit.checkpoint import load_checkpoint; "
        f"print(load_checkpoint({str(run)!r}).model.num_parameters())")], capture_output=True, text=True, check=True, cwd=REPO).stdout)


def language_modelling(args: argparse.Namespace, work: Path, scale: list[str]) -> tuple[dict, list[str]]:
    """Teacher, then the student from scratch, distilled on the fly and distilled from the cache, at equal steps."""
    steps = [f"trainer.max_steps={args.steps}", "trainer.progress_bar=false", "eval.tasks=[legal_heldout]"]
    runs: dict[str, dict] = {}
    teacher = Path(args.teacher) if args.teacher else work / "teacher"
    if args.teacher:
        runs["teacher"] = {"wall_s": None}
    else:
        wall = slmkit("train", "recipe=legal-teacher-tiny", f"out_dir={teacher}", "trainer.progress_bar=false",
                      "eval.tasks=[legal_heldout]", f"trainer.max_steps={args.teacher_steps}", *scale)
        runs["teacher"] = {"wall_s": wall}
    students = {  # name: (run folder, command)
        "student from scratch": ("student-scratch", "train", "recipe=legal-tiny"),
        "student distilled, teacher on the fly": ("student-distilled", "distill", f"teacher={teacher}", "recipe=legal-tiny-distilled"),
        "student distilled, top-k cache": ("student-distilled-cache", "distill", f"teacher={teacher}", "recipe=legal-tiny-distilled",
                                           "distill.cache=topk", f"distill.cache_k={args.cache_k}",
                                           f"distill.cache_dir={work / 'teacher-logits'}"),
    }
    folders = {"teacher": teacher}
    for name, (folder, *command) in students.items():
        out = work / folder
        folders[name] = out
        runs[name] = {"wall_s": slmkit(*command, f"out_dir={out}", *steps, *scale)}
    for name, run in folders.items():
        runs[name].update(bits_per_byte=eval_metrics(run, "legal_heldout")["bits_per_byte"], val_loss=final_val_loss(run),
                          tokens_per_s=median_rate(run, "tokens_per_s"), parameters=parameters(run),
                          steps=max(r["step"] for r in metrics(run)), run=str(run))
    cache = json.loads((work / "teacher-logits" / "manifest.json").read_text())
    runs["student distilled, top-k cache"].update(cache_build_s=cache["build_seconds"], top_k_mass=cache["top_k_mass"],
                                                  cache_windows=cache["built_from"]["windows"])
    scratch = runs["student from scratch"]["bits_per_byte"]
    rows = ["| run | parameters | steps | legal_heldout bits/byte | vs scratch | val loss | wall (s) | tokens/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "(given)"
        if "cache_build_s" in r:
            wall += f" (cache {r['cache_build_s']:.0f})"
        rows.append(f"| {name} | {r['parameters'] / 1e6:.1f}M | {r['steps']} | {r['bits_per_byte']:.4f} | "
                    f"{r['bits_per_byte'] - scratch:+.4f} | {r['val_loss']:.4f} | {wall} | {r['tokens_per_s']:,.0f} |")
    cached = runs["student distilled, top-k cache"]
    rows.append(f"\nTop-{args.cache_k} cache: {cached['cache_windows']} windows of the train split; the top {args.cache_k} "
                f"tokens hold {100 * cached['top_k_mass']:.1f}% of the teacher's probability on average.")
    return runs, rows


def inference_rate(run: Path, rows: list[list[int]], rounds: int) -> list[float]:
    """Examples per second of a classifier's head over `rows` (batch 32, CPU), once per round."""
    import torch

    from slmkit.checkpoint import load_checkpoint
    from slmkit.eval.head_outputs import head_outputs
    from slmkit.tokenizer import end_of_document_id

    loaded = load_checkpoint(run)
    pad = end_of_document_id(loaded.tokenizer())
    rates = []
    with torch.inference_mode():
        head_outputs(loaded.model, rows[:64], "sequence_classification", pad, 32)  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            head_outputs(loaded.model, rows, "sequence_classification", pad, 32)
            rates.append(len(rows) / (time.perf_counter() - start))
    return rates


def headline_rows(run: Path, limit: int | None) -> list[list[int]]:
    """The valid split of fin_sentiment as the classifier reads it (the task's prompt, cut to the context)."""
    from slmkit.checkpoint import load_checkpoint
    from slmkit.eval import resolve_task
    from slmkit.eval.classification import labelled_inputs
    from slmkit.eval.encoding import sequence_input
    from slmkit.eval.prompting import task_records
    from slmkit.tokenizer import end_of_document_id

    loaded = load_checkpoint(run)
    tokenizer = loaded.tokenizer()
    spec = resolve_task("fin_sentiment")
    texts = [text for text, _ in labelled_inputs(spec, task_records(spec))][:limit]
    return [sequence_input(tokenizer, text, loaded.config.model.block_size, end_of_document_id(tokenizer)) for text in texts]


def task_distillation(args: argparse.Namespace, work: Path) -> tuple[dict, list[str]]:
    """A finance-sentiment teacher, its half-depth student distilled (soft labels + unlabeled text) and the same
    student trained on the labels alone; accuracy kept and CPU inference speed."""
    os.environ.setdefault("SLMKIT_SHARED", str(SHARED))
    quick = ["trainer.max_steps=20", "trainer.val_every=20", "trainer.checkpoint_every=0", "eval.limit=200",
             "distill.unlabeled_limit=200"] if args.quick else []
    pretrained = Path(args.finance) if args.finance else REPO / "runs" / "finance-tiny" / "latest"
    if not (pretrained / "model.safetensors").is_file():
        pretrained = work / "finance-tiny"
        slmkit("train", "recipe=finance-tiny", f"out_dir={pretrained}", "trainer.progress_bar=false",
               *(["trainer.max_steps=40", "eval.tasks=[]"] + toy_finance() if args.quick else []))
    teacher = work / "sentiment-teacher"
    walls = {"teacher": slmkit("train", "recipe=finance-sentiment", f"init_from={pretrained.resolve()}", f"out_dir={teacher}",
                               "trainer.progress_bar=false", *[q for q in quick if not q.startswith("distill.")])}
    students = {
        "student distilled (soft labels + unlabeled text)": [],
        "student on the labels alone (alpha 0)": ["distill.alpha=0", "distill.unlabeled=null"],
    }
    folders = {"teacher": teacher}
    for name, extra in students.items():
        out = work / ("sentiment-student-distilled" if not extra else "sentiment-student-labels-only")
        folders[name] = out
        walls[name] = slmkit("train", "recipe=finance-sentiment-distilled", f"distill.teacher={teacher}", f"out_dir={out}",
                             "trainer.progress_bar=false", *quick, *extra)
    rows_in = headline_rows(teacher, 256 if args.quick else None)
    rates: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(args.rounds):  # teacher and students in turn, so a busy minute of a shared machine hits all
        for name, run in folders.items():
            rates[name] += inference_rate(run, rows_in, 1)
    runs = {}
    for name, run in folders.items():
        report = eval_metrics(run, "fin_sentiment")
        runs[name] = {"acc": report["acc"], "macro_f1": report["macro_f1"], "parameters": parameters(run),
                      "examples_per_s": statistics.median(rates[name]), "wall_s": walls[name], "run": str(run)}
    base = runs["teacher"]
    rows = ["| model | parameters | accuracy | kept | macro-F1 | CPU inference (headlines/s) | speed-up | train wall (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        rows.append(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['acc']:.4f} | {r['acc'] / base['acc']:.1%} | "
                    f"{r['macro_f1']:.4f} | {r['examples_per_s']:,.0f} | {r['examples_per_s'] / base['examples_per_s']:.2f}x | "
                    f"{r['wall_s']:.0f} |")
    rows.append(f"\nInference: {len(rows_in)} valid headlines, batch 32, fp32 on the CPU, median of {args.rounds} rounds.")
    return runs, rows


def toy_finance() -> list[str]:
    return ["data.sources=[{name: fomc_statements, path: finance/fomc_statements.jsonl.gz}]", "tokenizer.train_chars=2000000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of every legal-tiny student (legal-tiny's own)")
    parser.add_argument("--teacher-steps", type=int, default=400, help="the teacher's budget in optimizer steps")
    parser.add_argument("--teacher", help="a trained legal teacher run to reuse instead of training one")
    parser.add_argument("--finance", help="pretrained finance-tiny run (default runs/finance-tiny/latest, trained if missing)")
    parser.add_argument("--cache-k", type=int, default=64, help="tokens per position in the teacher's top-k cache")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the inference-speed measurement")
    parser.add_argument("--only", choices=("lm", "task"), help="run one half of the benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="toy scale, to check the chain: 400 documents per legal source, 128-token windows, few steps")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-distill"), help="folder for the runs")
    parser.add_argument("--out", help="results JSON (default <work>/<time>/results.json)")
    args = parser.parse_args()
    scale = []
    if args.quick:
        args.steps, args.teacher_steps, args.rounds = min(args.steps, 40), min(args.teacher_steps, 60), min(args.rounds, 2)
        sources = ", ".join(f"{{name: {name}, path: {path}, max_documents: 400}}" for name, path in LEGAL_SOURCES)
        scale = [f"data.sources=[{sources}]", "tokenizer.train_chars=3000000", "model.block_size=128",
                 "trainer.micro_batch_size=8", "eval.limit=20", "trainer.val_every=20", "trainer.log_every=5",
                 "trainer.checkpoint_every=0"]
    work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    report: dict = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    markdown: list[str] = []
    if args.only in (None, "lm"):
        report["language_modelling"], rows = language_modelling(args, work, scale)
        markdown += [f"### Language modelling: legal, {args.steps} student steps, teacher {args.teacher_steps} steps", "", *rows, ""]
        print("\n".join(markdown), flush=True)
    if args.only in (None, "task"):
        report["task"], rows = task_distillation(args, work)
        markdown += ["### Task: financial sentiment", "", *rows, ""]
    print("\n".join(markdown))
    out = Path(args.out) if args.out else work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "markdown": "\n".join(markdown)}, indent=2) + "\n")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
