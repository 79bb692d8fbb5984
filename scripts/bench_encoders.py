"""Encoder benchmark: a masked-LM encoder beside the causal decoder of the same size, data, batch and steps — NCBI
disease NER entity F1 and financial-sentiment accuracy after the same fine-tuning; retrieval recall@k / MRR of the
encoder as an embedder (pretrained only, then contrastively tuned) beside BM25 on the same pool; masked-token loss and
accuracy on held-out legal text over pretraining.

    SLMKIT_SHARED=../shared python scripts/bench_encoders.py            # reuses runs/<recipe>/latest, trains what is missing
    SLMKIT_SHARED=../shared python scripts/bench_encoders.py --quick    # every run a few steps on a slice of the data

Every run is a `slmkit train` / `slmkit eval` subprocess; figures are read from the run folders (metrics.jsonl, eval
reports). Prints markdown tables and writes them with the raw numbers, machine, versions and commit to --out (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_common import REPO, SHARED, section_overrides, slmkit

# Pretraining pairs: (domain, encoder recipe, decoder recipe of the same size, data, batch and steps).
DOMAINS = [("biomedical", "biomedical-encoder-tiny", "biomedical-tiny"), ("finance", "finance-encoder-tiny", "finance-tiny"),
           ("legal", "legal-encoder-tiny", "legal-tiny")]
ENCODER_OF = {domain: encoder for domain, encoder, _ in DOMAINS}
DECODER_OF = {domain: decoder for domain, _, decoder in DOMAINS}
# The shipped decoder recipes train with Muon and QK-norm; the encoders with AdamW (Muon is untested on masked LM here).
# The decoder of each pair is trained with its encoder's optimizer, schedule and QK-norm setting (read from the encoder
# recipe by `encoder_training`), so the pair differs only in objective and architecture.
# Fine-tuning pairs: (name, task, metrics, domain, encoder recipe, decoder recipe); same task, steps, batch, optimizer.
FINETUNES = [("NCBI disease NER", "ncbi_disease", ("entity_f1",), "biomedical", "ncbi-disease-ner-encoder", "ncbi-disease-ner"),
             ("financial sentiment", "fin_sentiment", ("acc", "macro_f1"), "finance", "finance-sentiment-encoder", "finance-sentiment")]
# Retrieval: (name, task, domain, contrastive recipe).
RETRIEVAL = [("PubMedQA questions vs all 1,000 abstracts", "pubmedqa_retrieval", "biomedical", "pubmedqa-embedder"),
             ("TAT-QA questions vs the reports' paragraphs", "tatqa_retrieval", "finance", "tatqa-embedder")]

# --quick: every pretraining run on a slice of its domain, a small vocabulary and a few steps; short fine-tunes.
QUICK_SOURCES = {"biomedical": "biomedical/medquad_documents.jsonl.gz", "finance": "finance/fomc_minutes.jsonl.gz",
                 "legal": "legal/dc_code_sections.jsonl.gz"}
QUICK_PRETRAIN = ["trainer.max_steps=20", "trainer.val_every=10", "trainer.checkpoint_every=0", "trainer.log_every=5",
                  "tokenizer.vocab_size=1024", "model.vocab_size=1024", "tokenizer.train_chars=2000000", "eval.tasks=[]"]
QUICK_FINETUNE = ["trainer.max_steps=10", "trainer.val_every=10", "trainer.checkpoint_every=0", "trainer.log_every=5", "eval.limit=100"]


def encoder_training(domain: str) -> list[str]:
    """Overrides that give a decoder recipe the optimizer section and QK-norm setting of its domain's encoder recipe."""
    from dataclasses import asdict

    from slmkit.recipe import resolve_recipe

    encoder = resolve_recipe(ENCODER_OF[domain], follow_init_from=False)
    return [*section_overrides("optim", asdict(encoder.optim)), *section_overrides("model", {"qk_norm": encoder.model.qk_norm})]


def pretrained(recipe: str, domain: str, work: Path, quick: bool) -> Path:
    """The pretraining run: an encoder's is runs/<recipe>/latest when finished; a decoder's is trained with the encoder's
    optimizer into runs/bench-encoders/decoders/<recipe>; either is trained now when missing (into the work folder with
    --quick)."""
    matched = [] if recipe in ENCODER_OF.values() else encoder_training(domain)
    if quick:
        run = work / recipe
        if not (run / "model.safetensors").is_file():
            slmkit("train", f"recipe={recipe}", f"out_dir={run}", "trainer.progress_bar=false", *matched, *QUICK_PRETRAIN,
                   f"data.sources=[{{name: {domain}, path: {QUICK_SOURCES[domain]}, max_documents: 400}}]")
        return run
    run = REPO / "runs" / recipe / "latest" if not matched else REPO / "runs" / "bench-encoders" / "decoders" / recipe
    if not (run / "model.safetensors").is_file():
        print(f"# pretraining {recipe} (no finished run at {run})", flush=True)
        slmkit("train", f"recipe={recipe}", "trainer.progress_bar=false", *matched, *([f"out_dir={run}"] if matched else []))
    return run.resolve()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def parameters(run: Path) -> int:
    out = subprocess.run([sys.executable, "-c", (
        "from slmkit.checkpoint import load_checkpoint; "
        f"print(load_checkpoint({str(run)!r}).model.num_parameters())")], capture_output=True, text=True, check=True, cwd=REPO)
    return int(out.stdout.strip())


def scores(report_dir: Path, task: str) -> dict[str, float]:
    report = json.loads((report_dir / "results.json").read_text())["results"][task]
    return {k: v["value"] for k, v in {**report["metrics"], **report["baselines"]}.items()}


def finetune(recipe: str, source: Path, out: Path, quick: bool) -> Path:
    if not (out / "eval" / "results.json").is_file():
        slmkit("train", f"recipe={recipe}", f"init_from={source}", f"out_dir={out}", "trainer.progress_bar=false",
               *(QUICK_FINETUNE if quick else []))
    return out


def retrieval_scores(run: Path, task: str, out: Path, quick: bool) -> dict[str, float]:
    if not (out / "results.json").is_file():
        slmkit("eval", f"checkpoint={run}", f"tasks=[{task}]", f"out={out}", "batch_size=32", *(["limit=100"] if quick else []))
    return scores(out, task)


def provenance() -> dict[str, str]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {"date": dt.date.today().isoformat(), "commit": commit + (" (uncommitted changes)" if dirty else ""),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
            "threads": str(torch.get_num_threads())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps on a slice of each corpus: checks the pipeline, not the models")
    parser.add_argument("--work", default=None, help="folder for fine-tuned runs and eval reports (default runs/bench-encoders[-quick]/<time>)")
    parser.add_argument("--out", default=None, help="JSON results (default <work>/results.json)")
    args = parser.parse_args()
    work = Path(args.work or REPO / "runs" / f"bench-encoders{'-quick' if args.quick else ''}" / time.strftime("%Y%m%d-%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"provenance": provenance(), "quick": args.quick, "pretrained": {}}
    runs: dict[str, Path] = {}
    rows = ["| domain | model | parameters | steps x batch x block | final val loss | masked-token accuracy |", "|---|---|---:|---|---:|---:|"]
    for domain, encoder, decoder in DOMAINS:
        for recipe in (encoder, decoder):
            run = runs[recipe] = pretrained(recipe, domain, work, args.quick)
            last = [r for r in metrics(run) if "val_loss" in r][-1]
            config = subprocess.run([sys.executable, "-c", (
                "from slmkit.config import load_run_config; "
                f"c = load_run_config({str(run / 'config.yaml')!r}); print(c.trainer.max_steps, c.trainer.micro_batch_size, c.model.block_size)")],
                capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
            entry = {"run": str(run), "parameters": parameters(run), "val_loss": last["val_loss"],
                     "val_masked_accuracy": last.get("val_masked_accuracy"), "budget": "x".join(config)}
            report["pretrained"][recipe] = entry
            accuracy = f"{entry['val_masked_accuracy']:.4f}" if entry["val_masked_accuracy"] is not None else "—"
            rows.append(f"| {domain} | {recipe} | {entry['parameters']:,} | {' x '.join(config)} | {last['val_loss']:.4f} | {accuracy} |")
    print("\n".join(rows), flush=True)

    tables = ["", "| task | metric | decoder (causal LM, last-token / per-token head) | encoder (masked LM, ModernBERT-style) |", "|---|---|---:|---:|"]
    for name, task, metric_names, domain, encoder_recipe, decoder_recipe in FINETUNES:
        encoder_run = finetune(encoder_recipe, runs[ENCODER_OF[domain]], work / encoder_recipe, args.quick)
        decoder_run = finetune(decoder_recipe, runs[DECODER_OF[domain]], work / decoder_recipe, args.quick)
        a, b = scores(decoder_run / "eval", task), scores(encoder_run / "eval", task)
        report.setdefault("finetune", {})[task] = {"decoder": a, "encoder": b}
        for metric in metric_names:
            tables.append(f"| {name} | {metric} | {a[metric]:.4f} | {b[metric]:.4f} |")
    print("\n".join(tables), flush=True)

    retrieval = ["", "| retrieval | queries x pool | BM25 recall@10 / MRR | encoder, pretrained only | encoder, contrastive |", "|---|---|---|---|---|"]
    for name, task, domain, contrastive in RETRIEVAL:
        encoder = runs[ENCODER_OF[domain]]
        plain = retrieval_scores(encoder, task, work / f"eval-{task}-pretrained", args.quick)
        tuned = scores(finetune(contrastive, encoder, work / contrastive, args.quick) / "eval", task)  # its own final evaluation
        size = json.loads((work / f"eval-{task}-pretrained" / "results.json").read_text())["results"][task]
        report.setdefault("retrieval", {})[task] = {"pretrained": plain, "contrastive": tuned, "n": size["n"],
                                                    "pool": size["details"]["pool documents"]}
        fmt = lambda s, prefix="": f"{s[prefix + 'recall@10']:.4f} / {s[prefix + 'mrr']:.4f}"
        retrieval.append(f"| {name} | {size['n']} x {size['details']['pool documents']} | {fmt(plain, 'bm25 ')} | {fmt(plain)} | {fmt(tuned)} |")
    print("\n".join(retrieval), flush=True)

    legal = runs["legal-encoder-tiny"]
    curve = [r for r in metrics(legal) if "val_masked_accuracy" in r]
    report["legal_masked_curve"] = [{k: r[k] for k in ("step", "val_loss", "val_masked_accuracy")} for r in curve]
    history = ["", "| step | " + " | ".join(str(r["step"]) for r in curve) + " |", "|---|" + "---|" * len(curve),
               "| masked-token loss | " + " | ".join(f"{r['val_loss']:.3f}" for r in curve) + " |",
               "| masked-token accuracy | " + " | ".join(f"{r['val_masked_accuracy']:.3f}" for r in curve) + " |"]
    print("\n".join(history))

    markdown = "\n".join(rows + tables + retrieval + history)
    out = Path(args.out) if args.out else work / "results.json"
    out.write_text(json.dumps({**report, "markdown": markdown}, indent=2) + "\n")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
