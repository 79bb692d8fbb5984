"""Reading back what data preparation wrote, for the data tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.chunks import read_json
from data_prep.curate import CORPUS_DIR, CORPUS_DONE, corpus_records
from slmkit.data_config import DecontaminateConfig, PiiConfig, SourceConfig


def curated_documents(prepared_dir: Path, split: str) -> list[dict[str, Any]]:
    """The curated documents of one split of a prepared folder ({"id", "source", "text"} each), in corpus order."""
    return list(corpus_records(prepared_dir, read_json(prepared_dir / CORPUS_DIR / CORPUS_DONE), split))


def write_mixed_corpus(root: Path, texts: list[str]) -> dict[str, Any]:
    """A small corpus of several files in mixed formats with planted exact and near duplicates, personal data and a
    passage copied from an evaluation set; `texts` are distinct documents (60+ words each, 40 at least).

    Returns the DataConfig fields (root, sources, decontamination, PII) that prepare it."""
    import csv
    import gzip
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "notes").mkdir(exist_ok=True)
    near = texts[1].replace("the", "a", 1)
    email = texts[13] + " Write to clerk.office@example.com for copies."
    (root / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:13] + [email]))
    with gzip.open(root / "b.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps({"body": t}) + "\n" for t in texts[14:24] + [texts[0], near]))
    for index, text in enumerate(texts[24:30]):
        (root / "notes" / f"note_{index}.txt").write_text(text)
    with open(root / "c.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([[t] for t in texts[30:40] + [texts[3]]])
    (root / "eval.jsonl").write_text(json.dumps({"text": " ".join(texts[35].split()[5:40])}) + "\n")
    return {
        "root": str(root),
        "sources": [SourceConfig(name="a", path="a.jsonl"), SourceConfig(name="b", path="b.jsonl.gz", text_field="body"),
                    SourceConfig(name="notes", path="notes", weight=1.5), SourceConfig(name="c", path="c.csv")],
        "decontaminate": DecontaminateConfig(eval_files=[str(root / "eval.jsonl")]),
        "pii": PiiConfig(enabled=True),
    }
