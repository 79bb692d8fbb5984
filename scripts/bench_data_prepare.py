"""Benchmarks `prepare` on the shared legal corpus: end-to-end MB/s with dedup off against raw `encode_batch`
throughput of the same tokenizer on the same text (goal: ratio >= 0.9), then each stage's cost with dedup on.

The machine is shared and its speed drifts by tens of percent from minute to minute, so the raw tokenizer and
`prepare` run alternately for several rounds; the median of the rounds' ratios (each from two neighbouring runs)
and the ratio of the medians are the figures to read. Each round also runs `prepare` with cleaning and filtering
switched off ("bare": read, split, write the curated corpus, tokenize, pack): the most any speed-up of curation
could reach on this machine.

With --engine-rounds N, the pool and datatrove's local executor (data.engine=datatrove, --tasks tasks, 2 workers)
then prepare the corpus with dedup on, alternately for N rounds, and the shards are checked to be identical; the
estimate of machine-hours for 100 GB comes from the pool's measured per-core throughput.

Usage: python scripts/bench_data_prepare.py [--max-documents N] [--vocab-size 8192] [--workers 0] [--rounds 3]
       [--engine-rounds 0] [--tasks 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from data_prep.pipeline import prepare
from data_prep.sources import SourceStats, iter_documents
from data_prep.tokenizer import train_tokenizer
from slmkit.data_config import CleanConfig, DataConfig, DedupConfig, FilterConfig, SourceConfig, TokenizerConfig
from slmkit.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
LEGAL = ["dc_code_sections", "dc_session_laws", "scotus_opinions", "appellate_opinions", "federal_rules"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()} · {cpu} · {os.cpu_count()} cores · Python {platform.python_version()}"


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "no commit yet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-documents", type=int, default=None, help="per source (default: all)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (0 = all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw / prepare rounds (dedup off)")
    parser.add_argument("--engine-rounds", type=int, default=0, help="alternating pool / datatrove rounds (dedup on)")
    parser.add_argument("--tasks", type=int, default=4, help="data.tasks of the datatrove runs")
    args = parser.parse_args()
    shared = Path(os.environ.get("SLMKIT_SHARED", REPO.parent / "shared")).resolve()
    root = shared / "corpora" / "legal"
    sources = [SourceConfig(name=name, path=f"{name}.jsonl.gz", max_documents=args.max_documents) for name in LEGAL]
    print(f"machine: {machine()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"commit: {commit()}")

    with tempfile.TemporaryDirectory(prefix="slmkit-bench-") as tmp:
        work = Path(tmp)
        os.environ["SLMKIT_CACHE"] = str(work / "cache")
        texts = [d.text for s in sources for d in iter_documents(s, root, "stop", SourceStats(s.name))]
        megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        print(f"corpus: {len(texts):,} documents, {megabytes:.1f} MB of UTF-8 text")

        tokenizer_config = TokenizerConfig(kind="bpe", vocab_size=args.vocab_size, train_chars=30_000_000)
        start = time.perf_counter()
        train_tokenizer(tokenizer_config, texts, work / "tokenizer.json", texts[:200])
        print(f"tokenizer: bpe {args.vocab_size} trained on 30M characters in {time.perf_counter() - start:.1f} s")
        tokenizer = load_tokenizer(work / "tokenizer.json")
        given = dataclasses.replace(tokenizer_config, path=str(work / "tokenizer.json"))
        data = DataConfig(sources=sources, root=str(root), num_workers=args.workers, val_fraction=0.02,
                          dedup=DedupConfig(exact=False, near=False))
        bare = dataclasses.replace(data, clean=CleanConfig(enabled=False), filter=FilterConfig(enabled=False))
        raw_rates, prepare_rates, bare_rates = [], [], []
        for round_ in range(1, args.rounds + 1):
            # the baseline: the same tokenizer on the same text, all cores (tokenizers' own thread pool)
            start = time.perf_counter()
            for first in range(0, len(texts), 2000):
                tokenizer.encode_batch_fast(texts[first : first + 2000], add_special_tokens=False)
            raw_rates.append(megabytes / (time.perf_counter() - start))
            # the product: read, clean, filter, split, write the curated corpus, tokenize, pack shards
            shutil.rmtree(work / "no-dedup", ignore_errors=True)
            start = time.perf_counter()
            prepare(data, given, work / "no-dedup", progress=False)
            prepare_rates.append(megabytes / (time.perf_counter() - start))
            shutil.rmtree(work / "bare", ignore_errors=True)
            start = time.perf_counter()
            prepare(bare, given, work / "bare", progress=False)
            bare_rates.append(megabytes / (time.perf_counter() - start))
            print(f"round {round_}: raw encode_batch_fast {raw_rates[-1]:.2f} MB/s, prepare (dedup off) "
                  f"{prepare_rates[-1]:.2f} MB/s, ratio {prepare_rates[-1] / raw_rates[-1]:.2f}; bare "
                  f"{bare_rates[-1]:.2f} MB/s, ratio {bare_rates[-1] / raw_rates[-1]:.2f}")
        del texts
        raw, end_to_end = statistics.median(raw_rates), statistics.median(prepare_rates)
        paired = statistics.median(p / r for p, r in zip(prepare_rates, raw_rates))
        print(f"median: raw {raw:.2f} MB/s, prepare {end_to_end:.2f} MB/s, ratio of the medians {end_to_end / raw:.2f}, "
              f"median of the rounds' ratios {paired:.2f} (goal >= 0.9)")
        ceiling = statistics.median(b / r for b, r in zip(bare_rates, raw_rates))
        print(f"bare (cleaning and filters off): median {statistics.median(bare_rates):.2f} MB/s, median of the rounds' "
              f"ratios {ceiling:.2f}: the ceiling for any speed-up of curation on this machine")

        start = time.perf_counter()
        prepare(dataclasses.replace(data, dedup=DedupConfig()), given, work / "dedup", progress=False)
        total = time.perf_counter() - start
        report = json.loads((work / "dedup" / "report" / "report.json").read_text())
        print(f"prepare, dedup on (exact + MinHash near): {megabytes / total:.2f} MB/s, {total:.1f} s")
        for phase, seconds in report["timings"].items():
            print(f"  wall  {phase:32s} {seconds:8.1f} s")
        for stage, seconds in report["corpus"]["stage_cpu_seconds"].items():
            print(f"  cpu   {stage:32s} {seconds:8.1f} s")
        dedup = report["corpus"]["dedup"]["dropped_documents"]
        print(f"  duplicates dropped: {dedup['exact']} exact, {dedup['near']} near")
        if args.engine_rounds:
            compare_engines(dataclasses.replace(data, dedup=DedupConfig()), given, work, megabytes, args)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [*sorted(folder.glob("*.bin")), folder / "manifest.json", folder / "tokenizer.json"]}


def compare_engines(data: DataConfig, given: TokenizerConfig, work: Path, megabytes: float, args: argparse.Namespace) -> None:
    """The pool and datatrove's local executor (2 workers), dedup on, alternately; same shards checked."""
    workers = args.workers or os.cpu_count() or 1
    engines = {"pool": data, "datatrove": dataclasses.replace(data, engine="datatrove", tasks=args.tasks, workers=2)}
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(1, args.engine_rounds + 1):
        for name, config in engines.items():
            shutil.rmtree(work / name, ignore_errors=True)
            start = time.perf_counter()
            prepare(config, given, work / name, progress=False)
            seconds[name].append(time.perf_counter() - start)
        print(f"engines round {round_}: pool {seconds['pool'][-1]:.1f} s, datatrove ({args.tasks} tasks, 2 workers) "
              f"{seconds['datatrove'][-1]:.1f} s, ratio {seconds['datatrove'][-1] / seconds['pool'][-1]:.2f}")
    same = shard_bytes(work / "pool") == shard_bytes(work / "datatrove")
    pool, trove = statistics.median(seconds["pool"]), statistics.median(seconds["datatrove"])
    ratios = [t / p for p, t in zip(seconds["pool"], seconds["datatrove"])]
    print(f"engines median: pool {pool:.1f} s, datatrove {trove:.1f} s, ratio of the medians {trove / pool:.2f}, "
          f"median of the rounds' ratios {statistics.median(ratios):.2f} (goal <= 1.2); identical shards: {same}")
    per_core = megabytes / pool / workers  # MB/s per core, all stages with dedup on
    core_hours = 100_000 / per_core / 3600
    print(f"pool with dedup on: {per_core:.2f} MB/s per core -> 100 GB takes {core_hours:.0f} core-hours, "
          f"{core_hours / workers:.0f} hours on this {workers}-core machine")


if __name__ == "__main__":
    main()
