"""Fine-tuning benchmark: each task fine-tuned from a pretrained domain tiny model beside the same architecture from
random init, the classical baseline for sentiment, and full vs LoRA throughput — one run, same data, same splits.

    SLMKIT_SHARED=../shared python scripts/bench_finetune.py            # trains finance-tiny / biomedical-tiny first if needed

Every run is a `slmkit train` subprocess (so each reports its own peak memory); results are read from the run folders'
eval reports. Prints markdown tables and writes them with the raw numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import REPO, SHARED, section_overrides, slmkit

# (name, fine-tuning recipe, pretrained recipe, eval task, metrics to report)
TASKS = [
    ("financial sentiment", "finance-sentiment", "finance-tiny", "fin_sentiment", ("acc", "macro_f1")),
    ("NCBI disease NER", "ncbi-disease-ner", "biomedical-tiny", "ncbi_disease", ("entity_f1",)),
    ("TAT-QA text spans", "tatqa-spans", "finance-tiny", "tatqa_text_spans", ("exact_match", "f1")),
    ("PubMedQA classifier", "pubmedqa-classify", "biomedical-tiny", "pubmedqa", ("acc", "macro_f1")),
    ("PubMedQA SFT (decision)", "pubmedqa-sft", "biomedical-tiny", "pubmedqa_answer", ("exact_match",)),
]


def pretrained(recipe: str, given: str | None) -> Path:
    """The pretrained run: as given, runs/<recipe>/latest, or trained now."""
    run = Path(given) if given else REPO / "runs" / recipe / "latest"
    if not (run / "model.safetensors").is_file():
        print(f"# pretraining {recipe} (no finished run at {run})", flush=True)
        slmkit("train", f"recipe={recipe}", "trainer.progress_bar=false")
        run = REPO / "runs" / recipe / "latest"
    return run.resolve()


def results(run: Path, task: str) -> dict[str, float]:
    report = json.loads((run / "eval" / "results.json").read_text())["results"][task]
    return {k: v["value"] for k, v in {**report["metrics"], **{f"baseline {b}": m for b, m in report["baselines"].items()}}.items()}


def finetune(recipe: str, source: Path, out: Path, random_init: bool, *extra: str) -> tuple[Path, float | None]:
    """Fine-tunes `recipe` from `source`, or trains the same architecture and tokenizer from random init. A run that
    finished and was evaluated in an earlier invocation (--resume) is kept as it is; its wall time is then unknown."""
    if (out / "eval" / "results.json").is_file():
        print(f"# reusing the finished run {out}", flush=True)
        return out, None
    if random_init:
        model = json.loads(subprocess.run([sys.executable, "-c", (
            "import dataclasses, json, sys; from slmkit.config import load_run_config; "
            f"print(json.dumps(dataclasses.asdict(load_run_config({str(source / 'config.yaml')!r}).model)))")],
            capture_output=True, text=True, check=True, cwd=REPO).stdout)
        overrides = ["init_from=null", f"tokenizer.path={source / 'tokenizer.json'}",
                     *section_overrides("model", model)]
    else:
        overrides = [f"init_from={source}"]
    wall = slmkit("train", f"recipe={recipe}", f"out_dir={out}", "trainer.progress_bar=false", *overrides, *extra)
    return out, wall


def tfidf_baseline() -> dict[str, float]:
    """TF-IDF of word 1-2 grams + logistic regression on the same train/valid split of financial sentiment."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from slmkit.eval.records import read_records

    def load(split: str) -> tuple[list[str], list[int]]:
        # slmkit's own reader: the headlines hold Unicode line separators that str.splitlines() would cut at.
        rows = read_records(str(SHARED / "eval/finance/twitter_sentiment" / f"{split}.jsonl"), "fin_sentiment")
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (train_x, train_y), (valid_x, valid_y) = load("train"), load("valid")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(vectorizer.fit_transform(train_x), train_y)
    predicted = classifier.predict(vectorizer.transform(valid_x))
    return {"acc": accuracy_score(valid_y, predicted), "macro_f1": f1_score(valid_y, predicted, average="macro")}


def throughput(run: Path) -> tuple[float, float]:
    """(median examples/s after the first logged interval, peak memory GB) of a run's metrics."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records if "examples_per_s" in r][1:]
    return statistics.median(rates), max(r.get("peak_mem_gb") or 0 for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finance", help="pretrained finance run (default runs/finance-tiny/latest, trained if missing)")
    parser.add_argument("--biomedical", help="pretrained biomedical run (default runs/biomedical-tiny/latest, trained if missing)")
    parser.add_argument("--work", default=str(REPO / "runs" / "bench-finetune"), help="folder for the fine-tuned runs")
    parser.add_argument("--only", nargs="*", help="task names to run (default all)")
    parser.add_argument("--throughput-steps", type=int, default=60, help="steps of each full / LoRA throughput run")
    parser.add_argument("--resume", help="an earlier invocation's work folder: finished runs in it are reused, the rest run")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-finetune" / "results.json"))
    args = parser.parse_args()
    tasks = [t for t in TASKS if not args.only or t[1] in args.only]
    given = {"finance-tiny": args.finance, "biomedical-tiny": args.biomedical}
    sources = {base: pretrained(base, given[base]) for base in dict.fromkeys(t[2] for t in tasks)}
    work = Path(args.resume) if args.resume else Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    report: dict = {"pretrained": {k: str(v) for k, v in sources.items()}, "tasks": {}}
    rows = ["| task | metric | from random init | fine-tuned from pretrained | baseline |", "|---|---|---:|---:|---|"]
    for name, recipe, base, task, metrics in tasks:
        source = sources[base]
        scratch, scratch_s = finetune(recipe, source, work / f"{recipe}-scratch", True)
        tuned, tuned_s = finetune(recipe, source, work / f"{recipe}-pretrained", False)
        a, b = results(scratch, task), results(tuned, task)
        report["tasks"][recipe] = {"random_init": a, "pretrained": b, "seconds": {"random_init": scratch_s, "pretrained": tuned_s}}
        baselines = ", ".join(f"{k.removeprefix('baseline ')} {v:.4f}" for k, v in b.items() if k.startswith("baseline"))
        for metric in metrics:
            rows.append(f"| {name} | {metric} | {a[metric]:.4f} | {b[metric]:.4f} | {baselines} |")
        print("\n".join(rows), flush=True)
    if not args.only or "finance-sentiment" in args.only:
        classical = tfidf_baseline()
        report["tfidf_logreg_sentiment"] = classical
        rows.append(f"| financial sentiment | acc / macro_f1 | TF-IDF 1-2 grams + logistic regression: "
                    f"{classical['acc']:.4f} / {classical['macro_f1']:.4f} | | |")
        speed = ["| fine-tuning | examples/s | peak memory (GB, process RSS) | trainable parameters |", "|---|---:|---:|---:|"]
        for label, extra in (("full", ()), ("LoRA r=8 (q,k,v,o) + head", ("lora.rank=8",))):
            run, _ = finetune("finance-sentiment", sources["finance-tiny"], work / f"speed-{label.split()[0]}", False,
                              f"trainer.max_steps={args.throughput_steps}", "trainer.log_every=5", "trainer.val_every=100000",
                              "trainer.checkpoint_every=0", "eval.limit=8", *extra)
            rate, memory = throughput(run)
            trainable = subprocess.run([sys.executable, "-c", (
                "from slmkit.recipe import resolve_recipe; from slmkit.checkpoint import build_model; from slmkit.lora import add_lora; "
                f"c = resolve_recipe('finance-sentiment', ['init_from={sources['finance-tiny']}', 'objective.labels=[a,b,c]', "
                f"'objective.pooling=last', *{list(extra)!r}]); m = build_model(c); m = add_lora(m, c.lora) if c.lora.rank else m; "
                "print(sum(p.numel() for p in m.parameters() if p.requires_grad))")], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
            report.setdefault("throughput", {})[label] = {"examples_per_s": rate, "peak_mem_gb": memory, "trainable": int(trainable)}
            speed.append(f"| {label} | {rate:.1f} | {memory:.2f} | {int(trainable):,} |")
        rows += ["", *speed]
    print("\n".join(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**report, "markdown": "\n".join(rows)}, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
