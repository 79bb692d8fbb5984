"""The curation report a person reads before training: what each stage kept and dropped, per source, and why.

Written as report.json (every figure), report.md (tables and examples) and lengths.png (document length histograms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from data_prep.curate import LENGTH_BINS, STAGES
from slmkit.atomic import atomic_path, atomic_write_text

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"


def plot_lengths(histograms: dict[str, list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    centers = np.sqrt(LENGTH_BINS[:-1] * LENGTH_BINS[1:])
    for name, counts in histograms.items():
        if counts and sum(counts):
            axis.step(centers, counts, where="mid", label=f"{name} ({sum(counts):,} documents)")
    axis.set_xscale("log")
    axis.set_xlabel("document length (characters)")
    axis.set_ylabel("documents")
    axis.set_title("Document lengths before and after curation")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:  # the suffix tells matplotlib the format
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: dict[str, Any], examples: bool = True) -> str:
    """The report as markdown; examples=False leaves out every quote of corpus text (figures only, for publishing)."""
    # Long on purpose: the page top to bottom, one section after another, reads as the report it writes.

    def quoted(texts: Iterable[str], limit: int = 3) -> list[str]:
        return [f"  - `{text[:200].replace('`', chr(39))}`" for text in list(texts)[:limit]] if examples else []

    corpus, manifest, tokenizer = report["corpus"], report["manifest"], report["tokenizer"]
    splits = manifest["splits"]
    lines = [
        "# Curation report",
        "",
        f"{sum(s['documents'] for s in corpus['sources']):,} documents read from {len(corpus['sources'])} sources; "
        f"{sum(corpus['documents'].values()):,} documents and {corpus['characters']:,} characters in the curated corpus; "
        f"{splits['train']['tokens']:,} train and {splits['val']['tokens']:,} val tokens "
        f"({manifest['dtype']}, vocabulary {manifest['vocab_size']:,}"
        + (f", {tokenizer['bytes_per_token']:.2f} bytes per token on held-out text" if tokenizer.get("bytes_per_token") else "")
        + (f" ({tokenizer['bytes_per_token_before']:.2f} before {tokenizer['added_tokens']:,} domain tokens were added "
           f"to {tokenizer['base']})" if tokenizer.get("bytes_per_token_before") else "")
        + ").",
        "",
        "## Documents and characters per source after each stage",
        "",
    ]
    rows = []
    for source in corpus["sources"]:
        for stage in STAGES:
            documents, characters = source["stages"][stage]
            rows.append([source["name"], stage, f"{documents:,}", f"{characters:,}"])
    lines += table(["source", "stage", "documents", "characters"], rows)
    lines += ["## Mixture (realized in tokens)", ""]
    lines += table(
        ["source", "weight", "documents used", "tokens", "share"],
        [[s["name"], s["weight"], f"{s['documents_used']:,}", f"{s['tokens']:,}", f"{100 * s['share']:.1f}%"]
         for s in manifest["sources"]],
    )
    problems = [s for s in corpus["sources"] if s["skipped"] or s["replaced_chars"]]
    if problems:
        lines += ["## Reading problems", ""]
        for source in problems:
            lines.append(f"- {source['name']}: skipped {source['skipped'] or 'nothing'}, "
                         f"{source['replaced_chars']:,} undecodable bytes replaced by U+FFFD")
            lines += quoted(source["errors"])
        lines.append("")
    clean = corpus["clean"]
    lines += ["## Cleaning", "", f"{clean['documents_changed']:,} of {clean['documents']:,} documents changed; "
              f"{clean['characters_in'] - clean['characters_out']:,} characters removed; "
              f"{clean['replacement_characters']:,} U+FFFD characters remain (the originals are lost).", ""]
    lines += table(["fix", "occurrences", "documents"],
                   [[kind, f"{count:,}", f"{clean['fix_documents'].get(kind, 0):,}"] for kind, count in sorted(clean["fixes"].items())])
    for kind, texts in sorted(clean["examples"].items()) if examples else ():
        lines.append(f"- {kind}")
        lines += quoted(texts, 2)
    if corpus.get("boilerplate") and examples:
        lines += ["", "Boilerplate lines removed (documents containing them):"]
        lines += [f"- `{line}` ({count:,})" for line, count in corpus["boilerplate"][:10]]
    filters = corpus["filter"]
    lines += ["", "## Quality filters", "", f"{sum(filters['dropped_documents'].values()):,} of {filters['documents']:,} documents dropped.", ""]
    lines += table(["reason", "documents", "characters"],
                   [[reason, f"{count:,}", f"{filters['dropped_characters'].get(reason, 0):,}"]
                    for reason, count in sorted(filters["dropped_documents"].items(), key=lambda item: -item[1])])
    for reason, texts in sorted(filters["examples"].items()) if examples else ():
        lines.append(f"- {reason}")
        lines += quoted(texts, 2)
    dedup = corpus["dedup"]
    lines += ["", "## Deduplication", "",
              f"{dedup['dropped_documents'].get('exact', 0):,} exact and {dedup['dropped_documents'].get('near', 0):,} near "
              f"duplicates dropped in {dedup['clusters']:,} clusters.", ""]
    if dedup["largest_clusters"]:
        lines += table(["kept document", "cluster size", "some dropped"],
                       [[c["kept"], c["size"], ", ".join(c["dropped"][:3])] for c in dedup["largest_clusters"]])
    lines += quoted(dedup["examples"])
    pii, decon = corpus["pii"], corpus["decontaminate"]
    lines += ["", "## Personal data and decontamination", "",
              f"- PII: {pii['documents_changed']:,} documents changed, replaced {pii['replaced'] or 'nothing'}",
              f"- decontamination: {decon['contaminated_documents']:,} documents share n-grams with the evaluation sets, "
              f"{decon['dropped_documents']:,} dropped"]
    lines += quoted(decon["examples"])
    lines += ["", "## Document lengths", "", "![document lengths](lengths.png)", "",
              "## Time", ""]
    lines += table(["phase", "seconds (wall)"], [[name, f"{value:.2f}"] for name, value in report["timings"].items()])
    lines += table(["stage", "seconds (CPU, all workers)"],
                   [[name, f"{value:.2f}"] for name, value in corpus["stage_cpu_seconds"].items()])
    lines.append(f"{corpus['chunks']} chunks on {corpus['workers']} workers; at most {corpus['peak_buffered_chars']:,} "
                 f"characters of text buffered (data.memory_limit_mb allows {corpus['memory_limit_chars']:,} bytes).")
    return "\n".join(lines) + "\n"


def write_report(
    folder: Path, corpus: dict[str, Any], manifest: dict[str, Any], tokenizer: dict[str, Any], timings: dict[str, float]
) -> Path:
    """Writes report.json, report.md and lengths.png into folder; returns the path of report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {"corpus": corpus, "manifest": manifest, "tokenizer": tokenizer, "timings": timings}
    atomic_write_text(folder / REPORT_JSON, json.dumps(report, indent=1, sort_keys=True))
    plot_lengths({"read": corpus["histograms"]["ingest"], "curated": corpus["histograms"]["final"]}, folder / "lengths.png")
    atomic_write_text(folder / REPORT_MARKDOWN, render_markdown(report))
    return folder / REPORT_MARKDOWN
